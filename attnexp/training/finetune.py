"""Fine-tuning: a lower learning rate for the pretrained backbone than for the new modules.

``training.backbone_lr_mult`` (``recipe=finetune``: 0.1) scales the learning rate of every
parameter that was loaded from ``model.pretrained``; the inserted attention modules and a
new classifier (``model.newly_initialised``, set by
:func:`attnexp.models.pretrained.load_pretrained`) keep the configured lr. The split is
applied to the optimizer's existing parameter groups (so it combines with
``training.no_decay_bn_bias``), before the lr schedule is attached: every schedule is a
multiplier, so both groups follow the same curve at their own scale.
"""

from __future__ import annotations

import torch
from torch import nn

from attnexp.errors import ConfigError


def new_parameter_ids(model: nn.Module) -> set[int] | None:
    """``id`` of every newly initialised parameter; None when nothing was pretrained."""
    names = getattr(model, "newly_initialised", None)
    if names is None:
        return None
    wanted = set(names)
    return {id(p) for n, p in model.named_parameters() if n in wanted}


def split_backbone_lr(optimizer: torch.optim.Optimizer, model: nn.Module, mult: float) -> None:
    """Split each param group into (pretrained backbone: lr x ``mult``, new modules: lr), in
    place. Groups that would be empty are dropped."""
    if mult == 1.0:
        return
    if not mult > 0:
        raise ConfigError(f"training.backbone_lr_mult must be > 0, got {mult}")
    new = new_parameter_ids(model)
    if new is None:
        raise ConfigError(
            f"training.backbone_lr_mult={mult} scales the lr of pretrained weights, but the model "
            f"has none: set model.pretrained (torchvision or a state dict / .ckpt file), or "
            f"training.backbone_lr_mult=1.0 to train from scratch"
        )
    groups = []
    for group in optimizer.param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        backbone = [p for p in group["params"] if id(p) not in new]
        fresh = [p for p in group["params"] if id(p) in new]
        if backbone:
            groups.append({**options, "params": backbone, "lr": options["lr"] * mult})
        if fresh:
            groups.append({**options, "params": fresh})
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
