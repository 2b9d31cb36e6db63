"""ImageNet ResNets (He et al. 2016), ResNeXt (Xie et al. 2017) and Wide ResNet-50-2.

torchvision's architecture with torchvision's parameter names, so a torchvision state dict
loads unchanged (only attention parameters are then missing)::

    conv1 7x7/2 - bn1 - relu - maxpool 3x3/2 - layer1 .. layer4 - avgpool - fc

Stages have 64, 128, 256, 512 "planes"; a basic block outputs ``planes`` channels, a bottleneck
``4 * planes`` with an inner width of ``planes * width_per_group / 64 * groups``. Stages 2-4
halve the resolution in their first block: on the 3x3 conv (``stride_position="v1.5"``,
torchvision, the default) or on the first 1x1 conv (``"v1"``, the original ResNet used by the
SENet and CBAM tables; same parameters, fewer MACs). Basic blocks have their stride on the
first 3x3 conv either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attnexp.models.base import Backbone, GlobalAvgPool, downsampled
from attnexp.models.blocks import BasicBlock, Bottleneck

STRIDE_POSITIONS: tuple[str, ...] = ("v1.5", "v1")
PLANES: tuple[int, ...] = (64, 128, 256, 512)


class ResNet(Backbone):
    """ImageNet ResNet; ``block`` is ``"basic"`` or ``"bottleneck"``."""

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
        stride_position: str = "v1.5",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.block_type = block
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        w_in = 64
        for i, (planes, depth) in enumerate(zip(PLANES, layers), 1):
            stride = 1 if i == 1 else 2
            blocks: list[nn.Module] = []
            for b in range(depth):
                s = stride if b == 0 else 1
                if block == "basic":
                    blocks.append(BasicBlock(w_in, planes, s))
                    w_in = planes
                else:
                    width = int(planes * width_per_group / 64) * groups
                    stride_on = "conv1" if stride_position == "v1" else "conv2"
                    blocks.append(
                        Bottleneck(w_in, width, 4 * planes, s, groups=groups, stride_on=stride_on)
                    )
                    w_in = 4 * planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))

        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(w_in, num_classes)
        self._finish(zero_init_residual)

    def stem_size(self, image_size: int) -> int:
        return downsampled(downsampled(image_size, 2), 2)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x))


#: name -> (block, layers, groups, width_per_group), as torchvision.
IMAGENET_ARCHS: dict[str, tuple[str, tuple[int, ...], int, int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
}


def imagenet_resnet(name: str, **options: object) -> ResNet:
    """Build one of :data:`IMAGENET_ARCHS` (options: see :class:`ResNet`)."""
    block, layers, groups, width_per_group = IMAGENET_ARCHS[name]
    model = ResNet(block, layers, groups=groups, width_per_group=width_per_group, **options)
    model.name = name
    return model
