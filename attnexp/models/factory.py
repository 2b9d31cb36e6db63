"""``build_model``: the one entry point from a name and a config to a wired model.

Backbone options by family (anything else is a ConfigError listing these):

* ``imagenet`` (resnet18 .. wide_resnet50_2): ``in_chans=3``, ``zero_init_residual=False``,
  ``stride_position="v1.5"`` (or ``"v1"``; no effect on basic-block nets resnet18/34).
* ``cifar`` (resnet20 .. resnet110): ``in_chans=3``, ``zero_init_residual=False``,
  ``shortcut="A"`` (or ``"B"``).
* ``cifar_preact`` (resnet164, wrn16_8, wrn28_10): ``in_chans=3``, ``shortcut="B"`` (or
  ``"A"``), ``zero_init_residual=False`` (True is an error: pre-activation branches end in a
  conv, not a BN), and for WRNs ``dropout=0.0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnexp.errors import ConfigError, check, choices_error
from attnexp.models.base import Backbone
from attnexp.models.cifar import (
    CIFAR_DEPTHS,
    SHORTCUTS,
    WRN_ARCHS,
    cifar_resnet,
    resnet164,
    wide_resnet,
)
from attnexp.models.placement import Placement, apply_placements, parse_placements
from attnexp.models.resnet import IMAGENET_ARCHS, PLANES, STRIDE_POSITIONS, imagenet_resnet


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a backbone, available without building it."""

    name: str
    family: str  # imagenet | cifar | cifar_preact
    block: str  # basic | bottleneck | preact_basic | preact_bottleneck
    blocks_per_stage: tuple[int, ...]
    stage_channels: tuple[int, ...]  # output channels of each stage
    default_image_size: int
    default_num_classes: int
    options: Mapping[str, Any] = field(default_factory=dict)  # backbone options -> defaults
    paper: str = ""

    @property
    def num_stages(self) -> int:
        return len(self.blocks_per_stage)


_COMMON = {"in_chans": 3, "zero_init_residual": False}
_WHY_NOT = {
    "stride_position": "stride_position chooses where ImageNet bottleneck ResNets stride "
    "(v1: first 1x1 conv, v1.5: 3x3 conv); {name} is a CIFAR ResNet whose blocks always "
    "stride on their first 3x3 conv",
    "shortcut": "shortcut chooses the CIFAR ResNets' downsampling shortcut (A: zero padding, "
    "B: 1x1 projection); {name} is an ImageNet ResNet, which always uses projections (B)",
    "dropout": "dropout (between the two convs of a block) is a Wide ResNet option; {name} "
    "has none",
}


def _infos() -> dict[str, tuple[ModelInfo, Callable[..., Backbone]]]:
    table: dict[str, tuple[ModelInfo, Callable[..., Backbone]]] = {}
    for name, (block, layers, _, _) in IMAGENET_ARCHS.items():
        expansion = 1 if block == "basic" else 4
        info = ModelInfo(
            name,
            "imagenet",
            block,
            layers,
            tuple(expansion * p for p in PLANES),
            224,
            1000,
            {**_COMMON, "stride_position": "v1.5"},
            "He et al. 2016 (torchvision)",
        )
        table[name] = (info, lambda _n=name, **kw: imagenet_resnet(_n, **kw))
    for name, depth in CIFAR_DEPTHS.items():
        n = (depth - 2) // 6
        info = ModelInfo(
            name,
            "cifar",
            "basic",
            (n, n, n),
            (16, 32, 64),
            32,
            10,
            {**_COMMON, "shortcut": "A"},
            "He et al. 2016, section 4.2",
        )
        table[name] = (info, lambda _n=name, **kw: cifar_resnet(_n, **kw))
    table["resnet164"] = (
        ModelInfo(
            "resnet164",
            "cifar_preact",
            "preact_bottleneck",
            (18, 18, 18),
            (64, 128, 256),
            32,
            10,
            {**_COMMON, "shortcut": "B"},
            "He et al. 2016b (pre-activation ResNet-164)",
        ),
        resnet164,
    )
    for name, (depth, widen) in WRN_ARCHS.items():
        n = (depth - 4) // 6
        info = ModelInfo(
            name,
            "cifar_preact",
            "preact_basic",
            (n, n, n),
            (16 * widen, 32 * widen, 64 * widen),
            32,
            10,
            {**_COMMON, "shortcut": "B", "dropout": 0.0},
            "Zagoruyko & Komodakis 2016 (WRN)",
        )
        table[name] = (info, lambda _d=depth, _w=widen, **kw: wide_resnet(_d, _w, **kw))
    return table


