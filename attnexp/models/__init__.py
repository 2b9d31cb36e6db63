"""Backbones (ImageNet and CIFAR ResNets, WRNs) and the placement of attention modules.

>>> model = build_model(
...     "resnet50",
...     num_classes=1000,
...     placements=[{"module": {"name": "se", "reduction": 16}, "position": "after_conv3"}],
... )
>>> model.placed_modules  # one record per placed module

Positions are documented in :mod:`attnexp.models.blocks`, the placement spec in
:mod:`attnexp.models.placement`, backbone options in :mod:`attnexp.models.factory`.
``python -m attnexp.models resnet50 --attention se`` prints the placements as a table.
"""

from attnexp.models.base import Backbone
from attnexp.models.blocks import BLOCK_POSITIONS, ResidualBlock
from attnexp.models.factory import (
    LoadReport,
    ModelInfo,
    available_models,
    build_model,
    load_torchvision_weights,
    model_info,
)
from attnexp.models.placement import (
    GATE_POSITIONS,
    POSITIONS,
    PlacedModule,
    Placement,
    apply_placements,
    parse_placement,
    parse_placements,
)

__all__ = [
    "BLOCK_POSITIONS",
    "GATE_POSITIONS",
    "POSITIONS",
    "Backbone",
    "LoadReport",
    "ModelInfo",
    "PlacedModule",
    "Placement",
    "ResidualBlock",
    "apply_placements",
    "available_models",
    "build_model",
    "load_torchvision_weights",
    "model_info",
    "parse_placement",
    "parse_placements",
]
