"""CIFAR ResNets (He et al. 2016, section 4.2; 2016b) and Wide ResNets (Zagoruyko &
Komodakis 2016). Three stages, 32x32 inputs, no max-pool.

* ``resnet20/32/44/56/110`` – post-activation basic blocks, 16/32/64 channels, n = (depth-2)/6
  blocks per stage::

      conv1 3x3 - bn1 - relu - layer1 (16) - layer2 (32, /2) - layer3 (64, /2) - avgpool - fc

  ``shortcut="A"`` (default, the paper's CIFAR choice): the two downsampling shortcuts
  subsample and zero-pad, parameter-free; ``"B"``: 1x1 conv + BN there.
* ``resnet164`` – pre-activation bottlenecks (He et al. 2016b, "Identity Mappings", the
  ResNet-164 of SENet's CIFAR tables), widths 16/32/64, outputs 64/128/256, n = 18; shortcut
  "B" (1x1 projection, on the pre-activated input) by default::

      conv1 3x3 - layer1 - layer2 (/2) - layer3 (/2) - bn - relu - avgpool - fc

* ``wrnD_K`` – WRN-D-K, pre-activation basic blocks of widths 16K/32K/64K, n = (D-4)/6,
  projection shortcuts where the width changes, ``dropout`` between the two convs (0.0).
  Same layout as resnet164.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnexp.errors import ConfigError
from attnexp.models.base import Backbone, GlobalAvgPool
from attnexp.models.blocks import BasicBlock, PreActBasicBlock, PreActBottleneck, conv3x3

SHORTCUTS: tuple[str, ...] = ("A", "B")


class CifarResNet(Backbone):
    """Post-activation CIFAR ResNet of basic blocks (He et al. 2016, section 4.2)."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.block_type = "basic"
        self.conv1 = conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        w_in = widths[0]
        for i, w_out in enumerate(widths, 1):
            blocks = [
                BasicBlock(
                    w_in if b == 0 else w_out, w_out, 2 if (b == 0 and i > 1) else 1, shortcut
                )
                for b in range(n)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            w_in = w_out
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(w_in, num_classes)
        self._finish(zero_init_residual)

    def stem_size(self, image_size: int) -> int:
        return image_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x))


class PreActResNet(Backbone):
    """Pre-activation CIFAR ResNet: ResNet-164 (``block="bottleneck"``) or WRN (``"basic"``).

    ``widths`` are the stage output channels; a bottleneck's inner width is a quarter of them.
    """

    def __init__(
        self,
        block: str,
        blocks_per_stage: int,
        widths: Sequence[int],
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "B",
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if zero_init_residual:
            raise ConfigError(
                "zero_init_residual zeroes the last BN of each residual branch, but "
                "pre-activation blocks (resnet164, WRN) end their branch with a conv; "
                "use zero_init_residual: false for these models"
            )
        self.block_type = f"preact_{block}"
        stem_width = 16
        self.conv1 = conv3x3(in_chans, stem_width)
        w_in = stem_width
        for i, w_out in enumerate(widths, 1):
            layer: list[nn.Module] = []
            for b in range(blocks_per_stage):
                stride = 2 if (b == 0 and i > 1) else 1
                if block == "bottleneck":
                    layer.append(
                        PreActBottleneck(w_in, w_out // 4, w_out, stride, shortcut=shortcut)
                    )
                else:
                    layer.append(
                        PreActBasicBlock(w_in, w_out, stride, dropout=dropout, shortcut=shortcut)
                    )
                w_in = w_out
            self.add_module(f"layer{i}", nn.Sequential(*layer))
        self.bn = nn.BatchNorm2d(w_in)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(w_in, num_classes)
        self._finish(zero_init_residual=False)

    def stem_size(self, image_size: int) -> int:
        return image_size

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.relu(self.bn(x))))


CIFAR_DEPTHS: dict[str, int] = {
    "resnet20": 20,
    "resnet32": 32,
    "resnet44": 44,
    "resnet56": 56,
    "resnet110": 110,
}
#: name -> (depth, widen factor)
WRN_ARCHS: dict[str, tuple[int, int]] = {"wrn16_8": (16, 8), "wrn28_10": (28, 10)}


def cifar_resnet(name: str, **options: object) -> CifarResNet:
    """resnet20 .. resnet110 (options: see :class:`CifarResNet`)."""
    model = CifarResNet(CIFAR_DEPTHS[name], **options)
    model.name = name
    return model


def resnet164(**options: object) -> PreActResNet:
    """Pre-activation bottleneck ResNet-164 (1.7M parameters in He et al. 2016b)."""
    model = PreActResNet("bottleneck", (164 - 2) // 9, (64, 128, 256), **options)
    model.name = "resnet164"
    return model


def wide_resnet(depth: int, widen: int, **options: object) -> PreActResNet:
    """WRN-depth-widen for CIFAR (depth = 6n + 4)."""
    if (depth - 4) % 6:
        raise ConfigError(f"WRN depth must be 6n+4, got {depth}")
    widths = (16 * widen, 32 * widen, 64 * widen)
    model = PreActResNet("basic", (depth - 4) // 6, widths, **options)
    model.name = f"wrn{depth}_{widen}"
    return model
