"""``none``: the identity gate, so "no attention" is one more row of every sweep."""

from __future__ import annotations

import torch

from attnexp.attention.base import AttentionModule
from attnexp.attention.registry import register


@register("none", kind="gate", paper="baseline (no attention)")
class NoAttention(AttentionModule):
    """Returns its input unchanged; has no parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
