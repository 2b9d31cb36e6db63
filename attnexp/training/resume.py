"""Resuming a run: one run directory per run, continued in place.

``resume=<run dir>`` (or ``resume=<run dir>/checkpoints/<file>.ckpt``) continues that run:
its own config (``<run dir>/.hydra/config.yaml``) is used, training restarts from the
checkpoint (``last.ckpt`` by default) at the saved epoch, step and batch, the CSV log is
appended to, and metrics.json is written there at the end. Only overrides that cannot
change the result may be given alongside (``RESUME_OVERRIDABLE``: more epochs, other
devices, data paths); anything else is refused with a message, because a silently ignored
override is worse than an error.

``resume=<file>.ckpt`` outside a run directory starts a *new* run dir with the config you
compose and continues from that checkpoint's state (for checkpoints copied elsewhere).

A run dir that already holds ``checkpoints/last.ckpt`` when a fresh run starts in it (a
requeued SLURM/submitit job re-runs in the same dir) is resumed automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.errors import ConfigError
from attnexp.results import RunDir, rundir

# The run dir layout lives in attnexp.results.RunDir (these names stay for callers).
CHECKPOINT_DIR = rundir.CHECKPOINT_DIR
LAST = rundir.LAST_CHECKPOINT
HYDRA_DIR = rundir.HYDRA_DIR

#: Override keys allowed together with ``resume=<run dir>`` (prefix match).
RESUME_OVERRIDABLE = (
    "resume",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.accelerator",
    "trainer.strategy",
    "paths.",
    "data.root",
    "data.cache_dir",
    "data.num_workers",
    "hydra.",
    "callbacks.progress",
    "callbacks.preemption.every_n_train_steps",
)


@dataclass
class ResumePlan:
    """What to continue and from where."""

    cfg: DictConfig
    checkpoint: Path
    run_dir: Path
    in_place: bool  # continues the original run dir (False: a new run dir, foreign ckpt)
    reason: str  # "resume" | "requeue"
    epoch: int = 0  # checkpoint's current epoch
    global_step: int = 0
    hydra: dict[str, Any] | None = None  # the original run's choices/overrides
    previous_status: str | None = None
    applied_overrides: list[str] = field(default_factory=list)


def _is_run_dir(path: Path) -> bool:
    return RunDir(path).has_config()


def locate(target: str | Path) -> tuple[Path | None, Path]:
    """(run dir or None, checkpoint file) for ``resume=<target>``."""
    p = Path(str(target)).expanduser()
    if not p.exists():
        raise ConfigError(
            f"resume={target}: no such file or directory (pass a run dir or a .ckpt file)"
        )
    if p.is_file():
        if p.suffix != ".ckpt":
            raise ConfigError(
                f"resume={target} is not a .ckpt file; pass a run dir or a checkpoint"
            )
        parent = p.parent.parent if p.parent.name == CHECKPOINT_DIR else p.parent
        return (parent.resolve() if _is_run_dir(parent) else None), p.resolve()
    run_dir = p.parent if p.name == CHECKPOINT_DIR else p
    ckpt = run_dir / CHECKPOINT_DIR / LAST
    if not ckpt.is_file():
        found = sorted(f.name for f in (run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
        raise ConfigError(
            f"resume={target}: {ckpt} does not exist"
            + (
                f" (checkpoints there: {', '.join(found)}; pass one of them)"
                if found
                else " and there are no checkpoints (was the run started with callbacks=none?)"
            )
        )
    if not _is_run_dir(run_dir):
        raise ConfigError(
            f"resume={target}: {run_dir} has no .hydra/config.yaml, so it is not a run dir"
        )
    return run_dir.resolve(), ckpt.resolve()


def checkpoint_position(ckpt: Path) -> tuple[int, int]:
    """(epoch, global_step) stored in a Lightning checkpoint (memory-mapped, cheap)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        raise ConfigError(f"cannot read checkpoint {ckpt}: {err}") from err
    return int(state.get("epoch", 0)), int(state.get("global_step", 0))


def previous_status(run_dir: Path) -> str | None:
    return RunDir(run_dir).status()


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _original_hydra(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).hydra_file
    if not path.is_file():
        return None
    hc = OmegaConf.load(path).hydra
    choices = OmegaConf.to_container(hc.runtime.choices, resolve=False)
    return {
        "choices": {k: v for k, v in choices.items() if not k.startswith("hydra/")},
        "overrides": list(OmegaConf.to_container(hc.overrides.task, resolve=False)),
        "job_num": hc.job.get("num"),
        # a job's dir is <sweep dir>/<job num>; hydra.yaml keeps sweep.dir unresolved
        "sweep_dir": str(Path(hc.runtime.output_dir).parent)
        if str(hc.get("mode")) == "MULTIRUN"
        else None,
    }


