"""Evaluate trained checkpoints: the run's own config, the run's (or another) dataset.

``attnexp-eval`` (:mod:`attnexp.cli.eval`) is a thin shell around :func:`evaluate`. The
model is rebuilt from the run's recorded config (``.hydra/config.yaml``), never from the
current defaults, so nothing has to be retyped and a changed default cannot change the
model. The evaluation repeats what the run's own final test did: the same
:class:`~attnexp.training.module.ClassificationModule` (channels_last, compile, precision
as configured), the same datamodule, one device, ``trainer.test``. On the same kind of
device this reproduces the recorded test error exactly; the EMA weights are used when the
run averaged them (its test used them too).

Each evaluation is written to a new ``eval-<time>.json`` in the run directory (never
replacing an earlier one).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.errors import ConfigError
from attnexp.results import RunDir, atomic_write_text

WHICH = ("best", "last")
_ABSENT = object()
SPLITS = ("test", "val")


@dataclass
class EvalResult:
    """One checkpoint evaluated."""

    checkpoint: Path
    run_dir: Path
    split: str
    dataset: str
    top1_err: float
    top5_err: float
    loss: float
    images: int
    recorded: dict[str, Any] = field(default_factory=dict)  # the run's own test entry
    overrides: list[str] = field(default_factory=list)
    path: Path | None = None  # the eval-<time>.json written

    def as_dict(self) -> dict[str, Any]:
        from attnexp.runtime import git_commit, package_version

        return {
            "checkpoint": str(self.checkpoint),
            "run_dir": str(self.run_dir),
            "split": self.split,
            "dataset": self.dataset,
            "images": self.images,
            "top1_err": self.top1_err,
            "top5_err": self.top5_err,
            "loss": self.loss,
            "recorded_test": self.recorded,
            "overrides": self.overrides,
            "time": _dt.datetime.now().isoformat(timespec="microseconds"),
            "version": package_version(),
            "git_commit": git_commit(),
            "torch": torch.__version__,
        }


# -- which checkpoints ---------------------------------------------------------------------
def expand_targets(targets: Sequence[str | Path], which: str = "best") -> list[Path]:
    """Checkpoint files of ``targets``: ``.ckpt`` files, run dirs (their ``which``
    checkpoint) and sweep dirs (every run below them)."""
    if which not in WHICH:
        raise ConfigError(f"which={which!r}: valid choices: {', '.join(WHICH)}")
    found: list[Path] = []
    for target in targets:
        p = Path(os.path.expandvars(str(target))).expanduser()
        if p.is_file():
            if p.suffix != ".ckpt":
                raise ConfigError(f"checkpoint={p}: not a Lightning checkpoint (.ckpt)")
            found.append(p)
            continue
        if not p.is_dir():
            raise ConfigError(f"checkpoint={p}: no such file or directory")
        runs = [RunDir(p)] if RunDir(p).is_run() else list(RunDir.find(p))
        if not runs:
            raise ConfigError(
                f"checkpoint={p}: neither a run dir nor a sweep dir (no metrics.json or "
                f".hydra/config.yaml at or below it)"
            )
        for run in runs:
            ckpt = run.checkpoint(which)
            if ckpt is None:
                raise ConfigError(
                    f"no checkpoint in {run.checkpoint_dir} (looked for best*.ckpt and last.ckpt); "
                    f"was the run trained with callbacks=none?"
                )
            found.append(ckpt)
    if not found:
        raise ConfigError("no checkpoint given: checkpoint=<run dir | .ckpt | sweep dir | [a,b]>")
    return list(dict.fromkeys(found))


# -- the config: the run's own, plus the command line -------------------------------------
def _is_group(key: str) -> bool:
    """Whether ``key`` is a config group (files in conf/ or nodes of the zoo's ConfigStore)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if "." in key or "/" in key:
        return False
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        return bool(GlobalHydra.instance().config_loader().get_group_options(key))


#: Groups whose options are `_global_` presets: they change how a run trains, not what to
#: evaluate on.
_GLOBAL_GROUPS = ("experiment", "recipe", "debug", "variant", "launcher", "hydra", "local")


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The recorded config with command-line overrides: ``group=option`` replaces that node
    by the option's file (e.g. ``data=cifar10``), ``a.b=v`` sets a value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not overrides:
        return cfg
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    cfg = cfg.copy()
    for item, override in zip(overrides, parsed, strict=True):
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(f"{item}: attnexp-eval evaluates one setting (no sweeps)")
        if key in _GLOBAL_GROUPS:
            raise ConfigError(
                f"{item}: {key}= changes how a run is trained; attnexp-eval uses the run's "
                f"recorded config. Override what to evaluate on: data=<dataset>, data.<key>=..., "
                f"trainer.accelerator=..."
            )
        if _is_group(key):
            from attnexp.compose import compose_config

            node = compose_config([item]).get(key)
            with open_dict(cfg):
                cfg[key] = OmegaConf.to_container(node, resolve=False) if node else node
            continue
        with open_dict(cfg):
            if override.is_delete():
                parent, _, leaf = key.rpartition(".")
                container = OmegaConf.select(cfg, parent) if parent else cfg
                if container is not None and leaf in container:
                    del container[leaf]
            else:
                if not override.is_add() and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                    raise ConfigError(
                        f"{item}: the run's config has no key {key!r} (add it with +{item})"
                    )
                OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
    return cfg


def checkpoint_config(checkpoint: Path, overrides: Sequence[str] = ()) -> tuple[RunDir, DictConfig]:
    """The run a checkpoint belongs to and its recorded config (+ ``overrides``)."""
    from attnexp.runtime import register_resolvers

    register_resolvers()
    run = RunDir.of(checkpoint)
    if run is None:
        raise ConfigError(
            f"cannot rebuild the model of {checkpoint}: no directory above it is a run dir "
            f"(with .hydra/config.yaml or metrics.json)"
        )
    cfg = run.load_config()
    if cfg is None:
        raise ConfigError(f"{run.path}: no recorded config (.hydra/config.yaml or metrics.json)")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run.path)
    return run, apply_overrides(cfg, overrides)


