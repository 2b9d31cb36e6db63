"""Optimiser and learning-rate schedule factories.

The optimiser is a Hydra ``_partial_`` target (users may swap in any torch optimiser); the
schedule is built here because it needs the number of steps, which only the trainer knows.
Every schedule is a per-step multiplier of the base learning rate (``LambdaLR`` stepped
after every optimiser step), so the same config gives the same curve at any batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from attnexp.errors import ConfigError, check, choices_error

SCHEDULES = ("constant", "cosine", "multistep", "onecycle")
UNITS = ("epoch", "step")


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group, or two when norm weights and biases (every parameter with ndim <= 1) are
    exempt from weight decay (Goyal et al. 2017; the usual "no bias decay" trick)."""
    if not no_decay_bn_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scaled_lr(lr: float, global_batch_size: int, base_batch_size: int | None) -> float:
    """Linear scaling rule (Goyal et al. 2017): ``lr * global_batch / base_batch``.

    ``base_batch_size=None`` leaves ``lr`` unchanged (the lr in the config is used as is).
    """
    if base_batch_size is None:
        return lr
    check(int(base_batch_size) > 0, f"training.base_batch_size must be > 0, got {base_batch_size}")
    return lr * global_batch_size / int(base_batch_size)


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    model: nn.Module,
    no_decay_bn_bias: bool = False,
    lr: float | None = None,
) -> torch.optim.Optimizer:
    """Call the (partial) optimiser factory on the model's parameter groups.

    ``lr`` replaces the factory's learning rate (used for the linearly scaled lr).
    """
    keywords = dict(getattr(factory, "keywords", {}) or {})
    weight_decay = float(keywords.get("weight_decay", 0.0))
    kwargs = {} if lr is None else {"lr": lr}
    try:
        return factory(parameter_groups(model, weight_decay, no_decay_bn_bias), **kwargs)
    except (TypeError, ValueError) as err:  # e.g. nesterov without momentum, negative lr
        raise ConfigError(f"cannot build the optimizer from the `optimizer` config: {err}") from err


def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    return int(round(float(value) * steps_per_epoch)) if unit == "epoch" else int(value)


def lr_lambda(
    cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int
) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Options (``scheduler`` config): ``name`` (constant | cosine | multistep | onecycle);
    ``unit`` (epoch | step): the unit of ``milestones`` and ``warmup``, epochs may be
    fractional; ``warmup``: length of a linear warm-up from ``warmup_start`` x lr to lr,
    prepended to any schedule; ``milestones`` + ``gamma`` (multistep: lr x gamma at each
    milestone); ``final_lr_ratio`` (cosine floor, relative to lr); ``pct_start`` (onecycle:
    fraction of the run spent rising from ``div_start`` x lr to the peak, then cosine down
    to ``final_lr_ratio`` x lr).
    """
    name = cfg.get("name", "cosine")
    if name not in SCHEDULES:
        raise choices_error("scheduler.name", name, SCHEDULES)
    unit = cfg.get("unit", "epoch")
    if unit not in UNITS:
        raise choices_error("scheduler.unit", unit, UNITS)
    total = max(int(total_steps), 1)
    warmup = _to_steps(cfg.get("warmup", 0) or 0, unit, steps_per_epoch)
    check(warmup >= 0, f"scheduler.warmup must be >= 0, got {cfg.get('warmup')}")
    check(warmup < total, f"scheduler.warmup ({warmup} steps) covers the whole run ({total} steps)")
    warmup_start = float(cfg.get("warmup_start", 0.1))
    milestones = sorted(
        _to_steps(m, unit, steps_per_epoch) for m in cfg.get("milestones", []) or []
    )
    if name == "multistep":
        check(bool(milestones), "scheduler=multistep needs scheduler.milestones, e.g. [30, 60, 80]")
    gamma = float(cfg.get("gamma", 0.1))
    floor = float(cfg.get("final_lr_ratio", 0.0))
    pct_start = float(cfg.get("pct_start", 0.25))
    check(0.0 < pct_start < 1.0, f"scheduler.pct_start must be in (0, 1), got {pct_start}")
    div_start = float(cfg.get("div_start", 0.04))

    def cosine(t: float, top: float, bottom: float) -> float:
        return bottom + (top - bottom) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    def schedule(step: int) -> float:
        if step < warmup:
            return warmup_start + (1.0 - warmup_start) * step / warmup
        if name == "constant":
            return 1.0
        if name == "multistep":
            return gamma ** sum(step >= m for m in milestones)
        if name == "cosine":
            return cosine((step - warmup) / max(total - warmup, 1), 1.0, floor)
        # onecycle: linear from div_start to 1 until the peak, then cosine to the floor
        peak = warmup + max(int((total - warmup) * pct_start), 1)
        if step < peak:
            return div_start + (1.0 - div_start) * (step - warmup) / max(peak - warmup, 1)
        return cosine((step - peak) / max(total - peak, 1), 1.0, floor)

    return schedule


def iter_bn(model: nn.Module) -> Iterable[nn.Module]:
    """All batch-norm layers (used by the SyncBN checks and tests)."""
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