def _apply_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Apply the allowed ``key=value`` overrides (parsed with Hydra's grammar) to ``cfg``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    applied = []
    parser = OverridesParser.create()
    for override in overrides:
        key = _override_key(override)
        if key == "resume" or key.startswith("hydra."):
            continue
        parsed = parser.parse_override(override)
        with open_dict(cfg):
            OmegaConf.update(cfg, key, parsed.value(), merge=False)
        applied.append(override)
    return applied


def recorded_group_choices(run_dir: Path) -> list[str]:
    """The run's config groups as overrides (``data=imagefolder``, ``model=resnet20`` ...).

    ``attnexp-train resume=<run> data.root=...`` adds them, so that the overrides resume
    allows compose even when today's defaults pick another group; :func:`plan` accepts them
    (they change nothing: the run's own config replaces the composed one)."""
    run = RunDir(run_dir)
    conf = Path(__file__).resolve().parents[1] / "conf"
    if run.hydra_file.is_file():
        runtime = OmegaConf.load(run.hydra_file).hydra.runtime
        choices = dict(OmegaConf.to_container(runtime.choices))
    elif run.config_file.is_file():  # started outside Hydra (a notebook, a test): the
        config = OmegaConf.load(run.config_file)  # data and model groups are named by `name`
        choices = {
            group: config.get(group, {}).get("name")
            for group in ("data", "model")
            if (conf / group / f"{config.get(group, {}).get('name')}.yaml").is_file()
        }
    else:
        return []
    conf = Path(__file__).resolve().parents[1] / "conf"
    primary = {  # groups of train.yaml's defaults list; others were added with +group=
        next(iter(d)).split(" ")[-1] if not isinstance(d, str) else d
        for d in OmegaConf.load(conf / "train.yaml").defaults
    }
    return [
        f"{'' if group in primary else '+'}{group}={option}"
        for group, option in choices.items()
        if option is not None and not group.startswith("hydra/") and group != "local"
    ]


def plan(cfg: DictConfig, overrides: list[str] | None = None) -> ResumePlan | None:
    """How (and whether) ``cfg`` resumes an earlier run; ``overrides`` are the command line's."""
    overrides = list(overrides or [])
    target = cfg.get("resume")
    here = Path(str(cfg.paths.output_dir))
    if target in (None, "", False):
        last = here / CHECKPOINT_DIR / LAST
        if not last.is_file():
            return None
        status = previous_status(here)
        if status == "completed":
            raise ConfigError(
                f"{here} already holds a completed run (metrics.json); start a new run dir"
            )
        epoch, step = checkpoint_position(last)
        return ResumePlan(
            cfg, last.resolve(), here.resolve(), True, "requeue", epoch, step, None, status
        )

    run_dir, ckpt = locate(str(target))
    epoch, step = checkpoint_position(ckpt)
    if run_dir is None:  # a checkpoint from elsewhere: new run dir, the composed config
        return ResumePlan(cfg, ckpt, here.resolve(), False, "resume", epoch, step)

    recorded = set(recorded_group_choices(run_dir))
    refused = [
        o
        for o in overrides
        if not _override_key(o).startswith(RESUME_OVERRIDABLE) and o not in recorded
    ]
    if refused:
        raise ConfigError(
            f"resume={target} continues the run with its original config ({run_dir / HYDRA_DIR}/config.yaml); "
            f"these overrides would change the run and are not allowed: {' '.join(refused)}. Allowed with "
            f"resume: {', '.join(RESUME_OVERRIDABLE)}. To train a variant, start a new run instead."
        )
    original = OmegaConf.load(RunDir(run_dir).config_file)
    applied = _apply_overrides(original, [o for o in overrides if o not in recorded])
    with open_dict(original):
        original.paths.output_dir = str(run_dir)
        original.resume = str(target)
    status = previous_status(run_dir)
    if status == "completed":
        done = int(RunDir(run_dir).read_record().epochs or 0)
        max_epochs = int(original.trainer.get("max_epochs") or -1)
        max_steps = int(original.trainer.get("max_steps") or -1)
        more = max_epochs > done if max_steps < 0 else max_steps > step
        if not more:
            raise ConfigError(
                f"resume={target}: that run already completed ({done} epochs). To train longer, also "
                f"pass trainer.max_epochs=<more than {original.trainer.get('max_epochs')}>"
            )
    return ResumePlan(
        original,
        ckpt,
        run_dir,
        True,
        "resume",
        epoch,
        step,
        _original_hydra(run_dir),
        status,
        applied,
    )
