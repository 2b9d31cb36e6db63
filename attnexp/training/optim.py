"""Optimiser and learning-rate schedule factories.

The optimiser is a Hydra ``_partial_`` target (users may swap in any torch optimiser); the
schedule is built here because it needs the number of steps, which only the trainer knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from attnexp.errors import check, choices_error

SCHEDULES = ("constant", "cosine", "multistep", "onecycle")


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_bn_bias: bool) -> list[dict]:
    """One group, or two when norm weights and biases are exempt from weight decay."""
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


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer],
    model: nn.Module,
    no_decay_bn_bias: bool = False,
) -> torch.optim.Optimizer:
    """Call the (partial) optimiser factory on the model's parameter groups."""
    weight_decay = getattr(factory, "keywords", {}).get("weight_decay", 0.0)
    return factory(parameter_groups(model, weight_decay, no_decay_bn_bias))


def lr_lambda(cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``step``.

    Options: ``name`` (constant | cosine | multistep | onecycle), ``warmup_epochs`` (linear
    warm-up from ``warmup_start`` x lr), ``milestones`` (epochs, multistep), ``gamma``
    (multistep factor), ``final_lr_ratio`` (cosine floor), ``pct_start`` (onecycle peak).
    Everything is per step, so changing the batch size keeps the schedule's shape.
    """
    name = cfg.get("name", "cosine")
    if name not in SCHEDULES:
        raise choices_error("scheduler.name", name, SCHEDULES)
    warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
    warmup_start = float(cfg.get("warmup_start", 0.1))
    total = max(total_steps, 1)
    check(warmup < total or warmup == 0, f"scheduler.warmup_epochs covers the whole run ({warmup} of {total} steps)")
    milestones = [int(round(float(m) * steps_per_epoch)) for m in cfg.get("milestones", []) or []]
    gamma = float(cfg.get("gamma", 0.1))
    floor = float(cfg.get("final_lr_ratio", 0.0))
    pct_start = float(cfg.get("pct_start", 0.25))

    def schedule(step: int) -> float:
        if step < warmup:
            return warmup_start + (1.0 - warmup_start) * step / warmup
        if name == "constant":
            return 1.0
        if name == "multistep":
            return gamma ** sum(step >= m for m in milestones)
        if name == "cosine":
            t = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        # onecycle: linear up to the peak at pct_start, cosine down to ~0
        peak = max(int(total * pct_start), 1)
        if step < peak:
            return 0.04 + 0.96 * step / peak
        t = min((step - peak) / max(total - peak, 1), 1.0)
        return 1e-4 + (1.0 - 1e-4) * 0.5 * (1.0 + math.cos(math.pi * t))

    return schedule


def iter_bn(model: nn.Module) -> Iterable[nn.Module]:
    """All batch-norm layers (used by SyncBN conversion and tests)."""
    return (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
