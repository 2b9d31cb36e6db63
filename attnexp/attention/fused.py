"""Compiler-friendly formulations of the small layers inside attention gates.

A gate's arithmetic is tiny (a C x C/r MLP, a k=3 conv across channels, a C -> 1 1x1 conv),
but each of these layers is an external library call (GEMM / oneDNN conv) that
``torch.compile`` cannot fuse with the pooling before it and the sigmoid and multiply after
it, and oneDNN is slow on one output channel. Written as broadcast-multiply-reduce, the same
maths becomes ordinary loops that inductor fuses with their neighbours into a few kernels.

The modules keep their paper-like code and parameters (``nn.Linear``, ``nn.Conv1d``, ...)
and call these helpers, which pick the formulation:

* eagerly, the library layer (the reference, fastest without a compiler);
* while ``torch.compile`` traces (``torch.compiler.is_compiling()``), the fused formulation;
* ``with fused.mode("always")`` forces the fused formulation eagerly (tests compare it with
  the reference in float64, forward and gradients), ``mode("never")`` switches it off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

#: ``auto`` (fused while compiling), ``always`` or ``never``.
_MODE = "auto"
#: Largest in x out of a linear layer written as multiply-reduce (bigger ones stay GEMMs).
SMALL_LINEAR = 128 * 128
MODES = ("auto", "always", "never")


@contextmanager
def mode(value: str) -> Iterator[None]:
    """Temporarily select the formulation (``auto`` | ``always`` | ``never``)."""
    global _MODE
    if value not in MODES:
        raise ValueError(f"fused.mode must be one of {', '.join(MODES)}, got {value!r}")
    previous, _MODE = _MODE, value
    try:
        yield
    finally:
        _MODE = previous


def active() -> bool:
    """Whether the fused formulations are used right now."""
    if _MODE == "auto":
        return bool(torch.compiler.is_compiling())
    return _MODE == "always"


def linear(z: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(z)`` for z of shape (B, in); small layers as ``sum_i z_i W_oi + b_o``."""
    weight = layer.weight
    if not active() or weight.numel() > SMALL_LINEAR:
        return layer(z)
    out = (z.unsqueeze(-2) * weight).sum(-1)
    return out + layer.bias if layer.bias is not None else out


def channel_conv1d(z: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """ECA's conv across channels: ``conv(z[:, None])[:, 0]`` for z (B, C), one in/out
    channel, odd kernel k, zero padding (k-1)/2, as k shifted multiply-adds."""
    if not active():
        return conv(z.unsqueeze(1)).squeeze(1)
    k = conv.kernel_size[0]
    r = (k - 1) // 2
    padded = F.pad(z, (r, r))
    c = z.shape[1]
    weight = conv.weight.reshape(k)
    out = padded[:, 0:c] * weight[0]
    for j in range(1, k):
        out = out + padded[:, j : j + c] * weight[j]
    return out + conv.bias if conv.bias is not None else out


def conv1x1_to_one(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A C -> 1 1x1 conv (B, C, H, W) -> (B, 1, H, W) as a weighted sum over channels
    (contiguous in channels_last; oneDNN is slowest on exactly this shape)."""
    if not active():
        return conv(x)
    out = (x * conv.weight.reshape(1, -1, 1, 1)).sum(1, keepdim=True)
    return out + conv.bias.reshape(1, 1, 1, 1) if conv.bias is not None else out


def weighted_pool(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_hw x[b, c, h, w] * weights[b, h, w]`` -> (B, C) (GC's context pooling): a
    batched GEMV eagerly, a fused multiply-reduce compiled (no layout copy of x)."""
    b, c, h, w = x.shape
    if not active():
        return torch.einsum("bcn,bn->bc", x.flatten(2), weights.reshape(b, h * w))
    return (x * weights.reshape(b, 1, h, w)).sum((2, 3))


def shared_mlp_sum(mlp: nn.Module, *descriptors: torch.Tensor) -> torch.Tensor:
    """``sum_i mlp(d_i)`` (CBAM's channel gate over the avg- and max-pooled descriptors) in
    one pass: the descriptors are stacked along the batch, so each layer runs once."""
    if len(descriptors) == 1:
        return mlp(descriptors[0])
    first, *rest = mlp(torch.cat(descriptors, 0)).chunk(len(descriptors), 0)
    for part in rest:  # not sum(): it would add a zero tensor first (one more pass)
        first = first + part
    return first
