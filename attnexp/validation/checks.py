"""Checks that need several keys: placement vs backbone, data sizes vs batch and classes,
schedule vs run length, optimizer options that exclude each other.

Every function takes the resolved config (plain containers) whose keys already passed
their schema, and returns problems (never raises), so all of them are reported together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attnexp.validation.problems import Problem, fmt_value

log = logging.getLogger(__name__)

Cfg = Mapping[str, Any]

#: Training images of the datasets whose size is known from the config alone.
CIFAR_TRAIN = 50000


# --------------------------------------------------------------------------- placements
def _placements(cfg: Cfg) -> list[tuple[str, Mapping[str, Any], str | None]]:
    """(config key, placement mapping, module name or None) for every placement."""
    out: list[tuple[str, Mapping[str, Any], str | None]] = []
    attention = cfg.get("attention") or {}
    name = attention.get("name", "none") if isinstance(attention, Mapping) else None
    if isinstance(cfg.get("placement"), Mapping):
        out.append(("placement", cfg["placement"], None if name == "none" else name))
    for i, extra in enumerate(cfg.get("extra_placements") or []):
        module = extra.get("module")
        module_name = module.get("name") if isinstance(module, Mapping) else module
        out.append((f"extra_placements[{i}]", extra, module_name))
    return out


def check_placements(cfg: Cfg) -> list[Problem]:
    """Stages, blocks and stage options against the backbone's static shape (whatever the
    module, ``attention=none`` included: a placement the backbone lacks is a typo), and the
    position against the module's kind."""
    from attnexp.models import model_info

    info = model_info(cfg["model"]["name"])
    problems: list[Problem] = []
    n = info.num_stages
    for where, p, module in _placements(cfg):
        position = p.get("position", "auto")
        stages = p.get("stages", "all")
        if module is not None and position == "auto":
            position = _spec_position(module) or position
        last = n - 1 if position == "between_stages" else n
        if stages != "all":
            bad = [s for s in stages if not 1 <= s <= last]
            if bad:
                why = (
                    f"between_stages goes after stage k, k in 1..{last}"
                    if position == "between_stages" and all(s == n for s in bad)
                    else f"{info.name} has {n} stages"
                )
                problems.append(
                    Problem(
                        f"{where}.stages",
                        f"`{where}.stages={fmt_value(stages)}`: stage(s) {bad} do not exist "
                        f"({why}); valid stages: "
                        f"{', '.join(str(i) for i in range(1, last + 1))} (1-based)",
                        "placement",
                    )
                )
                continue
        blocks = p.get("blocks", "all")
        if isinstance(blocks, list):
            chosen = range(1, n + 1) if stages == "all" else stages
            fewest = min(info.blocks_per_stage[s - 1] for s in chosen)
            bad = [b for b in blocks if not -fewest <= b < fewest]
            if bad:
                problems.append(
                    Problem(
                        f"{where}.blocks",
                        f"`{where}.blocks={fmt_value(blocks)}`: block(s) {bad} do not exist "
                        f"in every selected stage of {info.name} (blocks per stage: "
                        f"{list(info.blocks_per_stage)}); valid indices: 0..{fewest - 1} "
                        f"(or -{fewest}..-1 from the end)",
                        "placement",
                    )
                )
        if position == "between_stages" and blocks != "all":
            problems.append(
                Problem(
                    f"{where}.blocks",
                    f"`{where}.blocks={fmt_value(blocks)}`: between_stages places one module "
                    "after each selected stage; blocks must stay 'all'",
                    "placement",
                )
            )
        for key, values in (p.get("stage_options") or {}).items():
            if len(values) != n:
                problems.append(
                    Problem(
                        f"{where}.stage_options.{key}",
                        f"`{where}.stage_options.{key}={fmt_value(values)}`: needs one value "
                        f"per stage of {info.name}, i.e. {n} values, got {len(values)}",
                        "placement",
                    )
                )
        if module is not None:
            problems += _module_problems(where, module, p)
    return problems


def _spec_position(module: str) -> str | None:
    from attnexp.attention.registry import get_spec
    from attnexp.errors import ConfigError

    try:
        return get_spec(module).default_position
    except ConfigError:
        return None