# -- the weights ---------------------------------------------------------------------------
def checkpoint_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The backbone weights the run's test used: the EMA average when the run kept one."""
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, not a torch file, written by a newer torch
        raise ConfigError(
            f"{checkpoint}: cannot read the checkpoint ({type(err).__name__}: {err}); the file "
            f"is corrupt or incomplete (evaluate another one: which=best|last, or a .ckpt path)"
        ) from None
    state = blob.get("state_dict") if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping):
        raise ConfigError(f"{checkpoint}: no 'state_dict' in it (not a Lightning checkpoint)")
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ConfigError(
            f"{checkpoint}: no 'model.*' weights (not an attnexp ClassificationModule checkpoint)"
        )
    ema = ((blob.get("callbacks") or {}).get("EMA") or {}).get("weights")
    if ema:
        weights = {k: ema.get(k, v) for k, v in weights.items()}
    return weights


def check_fit(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], checkpoint: Path
) -> None:
    """Every key and shape must match the rebuilt model; the message says what does not."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(weights[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    problems = []
    if (
        "fc.weight" in weights
        and "fc.weight" in own
        and weights["fc.weight"].shape != own["fc.weight"].shape
    ):
        problems.append(
            f"class count: the checkpoint's classifier has {weights['fc.weight'].shape[0]} "
            f"classes, the model/data config {own['fc.weight'].shape[0]}"
        )
    for what, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape", shapes),
    ):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > 6 else ""
            problems.append(f"{what}: {', '.join(items[:6])}{more}")
    if problems:
        raise ConfigError(
            f"{checkpoint} does not match the model rebuilt from its run's config: "
            + "; ".join(problems)
        )


# -- evaluation ----------------------------------------------------------------------------
def _trainer(cfg: DictConfig) -> Any:
    import lightning as L

    from attnexp.training import fast_defaults

    trainer_cfg = cfg.get("trainer") or {}
    accelerator = trainer_cfg.get("accelerator", "auto")
    precision = fast_defaults.resolve_precision(trainer_cfg.get("precision", "auto"), accelerator)
    return L.Trainer(
        accelerator=accelerator,
        devices=1,  # a distributed sampler would pad the split: not the recorded number
        num_nodes=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=trainer_cfg.get("deterministic", False),
        # the run's own test honoured these limits; the same limits give the same number
        limit_test_batches=trainer_cfg.get("limit_test_batches", 1.0),
        limit_val_batches=trainer_cfg.get("limit_val_batches", 1.0),
        default_root_dir=str(cfg.paths.output_dir),
    )


def evaluate_checkpoint(
    checkpoint: Path, overrides: Sequence[str] = (), split: str = "test", write: bool = True
) -> EvalResult:
    """Evaluate one checkpoint; writes ``eval-<time>.json`` in its run dir with ``write``."""
    from attnexp import builders
    from attnexp.data import build_datamodule

    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: valid choices: {', '.join(SPLITS)}")
    run, cfg = checkpoint_config(checkpoint, overrides)
    weights = checkpoint_weights(checkpoint)
    backbone = builders.build_backbone(cfg, pretrained=False)  # the checkpoint has them all
    check_fit(backbone, weights, checkpoint)
    datamodule = build_datamodule(builders.to_dict(cfg.data))
    classes = int(backbone.state_dict()["fc.weight"].shape[0]) if "fc.weight" in weights else None
    if classes is not None and classes != int(datamodule.num_classes):
        raise ConfigError(
            f"{checkpoint}: class count does not match: the model has {classes} classes, "
            f"data={cfg.data.get('name')} has {datamodule.num_classes}"
        )
    backbone.load_state_dict(weights)
    module = builders.build_module(cfg, backbone, datamodule.num_classes)
    trainer = _trainer(cfg)
    run_test = trainer.test if split == "test" else trainer.validate
    results = run_test(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    recorded: dict[str, Any] = {}
    if run.has_record():
        try:
            recorded = dict(run.read_record_dict().get("test") or {})
        except (OSError, ValueError):
            recorded = {}
    sizes = getattr(datamodule, "split_sizes", {}) or {}
    result = EvalResult(
        checkpoint=checkpoint,
        run_dir=run.path,
        split=split,
        dataset=str(cfg.data.get("name")),
        top1_err=metrics[f"{split}/top1_err"],
        top5_err=metrics[f"{split}/top5_err"],
        loss=metrics[f"{split}/loss"],
        images=int(sizes.get(split, 0)),
        recorded=recorded,
        overrides=list(overrides),
    )
    if write:
        result.path = write_eval(run, result)
    return result


def write_eval(run: RunDir, result: EvalResult) -> Path:
    """A new ``eval-<time>.json`` (microseconds; a counter if two land in the same one)."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    text = json.dumps(result.as_dict(), indent=2)
    for i in range(1000):
        path = run.eval_file(stamp if i == 0 else f"{stamp}-{i}")
        try:
            with open(path, "x"):  # claim the name: never replace an earlier evaluation
                pass
        except FileExistsError:
            continue
        atomic_write_text(path, text)
        return path
    raise FileExistsError(f"cannot find a free eval-*.json name in {run.path}")


def evaluate(
    targets: Sequence[str | Path],
    overrides: Sequence[str] = (),
    which: str = "best",
    split: str = "test",
) -> list[EvalResult]:
    """Every checkpoint of ``targets`` (see :func:`expand_targets`)."""
    return [evaluate_checkpoint(c, overrides, split) for c in expand_targets(targets, which)]


def results_table(results: Sequence[EvalResult]) -> Any:
    """The evaluations as an attnexp-table :class:`PaperTable` (same grouping and columns as
    ``attnexp-table``; the test columns hold the new evaluation)."""
    import dataclasses

    from attnexp.analysis.table import build_table, collect
    from attnexp.results import RunRecord

    runs = []
    for result in results:
        found = collect([result.run_dir])
        if not found:
            continue
        run = found[0]
        record = run.record if run.record is not None else RunRecord()
        record.test = dataclasses.replace(
            record.test,
            top1_err=result.top1_err,
            top5_err=result.top5_err,
            loss=result.loss,
            checkpoint_file=result.checkpoint.name,
        )
        record.status = "completed"
        run.record, run.status = record, "completed"
        runs.append(run)
    return build_table(runs, metric="test")
