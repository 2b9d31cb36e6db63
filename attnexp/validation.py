"""Check a composed config before any data is loaded or any model trained.

A typo found after three hours of training is a lost afternoon. Everything that can be
checked from the config alone is checked here, in seconds, and reported as one
:class:`~attnexp.errors.ConfigError` naming the key and the valid values. Hydra already
rejects unknown keys (struct mode) and unknown group options with the list of options;
this covers the rest: dataset and backbone names, module options and placements (by
building the backbone, which probes every placed module once), trainer arguments,
optimiser and schedule settings.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
from omegaconf import DictConfig
from torch import nn

from attnexp.errors import ConfigError, check, choices_error


def _check_trainer(cfg: DictConfig) -> None:
    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {
        "self",
        "callbacks",
        "logger",
        "plugins",
    }
    unknown = sorted(set(cfg.get("trainer", {}) or {}) - valid)
    if unknown:
        raise ConfigError(
            f"unknown trainer option(s) {', '.join(unknown)}; valid options are lightning.Trainer's "
            f"arguments: {', '.join(sorted(valid))}"
        )
    max_epochs = cfg.trainer.get("max_epochs")
    check(
        max_epochs is None or (isinstance(max_epochs, int) and max_epochs >= -1),
        f"trainer.max_epochs must be an integer >= 1 (or -1 for no limit), got {max_epochs!r}",
    )


def _check_optimizer(cfg: DictConfig) -> None:
    opt = cfg.get("optimizer")
    check(
        opt is not None and "_target_" in opt, "optimizer must have a _target_ (e.g. optimizer=sgd)"
    )
    lr = opt.get("lr")
    check(
        isinstance(lr, (int, float)) and lr > 0,
        f"optimizer.lr (the learning rate) must be a number > 0, got {lr!r}",
    )
    wd = opt.get("weight_decay", 0.0)
    check(
        isinstance(wd, (int, float)) and wd >= 0, f"optimizer.weight_decay must be >= 0, got {wd!r}"
    )


def _check_scheduler(cfg: DictConfig) -> None:
    from attnexp.training.optim import SCHEDULES

    sched = cfg.get("scheduler") or {}
    name = sched.get("name", "constant")
    if name not in SCHEDULES:
        raise choices_error("scheduler.name", name, SCHEDULES)
    warmup = sched.get("warmup_epochs", 0)
    check(
        isinstance(warmup, (int, float)) and warmup >= 0,
        f"scheduler.warmup_epochs must be >= 0, got {warmup!r}",
    )


def _check_data(cfg: DictConfig) -> None:
    from attnexp.data import available_datasets

    data = cfg.get("data")
    check(
        data is not None and "name" in data, "the config has no data.name (choose data=<dataset>)"
    )
    if data.name not in available_datasets():
        raise choices_error("dataset (data.name)", data.name, available_datasets())
    for key in ("batch_size", "num_classes", "image_size"):
        value = data.get(key)
        check(
            value is None or (isinstance(value, int) and value >= 1),
            f"data.{key} must be an integer >= 1, got {value!r}",
        )


def validate_config(cfg: DictConfig) -> nn.Module:
    """Run every check; return the built backbone (building it is the placement check)."""
    from attnexp import builders

    seed = cfg.get("seed")
    check(isinstance(seed, int) and seed >= 0, f"seed must be a non-negative integer, got {seed!r}")
    _check_data(cfg)
    _check_trainer(cfg)
    _check_optimizer(cfg)
    _check_scheduler(cfg)
    return builders.build_backbone(cfg)


def describe(err: ConfigError) -> dict[str, Any]:
    """A machine-readable form of a config error (for failed-run records)."""
    return {"type": "ConfigError", "message": str(err)}