def _module_problems(where: str, module: str, p: Mapping[str, Any]) -> list[Problem]:
    from attnexp.attention import available
    from attnexp.attention.registry import get_spec

    if module not in available():
        key = "attention.name" if where == "placement" else f"{where}.module"
        return [
            Problem(
                key,
                f"`{key}={fmt_value(module)}`: unknown attention module; valid choices: "
                f"{', '.join(available())}",
                "unknown_choice",
            )
        ]
    spec = get_spec(module)
    position = p.get("position", "auto")
    if position == "auto":
        return []
    if (position == "conv") != (spec.kind == "conv"):
        valid = "conv (or auto)" if spec.kind == "conv" else "auto or a gate position"
        return [
            Problem(
                f"{where}.position",
                f"`{where}.position={position}`: {module!r} is a {spec.kind}-kind module; "
                f"valid positions for it: {valid}",
                "placement",
            )
        ]
    return []


# --------------------------------------------------------------------------- data
def train_images(data: Mapping[str, Any]) -> int | None:
    """Training images per epoch, when the config alone says (None for folder datasets)."""
    name = data.get("name")
    if name == "synthetic":
        return int(data.get("num_train", 5000))
    if name in ("cifar10", "cifar100"):
        images = CIFAR_TRAIN - int(data.get("val_size", 0) or 0)
        return min(images, int(data["num_train"])) if data.get("num_train") else images
    return None


def check_data(cfg: Cfg) -> list[Problem]:
    data, model = cfg["data"], cfg["model"]
    problems: list[Problem] = []
    if model.get("num_classes") != data.get("num_classes"):
        problems.append(
            Problem(
                "model.num_classes",
                f"`model.num_classes={fmt_value(model.get('num_classes'))}` differs from "
                f"`data.num_classes={fmt_value(data.get('num_classes'))}`: the classifier "
                "must have one output per class (leave model.num_classes=${data.num_classes})",
                "consistency",
            )
        )
    fixed = {"synthetic": 10, "cifar10": 10, "cifar100": 100}.get(str(data.get("name")))
    if fixed is not None and data.get("num_classes") != fixed:
        problems.append(
            Problem(
                "data.num_classes",
                f"`data.num_classes={fmt_value(data.get('num_classes'))}`: data={data['name']} "
                f"has {fixed} classes; valid: {fixed}",
                "consistency",
            )
        )
    root = data.get("root")
    if isinstance(root, str) and root and Path(os.path.expandvars(root)).expanduser().is_file():
        problems.append(
            Problem(
                "data.root",
                f"`data.root={root}`: is a file, not a directory; valid: the folder holding the "
                "dataset (train/ and test/ class folders, or cifar-10-batches-py/)",
                "consistency",
            )
        )
    images = train_images(data)
    if images is None:
        return problems
    classes = int(data.get("num_classes") or 1)
    if data.get("name") == "synthetic" and images < classes:
        problems.append(
            Problem(
                "data.num_train",
                f"`data.num_train={images}`: fewer training images than the {classes} "
                f"classes, so some classes have none; valid: >= {classes} (better: "
                "many per class)",
                "classes",
            )
        )
    batch = data.get("global_batch") or data.get("batch_size")
    world = _world_size(cfg)
    per_step = int(batch) * (1 if data.get("global_batch") else world)
    if per_step > images:
        key = "data.global_batch" if data.get("global_batch") else "data.batch_size"
        across = "" if data.get("global_batch") or world == 1 else f" x {world} processes"
        problems.append(
            Problem(
                key,
                f"`{key}={batch}`{across}: larger than the {images} training images of "
                f"data={data['name']}, so every step sees the whole split (one step per "
                f"epoch); valid: <= {images // (1 if data.get('global_batch') else world)}",
                "dataset_size",
            )
        )
    return problems


def _world_size(cfg: Cfg) -> int:
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) and devices >= 1:
        count = devices
    elif isinstance(devices, str) and devices not in ("auto", "-1"):
        ids = [d for d in devices.split(",") if d.strip()]
        count = int(ids[0]) if len(ids) == 1 and "," not in devices else len(ids)
    else:
        count = 1
    return count * int(trainer.get("num_nodes", 1) or 1)


