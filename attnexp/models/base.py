"""What every backbone shares: stages ``layer1..N``, between-stage gates, sizes, init.

A backbone is ``stem -> layer1 [gates after layer1] -> ... -> layerN -> head``. Gates placed
``between_stages`` live in ``stage_attn["layerK"]`` (an ``nn.Sequential``), so their parameters
are named ``stage_attn.layerK.<i>.*``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from attnexp.models.blocks import ResidualBlock

if TYPE_CHECKING:
    from attnexp.models.placement import PlacedModule


def downsampled(size: int, stride: int) -> int:
    """Spatial size after a stride-``stride`` layer padded as ours (3x3 p1, 1x1, 7x7 p3,
    max-pool 3x3 p1 and option-A subsampling all give ceil(size / stride))."""
    return math.ceil(size / stride)


class GlobalAvgPool(nn.Module):
    """Mean over H and W, flattened to (B, C): deterministic on CUDA and safe for H != W."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class Backbone(nn.Module):
    """Base of every ResNet here. Subclasses build ``layer1..N`` and define
    :meth:`stem`, :meth:`head` and :meth:`stem_size`, then call :meth:`_finish`."""

    #: Name of the model in :func:`attnexp.models.build_model`.
    name: str = "backbone"
    #: Gate positions the backbone itself offers (the blocks list theirs in
    #: :attr:`ResidualBlock.POSITIONS`).
    STAGE_POSITIONS: tuple[str, ...] = ("between_stages",)

    def __init__(self) -> None:
        super().__init__()
        #: Records of the modules placed by :func:`attnexp.models.placement.apply_placements`.
        self.placed_modules: list[PlacedModule] = []
        self.num_stages = 0

    # -- structure -------------------------------------------------------------------------
    @property
    def stages(self) -> list[nn.Sequential]:
        """``[layer1, ..., layerN]``."""
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def blocks(self, stage: int) -> list[ResidualBlock]:
        """The blocks of stage ``stage`` (1-based)."""
        return list(self.stages[stage - 1])

    @property
    def stage_channels(self) -> list[int]:
        """Output channels of each stage."""
        return [stage[-1].out_channels for stage in self.stages]

    def stem_size(self, image_size: int) -> int:
        """Spatial size entering ``layer1`` for a square ``image_size`` input."""
        raise NotImplementedError

    def block_sizes(self, image_size: int) -> list[list[tuple[int, int]]]:
        """(input size, output size) of every block, per stage, for ``image_size`` inputs."""
        size = self.stem_size(image_size)
        sizes: list[list[tuple[int, int]]] = []
        for stage in self.stages:
            stage_sizes = []
            for block in stage:
                out = downsampled(size, block.stride)
                stage_sizes.append((size, out))
                size = out
            sizes.append(stage_sizes)
        return sizes

    def stage_sizes(self, image_size: int) -> list[int]:
        """Output size of each stage for ``image_size`` inputs."""
        return [stage[-1][1] for stage in self.block_sizes(image_size)]

    # -- forward ---------------------------------------------------------------------------
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages (with between-stage gates); the last feature map, unpooled."""
        x = self.stem(x)
        for i, stage in enumerate(self.stages, 1):
            x = stage(x)
            key = f"layer{i}"
            if key in self.stage_attn:
                x = self.stage_attn[key](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    # -- placement interface ---------------------------------------------------------------
    def add_stage_gate(self, stage: int, module: nn.Module) -> str:
        """Append ``module`` after stage ``stage`` (1-based); returns its qualified name."""
        key = f"layer{stage}"
        if key not in self.stage_attn:
            self.stage_attn[key] = nn.Sequential()
        seq = self.stage_attn[key]
        seq.append(module)
        return f"stage_attn.{key}.{len(seq) - 1}"

    # -- construction ----------------------------------------------------------------------
    def _finish(self, zero_init_residual: bool) -> None:
        """Count stages, add the (empty) between-stage container, initialise the weights.

        Convs: Kaiming normal (fan_out, ReLU); BN: weight 1, bias 0; Linear: PyTorch default
        (as torchvision). ``zero_init_residual`` zeroes the last BN of every residual branch,
        so each block starts as the identity (Goyal et al. 2017).
        """
        self.num_stages = sum(1 for n, _ in self.named_children() if n.startswith("layer"))
        self.stage_attn = nn.ModuleDict()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for stage in self.stages:
                for block in stage:
                    nn.init.zeros_(getattr(block, block.last_bn).weight)
