"""The tail of a post-activation residual block as one compiler-friendly formulation.

``relu(gate(BN(x)) + identity)``, where ``gate`` is a channel gate computed from the
average-pooled BN output (SE with average squeeze, ECA), costs the compiler extra passes over
the activations when written module by module: BN's normalised output is written out, read
again for the pooling, and read once more for the gate multiply. Because BN is an affine map
per channel, all of it folds into two passes forward and two backward, the same number as
the plain ``relu(BN(x) + identity)``:

* BN's batch statistics come from per-(sample, channel) sums of ``x`` and ``x**2``; the
  same sums give the pooled BN output exactly: ``mean_hw(BN(x)) = a * mean_hw(x) + b``
  with ``a = gamma / sqrt(var + eps)`` and ``b = beta - mean * a``;
* the gate ``s`` (N x C) is tiny; the output is ``relu(x * (a s) + b s + identity)`` in one
  pass;
* autograd of these expressions needs, backward, per-(sample, channel) sums of the masked
  output gradient and of its product with ``x`` (one pass) and one pass for the input
  gradient: the reductions BN's own backward needs anyway.

The sums are taken around the running mean (a constant shift, so the statistics are exact
and the cancellation of ``E[x^2] - E[x]^2`` stays small). Running statistics are updated as
``nn.BatchNorm2d`` does (momentum or cumulative average, unbiased variance). This is an
implementation detail behind the modules, used while ``torch.compile`` traces (see
:mod:`attnexp.attention.fused`); tests compare it with the module-by-module reference in
float64, outputs, gradients and running statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Gate = Callable[[torch.Tensor], torch.Tensor]
#: Fold the tail of blocks without a gate too (BN + add + ReLU); set from measurements.
FOLD_PLAIN_TAIL = False


def fusable_norm(module: nn.Module) -> bool:
    """Exactly ``nn.BatchNorm2d`` (not SyncBatchNorm: its statistics are all-reduced)."""
    return type(module) is nn.BatchNorm2d


def _statistics(
    x: torch.Tensor, bn: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased var, per-(sample, channel) spatial mean of x), batch statistics, with
    the running statistics updated in place as ``nn.BatchNorm2d.forward`` does."""
    n, c, h, w = x.shape
    count = n * h * w
    if count <= 1:  # as F.batch_norm: no variance from a single value
        raise ValueError(f"Expected more than 1 value per channel when training, got {x.shape}")
    tracked = bn.running_mean is not None
    shift = bn.running_mean.detach().clone() if tracked else x.new_zeros(c)
    centred = x - shift.view(1, c, 1, 1)
    s1 = centred.sum((2, 3))  # (N, C)
    s2 = (centred * centred).sum((2, 3))
    m = s1.sum(0) / count
    var = (s2.sum(0) / count - m * m).clamp_min(0.0)
    mean = shift + m
    if bn.training and tracked:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum: float | torch.Tensor = bn.momentum  # type: ignore[assignment]
            if bn.momentum is None:  # a cumulative average (a tensor: no graph break)
                momentum = (1.0 / bn.num_batches_tracked).to(mean.dtype)
            unbiased = var * (count / (count - 1))
            bn.running_mean.lerp_(mean.detach(), momentum)
            bn.running_var.lerp_(unbiased.detach(), momentum)
    return mean, var, shift + s1 / (h * w)


def bn_gate_add_relu(
    x: torch.Tensor,
    bn: nn.BatchNorm2d,
    identity: torch.Tensor | None,
    gate: Gate | None = None,
) -> torch.Tensor:
    """``relu(gate(bn(x)) + identity)`` (``gate(y) = y * s(mean_hw(y))``, ``s`` returning
    an (N, C) gate); ``identity=None`` leaves the add out, ``gate=None`` the gate."""
    c = x.shape[1]
    wide = (torch.float32, torch.float64)
    xf = x if x.dtype in wide else x.float()  # statistics in at least float32
    if bn.training or bn.running_mean is None:
        mean, var, pooled_x = _statistics(xf, bn)
    else:
        mean, var = bn.running_mean, bn.running_var
        pooled_x = xf.mean((2, 3)) if gate is not None else None
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -mean * a if bn.bias is None else bn.bias - mean * a
    if gate is None:
        scale, offset = a.view(1, c, 1, 1), b.view(1, c, 1, 1)
    else:
        s = gate(pooled_x * a + b).to(xf.dtype)  # the gate of the pooled BN output, (N, C)
        scale, offset = (a * s)[:, :, None, None], (b * s)[:, :, None, None]
    out = xf * scale + offset
    if identity is not None:
        out = out + identity.to(xf.dtype)
    return F.relu(out).to(x.dtype)