_MODELS = _infos()


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_MODELS)


def model_info(name: str) -> ModelInfo:
    """Stages, channels, default sizes and options of ``name``."""
    if name not in _MODELS:
        raise choices_error("model", name, available_models())
    return _MODELS[name][0]


def _check_backbone_options(info: ModelInfo, options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        if key not in info.options:
            if key in _WHY_NOT:
                raise ConfigError(_WHY_NOT[key].format(name=info.name))
            raise ConfigError(
                f"unknown backbone option {key!r} for {info.name}; valid options: "
                f"{', '.join(sorted(info.options))} (plus num_classes, placements, conv, "
                "image_size)"
            )
        if key == "stride_position" and value not in STRIDE_POSITIONS:
            raise choices_error("stride_position", value, STRIDE_POSITIONS)
        if key == "shortcut" and value not in SHORTCUTS:
            raise choices_error("shortcut", value, SHORTCUTS)
        if key == "in_chans":
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"in_chans must be a positive int, got {value!r}",
            )
        if key == "zero_init_residual":
            check(isinstance(value, bool), f"zero_init_residual must be a bool, got {value!r}")
        if key == "dropout":
            check(
                isinstance(value, (int, float)) and 0 <= value < 1,
                f"dropout must be in [0, 1), got {value!r}",
            )


def build_model(
    name: str,
    *,
    num_classes: int,
    placements: Sequence[Placement | Mapping[str, Any]] | None = None,
    conv: str | Mapping[str, Any] | None = None,
    image_size: int | None = None,
    probe: bool = True,
    **backbone_options: Any,
) -> Backbone:
    """Build backbone ``name`` and wire in ``placements`` and the ``conv`` module.

    ``conv`` (``{name: sk, ...options}``) replaces the 3x3 conv of every block, in addition
    to the placements (so SK + SE combine). ``image_size`` (default: the family's, 224 for
    ImageNet nets and 32 for CIFAR nets) only decides the feature-map sizes used to check
    modules' ``min_size``, to fill ``feature_size`` options and to ``probe`` each placed module
    once at its site's shape (see :func:`~attnexp.models.placement.apply_placements`); the
    model accepts any input size. The placed modules are listed in ``model.placed_modules``.
    """
    info = model_info(name)
    check(
        isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1,
        f"num_classes must be a positive int, got {num_classes!r}",
    )
    _check_backbone_options(info, backbone_options)
    parsed = parse_placements(placements, conv)
    model = _MODELS[name][1](num_classes=num_classes, **backbone_options)
    size = info.default_image_size if image_size is None else image_size
    apply_placements(model, parsed, image_size=size, probe=probe)
    return model


# --------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_torchvision_weights` did not load."""

    missing: list[str]  # model keys not loaded (attention modules, mismatched shapes)
    unexpected: list[str]  # state-dict keys the model lacks (e.g. a replaced 3x3 conv)
    mismatched: list[str]  # same name, different shape, skipped (e.g. fc for 10 classes)


def load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> LoadReport:
    """Load a torchvision ResNet state dict into ``model`` wherever names and shapes match.

    Our ImageNet ResNets use torchvision's parameter names, so with attention placed only
    the attention parameters are ``missing``. Entries whose shape differs (a classifier for
    another number of classes) are skipped and listed as ``mismatched``.
    """
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state_dict.items() if k not in mismatched}
    result = model.load_state_dict(usable, strict=False)
    return LoadReport(
        missing=sorted(set(result.missing_keys) | set(mismatched)),
        unexpected=sorted(result.unexpected_keys),
        mismatched=sorted(mismatched),
    )
