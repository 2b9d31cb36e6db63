"""Uniform exposure of attention maps, so visualisation needs no per-module code.

Every zoo module derives from :class:`AttentionModule`. Inside ``forward`` it calls
``self.expose(name, tensor)`` for each map it computes. Nothing is stored unless recording
was switched on with :func:`record_attention`, so training pays no memory for it.

Conventions for the exposed tensors (values after the gate's nonlinearity):

* ``channel``: (B, C) channel weights;
* ``spatial``: (B, 1, H, W) or (B, heads, H, W) spatial maps;
* ``branch``:  (B, K) or (B, K, C) weights over K branches/experts (sum to 1 over K for
  softmax-based modules);
* other names are allowed (``position``, ``context``, ...) and shown by shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class AttentionModule(nn.Module):
    """Base class of every zoo module: map recording plus the ``residual`` flag."""

    #: True when the module adds its own identity/residual path (stated in the registry too).
    has_residual: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.record_maps = False
        self.attention_maps: dict[str, torch.Tensor] = {}

    def expose(self, name: str, value: torch.Tensor) -> None:
        """Keep a detached copy of a map when recording is on."""
        if self.record_maps:
            self.attention_maps[name] = value.detach().float()


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, AttentionModule]]:
    """Switch map recording on for every zoo module in ``model``.

    Yields ``{qualified_name: module}``; after a forward pass each module's
    ``attention_maps`` holds its maps. Recording is switched off and maps are cleared on exit.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, AttentionModule)}
    for m in modules.values():
        m.record_maps = True
        m.attention_maps = {}
    try:
        yield modules
    finally:
        for m in modules.values():
            m.record_maps = False
            m.attention_maps = {}
