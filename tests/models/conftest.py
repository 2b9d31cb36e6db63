"""Helpers for the backbone/placement tests: temporary test-only zoo entries.

The zoo registry is global, so the ``test_zoo`` fixture registers test modules under
``_test_models_*`` names for the duration of one test and removes them afterwards (other
suites iterate over ``available()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from attnexp.attention import registry
from attnexp.attention.registry import register
from attnexp.errors import ConfigError
from attnexp.runtime import torch_threads


class Recorder(nn.Module):
    """Gate that records the shapes it sees; one parameter per channel (scale, init 1)."""

    def __init__(self, channels: int, tag: int = 0) -> None:
        super().__init__()
        self.channels, self.tag = channels, tag
        self.scale = nn.Parameter(torch.ones(channels))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x * self.scale.view(1, -1, 1, 1)


class MinSizeRecorder(Recorder):
    """Registered with ``min_size=16``."""


class StageRecorder(Recorder):
    """Registered as a ``stage`` module (default position between_stages)."""


class ZeroGate(nn.Module):
    """Gate that zeroes its input (to see which branch a position acts on)."""

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0


class SmallMapsOnly(nn.Module):
    """Gate that, like mhsa beyond max_size, rejects maps larger than ``max_size``."""

    def __init__(self, channels: int, max_size: int = 4) -> None:
        super().__init__()
        self.max_size = max_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.max_size:
            raise ConfigError(f"map {x.shape[-1]} larger than option max_size={self.max_size}")
        return x


class ShapeChanger(nn.Module):
    """A broken gate that halves the map."""

    def __init__(self, channels: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class SizedGate(nn.Module):
    """Gate with a ``feature_size`` option, filled in by the placement."""

    def __init__(self, channels: int, feature_size: int | None = None) -> None:
        super().__init__()
        self.feature_size = feature_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.feature_size, (x.shape, self.feature_size)
        return x


class PlainConv(nn.Module):
    """Conv-kind test module: a 3x3 conv (as the block's own)."""

    includes_norm_act = False

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NormActConv(PlainConv):
    """Conv-kind test module that applies its own BN + ReLU."""

    includes_norm_act = True

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


TEST_MODULES: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "_test_models_recorder": (Recorder, {}),
    "_test_models_zero": (ZeroGate, {}),
    "_test_models_small_maps": (SmallMapsOnly, {}),
    "_test_models_shape_changer": (ShapeChanger, {}),
    "_test_models_sized": (SizedGate, {}),
    "_test_models_min16": (MinSizeRecorder, {"min_size": 16}),
    "_test_models_stage": (StageRecorder, {"kind": "stage"}),
    "_test_models_conv": (PlainConv, {"kind": "conv"}),
    "_test_models_normact_conv": (NormActConv, {"kind": "conv"}),
}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """These tests run many tiny ops: one intra-op thread avoids OpenMP spin-waiting on the
    shared 2-core machines (several times faster there); restored after each test."""
    with torch_threads(1):
        yield


@pytest.fixture
def test_zoo() -> Iterator[Callable[[str], str]]:
    """Registers every test module for one test; yields ``short name -> registry name``."""
    names = list(TEST_MODULES)
    done: list[str] = []
    try:
        for name in names:
            cls, spec = TEST_MODULES[name]
            register(name, paper="test only", **spec)(cls)
            done.append(name)
        yield lambda short: f"_test_models_{short}"
    finally:
        for name in done:
            registry._REGISTRY.pop(name, None)
