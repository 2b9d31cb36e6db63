"""Grad-CAM and Grad-CAM++ of any backbone through the ``grad-cam`` library (pytorch_grad_cam).

The target layer is a module name of the backbone (``layer3``, ``layer4.2``,
``layer3.1.attn.after_conv3.0``, ...); the default is the last stage, whose output feeds the
classifier, as in the CBAM paper's Grad-CAM figure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from attnexp.errors import ConfigError

#: Name on the command line -> pytorch_grad_cam class.
CAM_METHODS: dict[str, type] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
#: Column titles.
CAM_TITLES: dict[str, str] = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
_STAGE = re.compile(r"layer(\d+)$")


def default_target_layer(model: nn.Module) -> str:
    """Name of the last stage (``layerN``); for other models the last top-level child with
    a conv inside it."""
    stages = [
        (int(m.group(1)), name) for name, _ in model.named_children() if (m := _STAGE.match(name))
    ]
    if stages:
        return max(stages)[1]
    for name, child in reversed(list(model.named_children())):
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            return name
    raise ConfigError(
        "the model has no stage (layerN) or conv child to take Grad-CAM at; pass target_layer=<module name>"
    )


def resolve_target_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the target layer; ``None`` means :func:`default_target_layer`."""
    name = name or default_target_layer(model)
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        top = [n for n, _ in model.named_children()]
        blocks = [n for n in modules if re.fullmatch(r"layer\d+\.\d+", n)]
        raise ConfigError(
            f"target layer {name!r} is not a module of the model; top-level modules: {', '.join(top)}; "
            f"blocks: {', '.join(blocks[:12])}{' ...' if len(blocks) > 12 else ''}"
        )
    return name, modules[name]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "gradcam",
    target_layer: str | None = None,
    targets: Sequence[int] | None = None,
) -> np.ndarray:
    """Class activation maps (N, H, W) in [0, 1] at the input's size, one per image.

    ``targets``: class index per image; ``None`` explains the predicted class. The model's
    train/eval mode and gradient flags are restored afterwards.
    """
    if method not in CAM_METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; valid choices: {', '.join(CAM_METHODS)}")
    _, layer = resolve_target_layer(model, target_layer)
    was_training = model.training
    device = next(model.parameters()).device
    cam_targets = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            CAM_METHODS[method](model=model, target_layers=[layer]) as cam,
        ):
            inp = x.detach().clone().to(device).requires_grad_(True)  # works for frozen weights too
            maps = cam(input_tensor=inp, targets=cam_targets)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32)), 0.0, 1.0)
