"""Load a trained backbone from a run directory or a Lightning checkpoint.

A run directory (``attnexp-train``) holds ``.hydra/config.yaml`` (written by Hydra),
``checkpoints/{best-*,last}.ckpt`` and ``metrics.json`` (whose ``config`` entry is the
resolved config; runs started with :func:`attnexp.run.train` outside Hydra only have this one).
The backbone is rebuilt from the config with :func:`attnexp.builders.build_backbone` and the
``model.*`` weights of the :class:`~attnexp.training.module.ClassificationModule` checkpoint
are loaded into it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from attnexp.errors import ConfigError
from attnexp.results import RunDir
from attnexp.results.rundir import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE

HYDRA_CONFIG = CONFIG_FILE  # the run dir layout lives in attnexp.results.RunDir
#: Override keys that say where or how verbosely a run ran, not what it is.
_NOISE_PREFIXES = (
    "paths.",
    "hydra.",
    "+debug",
    "debug",
    "logger",
    "callbacks",
    "trainer.accelerator",
)


@dataclass
class LoadedModel:
    """A backbone in eval mode plus where it came from."""

    model: nn.Module
    cfg: DictConfig
    run_dir: Path | None
    checkpoint: Path
    label: str

    @property
    def image_size(self) -> int:
        return int(self.cfg.data.get("image_size", 32))


def _is_run_dir(path: Path) -> bool:
    return RunDir(path).is_run()


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint file for ``path``: a ``.ckpt`` file, a run dir or its ``checkpoints/``.

    ``which``: ``best`` (newest ``best-*.ckpt``, falling back to ``last.ckpt``) or ``last``.
    """
    if which not in ("best", "last"):
        raise ConfigError(f"which={which!r}: expected 'best' or 'last'")
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".ckpt":
            raise ConfigError(
                f"{p} is not a Lightning checkpoint (.ckpt); pass a run dir or a .ckpt file"
            )
        return p
    if not p.exists():
        raise ConfigError(
            f"checkpoint path {p} does not exist (expected a run dir or a .ckpt file)"
        )
    run = RunDir(p.parent if p.name == CHECKPOINT_DIR else p)
    folder, best, last = run.checkpoint_dir, run.best_checkpoints(), run.last_checkpoint
    order = [*reversed(best), last] if which == "best" else [last, *reversed(best)]
    for candidate in order:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no checkpoint in {p}: looked for {folder}/best*.ckpt and {last}. Pass a run directory "
        f"of attnexp-train (with callbacks=default, which saves checkpoints) or a .ckpt file"
    )


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (the nearest ancestor with a run record)."""
    run = RunDir.of(checkpoint.resolve().parent)
    return run.path if run is not None else None


def load_run_config(run_dir: Path) -> DictConfig:
    """The run's config: ``.hydra/config.yaml``, else the ``config`` of ``metrics.json``.

    ``paths.output_dir`` is set to ``run_dir`` (Hydra's resolver is not available here).
    """
    from attnexp.runtime import register_resolvers

    register_resolvers()
    run = RunDir(run_dir)
    cfg = run.load_config()
    if cfg is None:
        raise ConfigError(
            f"no config for run {run_dir}: looked for {run.config_file} and a 'config' entry "
            f"in {run.metrics_file}"
        )
    assert isinstance(cfg, DictConfig)
    with open_dict(cfg):
        cfg.setdefault("paths", {})
        cfg.paths.output_dir = str(run_dir)
    return cfg


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights (``model.*`` keys of the LightningModule) from a checkpoint."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{checkpoint} holds no state_dict")
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    if not weights:
        raise ConfigError(
            f"{checkpoint} has no 'model.*' weights (not a ClassificationModule checkpoint?)"
        )
    return weights


def load_model(
    path: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild the backbone of a run and load its trained weights (eval mode, on ``device``)."""
    from attnexp.builders import build_backbone

    checkpoint = find_checkpoint(path, which)
    run_dir = run_dir_of(checkpoint)
    if run_dir is None:
        raise ConfigError(
            f"cannot rebuild the model of {checkpoint}: no run directory above it holds "
            f"{HYDRA_CONFIG} or {METRICS_FILE}"
        )
    cfg = load_run_config(run_dir)
    model = build_backbone(cfg)
    missing, unexpected = model.load_state_dict(model_state(checkpoint), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"weights of {checkpoint} do not fit the model rebuilt from {run_dir}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.to(device).eval()
    return LoadedModel(model, cfg, run_dir, checkpoint, short_label(cfg))


def load_models(
    paths: Sequence[str | Path], which: str = "best", device: str = "cpu"
) -> list[LoadedModel]:
    """Several checkpoints; labels are made unique by what differs between the runs."""
    loaded = [load_model(p, which, device) for p in paths]
    labels = setting_labels([m.run_dir for m in loaded if m.run_dir is not None])
    if len({m.label for m in loaded}) < len(loaded) and len(labels) == len(loaded):
        for m in loaded:
            m.label = labels[m.run_dir]  # type: ignore[index]
    if len({m.label for m in loaded}) < len(loaded):  # e.g. best and last of one run
        for m in loaded:
            m.label = f"{m.label} ({m.checkpoint.stem})"
    return loaded


# -- labels ------------------------------------------------------------------------------------
def short_label(cfg: DictConfig) -> str:
    """``model + attention [+ conv]``, e.g. ``resnet20 + cbam``."""
    parts = [str(cfg.model.get("name", "?")), str((cfg.get("attention") or {}).get("name", "none"))]
    conv = cfg.get("conv")
    if conv:
        parts.append(f"conv={conv.get('name') if isinstance(conv, DictConfig) else conv}")
    for extra in cfg.get("extra_placements") or []:
        module = extra.get("module")
        parts.append(str(module.get("name") if isinstance(module, DictConfig) else module))
    return " + ".join(parts)


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of a run (Hydra's overrides.yaml or metrics.json)."""
    return RunDir(run_dir).overrides()


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node if isinstance(node, str) else json.dumps(node, default=str)}


def _config_leaves(run_dir: Path) -> dict[str, str]:
    try:
        cfg = load_run_config(run_dir)
        container = OmegaConf.to_container(cfg, resolve=False)
    except (ConfigError, ValueError):
        return {}
    return {
        k: v
        for k, v in _flat(container).items()
        if not k.startswith(("paths.", "callbacks.", "logger."))
    }


def _differing(settings: dict[Path, dict[str, str]]) -> dict[Path, str]:
    keys: list[str] = []
    for s in settings.values():
        keys.extend(k for k in s if k not in keys)
    varying = [k for k in keys if len({s.get(k) for s in settings.values()}) > 1]
    return {run: " ".join(f"{k}={s.get(k, '-')}" for k in varying) for run, s in settings.items()}


def setting_labels(run_dirs: Iterable[Path]) -> dict[Path, str]:
    """One label per run: the overrides that differ between the runs (their 'setting').

    Falls back to the config values that differ (runs started outside Hydra record no
    overrides), then to the model + attention name, then to the run dir name.
    """
    runs = list(dict.fromkeys(run_dirs))
    if not runs:
        return {}
    overrides = {
        r: {
            k.lstrip("+~"): v
            for k, _, v in (o.partition("=") for o in run_overrides(r))
            if not k.lstrip("+~").startswith(_NOISE_PREFIXES)
        }
        for r in runs
    }
    labels = _differing(overrides) if len(runs) > 1 else {}
    if len(runs) > 1 and all(labels.values()) and len(set(labels.values())) == len(runs):
        return {r: _shorten(v) for r, v in labels.items()}
    if len(runs) > 1:
        labels = _differing({r: _config_leaves(r) for r in runs})
        if all(labels.values()) and len(set(labels.values())) == len(runs):
            return {r: _shorten(v) for r, v in labels.items()}
    out = {}
    for r in runs:
        try:
            out[r] = short_label(load_run_config(r))
        except ConfigError:
            out[r] = r.name
    if len(set(out.values())) < len(runs):
        out = {r: f"{v} ({r.name})" for r, v in out.items()}
    return out


def _shorten(label: str) -> str:
    """Drop the ``.name`` of group keys (``attention.name=se`` -> ``attention=se``)."""
    return re.sub(r"(\w+)\.name=", r"\1=", label)


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"