# --------------------------------------------------------------------------- schedule
def check_schedule(cfg: Cfg) -> list[Problem]:
    trainer, sched = cfg["trainer"], cfg.get("scheduler") or {}
    problems: list[Problem] = []
    max_epochs = trainer.get("max_epochs")
    max_steps = trainer.get("max_steps", -1)
    fast = trainer.get("fast_dev_run")
    if max_epochs == 0 and not fast:
        problems.append(
            Problem(
                "trainer.max_epochs",
                "`trainer.max_epochs=0`: the run would end untrained and report the test "
                "error of random weights; valid: an integer >= 1 (or -1 with "
                "trainer.max_steps > 0)",
                "schedule",
            )
        )
    if max_epochs in (-1, None) and max_steps in (-1, None) and not fast:
        problems.append(
            Problem(
                "trainer.max_epochs",
                f"`trainer.max_epochs={fmt_value(max_epochs)}` with `trainer.max_steps="
                f"{fmt_value(max_steps)}`: a run without an end cannot have a learning-rate "
                "schedule (it is defined over the run length); set trainer.max_epochs >= 1, "
                "or trainer.max_steps >= 1 for a run measured in steps",
                "schedule",
            )
        )
    if max_steps == 0 and not fast:
        problems.append(
            Problem(
                "trainer.max_steps",
                "`trainer.max_steps=0`: no training step would run; valid: -1 (no step "
                "limit) or an integer >= 1",
                "schedule",
            )
        )
    unit = sched.get("unit", "epoch")
    length = max_epochs if unit == "epoch" else max_steps
    length = length if isinstance(length, int) and length >= 1 else None
    if unit == "step" and length is None and max_steps in (-1, None):
        length = None  # steps per epoch unknown until the data is loaded
    what = "trainer.max_epochs" if unit == "epoch" else "trainer.max_steps"
    name = sched.get("name", "cosine")
    milestones = list(sched.get("milestones") or [])
    if name == "multistep" and not milestones:
        problems.append(
            Problem(
                "scheduler.milestones",
                "`scheduler.milestones=[]`: scheduler=multistep needs milestones, e.g. "
                "[30, 60, 80]",
                "schedule",
            )
        )
    if name == "multistep" and any(b <= a for a, b in zip(milestones, milestones[1:])):
        problems.append(
            Problem(
                "scheduler.milestones",
                f"`scheduler.milestones={fmt_value(milestones)}`: must increase strictly",
                "schedule",
            )
        )
    if name == "multistep" and length is not None:
        beyond = [m for m in milestones if m >= length]
        if beyond and len(beyond) == len(milestones):
            # A prefix of a longer recipe (a smoke run of a preset, the first SLURM job of a
            # requeued run): the lr is constant throughout, which is what such a run means.
            log.warning(
                "scheduler.milestones=%s all lie at or beyond the end of this run (%s=%s): "
                "the learning rate stays constant",
                fmt_value(milestones),
                what,
                length,
            )
        elif beyond:
            problems.append(
                Problem(
                    "scheduler.milestones",
                    f"`scheduler.milestones={fmt_value(milestones)}`: milestone(s) {beyond} "
                    f"are at or beyond the end of the run ({what}={length}, unit={unit}), so "
                    f"they never decay the learning rate; valid: increasing values < {length}",
                    "schedule",
                )
            )
    warmup = sched.get("warmup", 0) or 0
    if length is not None and warmup >= length:
        problems.append(
            Problem(
                "scheduler.warmup",
                f"`scheduler.warmup={fmt_value(warmup)}` ({unit}s) covers the whole run "
                f"({what}={length}); valid: < {length}",
                "schedule",
            )
        )
    return problems


# --------------------------------------------------------------------------- optimizer
def check_optimizer(cfg: Cfg) -> list[Problem]:
    opt = cfg["optimizer"]
    if opt.get("nesterov") and (opt.get("momentum", 0) <= 0 or opt.get("dampening", 0) != 0):
        return [
            Problem(
                "optimizer.nesterov",
                f"`optimizer.nesterov=true` needs optimizer.momentum > 0 and dampening 0, got "
                f"momentum={fmt_value(opt.get('momentum', 0))}, dampening="
                f"{fmt_value(opt.get('dampening', 0))}; set momentum (e.g. 0.9) or "
                "nesterov=false",
                "optimizer",
            )
        ]
    return []


#: Cross-key checks and the keys each reads (skipped when one of them is invalid: its
#: problem is reported already).
CHECKS: tuple[tuple[Callable[[Cfg], list[Problem]], tuple[str, ...]], ...] = (
    (
        check_placements,
        ("model.name", "placement", "attention.name", "extra_placements"),
    ),
    (
        check_data,
        ("data", "model.num_classes", "trainer.devices", "trainer.num_nodes"),
    ),
    (
        check_schedule,
        (
            "trainer.max_epochs",
            "trainer.max_steps",
            "trainer.fast_dev_run",
            "scheduler.name",
            "scheduler.unit",
            "scheduler.milestones",
            "scheduler.warmup",
        ),
    ),
    (check_optimizer, ("optimizer.nesterov", "optimizer.momentum", "optimizer.dampening")),
)
