"""Channel attention family: SE, ECA, SRM, GSoP, Gather-Excite.

Each module squeezes the spatial extent into a per-channel descriptor, turns it into a gate
and multiplies the input by it; none adds a residual of its own. Every constructor option
is a knob that the paper ablates, with the paper's default; where the paper and its
official code disagree the docstring says which one is followed.

Pooling uses ``x.mean((2, 3))`` / ``x.amax((2, 3))`` rather than adaptive pooling: it works
for any H != W and its CUDA backward is deterministic (adaptive pooling's is not).

Identity start (:func:`attnexp.attention.init_identity`): every module here is a
multiplicative gate ``x * g`` whose gate is not exactly 1 for every input, so all use the
exact learnable blend of :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention import fused
from attnexp.attention.base import AttentionModule
from attnexp.attention.options import (
    SafeBatchNorm1d,
    SafeBatchNorm2d,
    check_choice,
    check_int,
    check_odd,
    reduced,
)
from attnexp.attention.registry import register
from attnexp.errors import check

__all__ = [
    "ECA",
    "GSoP",
    "GatherExcite",
    "SRM",
    "SqueezeExcitation",
    "eca_kernel_size",
]


def _spatial_std(x: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Per-(sample, channel) standard deviation over H, W, safe for 1x1 maps and constants.

    The unbiased divisor (HW - 1) is clamped to 1 so a 1x1 map gives 0, not NaN; the
    variance is clamped at 1e-12 before the square root so a constant channel (e.g. all
    zero after a ReLU) gets a zero gradient instead of 0 * inf = NaN.
    """
    hw = x.shape[2] * x.shape[3]
    centred = x - x.mean((2, 3), keepdim=True)
    divisor = max(hw - 1, 1) if unbiased else hw
    var = centred.pow(2).sum((2, 3)) / divisor
    return var.clamp_min(1e-12).sqrt()


# --------------------------------------------------------------------------------------
# SE
# --------------------------------------------------------------------------------------
_SQUEEZE = ("avg", "max")
_EXCITATION = ("sigmoid", "tanh", "relu")


@register("se", kind="gate", paper="Hu et al. 2018, Squeeze-and-Excitation Networks")
class SqueezeExcitation(AttentionModule):
    """Squeeze-and-Excitation block (Hu et al. 2018, eq. 2-4, figure 1).

    ``s = act(W2 ReLU(W1 z + b1) + b2)``, ``z = squeeze(x)``, ``out = x * s``, with W1 of
    shape (C/r, C) and W2 of shape (C, C/r), both with bias: 2*C*(C/r) + C/r + C parameters
    (C=256, r=16: 8,464).

    Args:
        channels: C.
        reduction: r; hidden width ``max(C // r, 1)`` (SENet TPAMI table 10 sweeps 2..32).
        squeeze: ``avg`` (the paper) or ``max`` global pooling (TPAMI table 11).
        excitation: the gate nonlinearity, ``sigmoid`` (the paper), ``tanh`` or ``relu``
            (TPAMI table 12).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        squeeze: Literal["avg", "max"] = "avg",
        excitation: Literal["sigmoid", "tanh", "relu"] = "sigmoid",
    ) -> None:
        super().__init__()
        check_int("se", "reduction", reduction)
        self.squeeze = check_choice("se", "squeeze", squeeze, _SQUEEZE)
        self.excitation = check_choice("se", "excitation", excitation, _EXCITATION)
        hidden = reduced(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean((2, 3)) if self.squeeze == "avg" else x.amax((2, 3))
        s = self.excite(z)
        return x * s[:, :, None, None].to(x.dtype)

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """The (B, C) gate ``s`` from the squeezed descriptor ``z`` (B, C)."""
        logits = fused.linear(F.relu(fused.linear(z, self.fc1)), self.fc2)
        if self.excitation == "sigmoid":
            s = torch.sigmoid(logits)
        elif self.excitation == "tanh":
            s = torch.tanh(logits)
        else:
            s = F.relu(logits)
        self.expose("channel", s)
        return s

    def mean_pool_gate(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.excite if self.squeeze == "avg" else None


# --------------------------------------------------------------------------------------
# ECA
# --------------------------------------------------------------------------------------
def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive kernel (Wang et al. 2020, eq. 12): the odd number nearest to
    ``|log2(C)/gamma + b/gamma|``, rounded up: t = int(|log2 C / gamma + b / gamma|),
    k = t if t is odd else t + 1. C=256 -> 5, 512 -> 5, 1024 -> 5, 2048 -> 7."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


@register("eca", kind="gate", paper="Wang et al. 2020, ECA-Net: Efficient Channel Attention")
class ECA(AttentionModule):
    """Efficient Channel Attention (Wang et al. 2020, eq. 11-12, figure 2).

    ``out = x * sigmoid(conv1d_k(GAP(x)))``: a 1-D convolution without bias of size k
    across the channel axis (zero padded, (k-1)/2 each side), shared by all channels, so the
    module has exactly k parameters.

    Which C feeds the adaptive rule is the channel count at the placement position (the
    block's output width for ``after_conv3``). The released ResNet-50 checkpoint instead
    uses k = 3, 5, 5, 7 for stages 1-4; express that with the placement's
    ``stage_options: {kernel_size: [3, 5, 5, 7]}``.

    Args:
        channels: C.
        kernel_size: ``"adaptive"`` (eq. 12, the paper's default) or an explicit odd int
            (figure 4 sweeps 3..9). Even sizes are refused.
        gamma, b: the constants of the adaptive rule (paper: 2 and 1).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | Literal["adaptive"] = "adaptive",
        gamma: int = 2,
        b: int = 1,
    ) -> None:
        super().__init__()
        check_int("eca", "gamma", gamma)
        check_int("eca", "b", b, low=0)
        if isinstance(kernel_size, str):
            check_choice("eca", "kernel_size", kernel_size, ("adaptive",))
            k = eca_kernel_size(channels, gamma, b)
        else:
            k = check_odd("eca", "kernel_size", kernel_size)
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.excite(x.mean((2, 3)))
        return x * s[:, :, None, None].to(x.dtype)

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        """The (B, C) gate from the average-pooled input ``z`` (B, C)."""
        s = torch.sigmoid(fused.channel_conv1d(z, self.conv))
        self.expose("channel", s)
        return s

    def mean_pool_gate(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.excite

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


# --------------------------------------------------------------------------------------
# SRM
# --------------------------------------------------------------------------------------
@register(
    "srm",
    kind="gate",
    paper="Lee et al. 2019, SRM: A Style-based Recalibration Module for CNNs",
)
class SRM(AttentionModule):
    """Style-based Recalibration Module (Lee et al. 2019, eq. 1-5, figure 2).

    Style pooling ``t = [mean, std]`` per channel (eq. 1-2), channel-wise fully connected
    integration ``z_c = w_c . t_c`` (eq. 3; a Conv1d with groups=C, kernel 2, no bias: 2C
    weights), BatchNorm (eq. 4) and a sigmoid gate (eq. 5): 4C parameters (C=256: 1,024).

    Paper vs official code: the std is the paper's population std (1/HW, eq. 2); the
    official code uses the unbiased one (1/(HW-1)), which is the same up to a constant per
    resolution that the learned weight absorbs, and which is NaN on 1x1 maps. The CFC
    weights start at zero as in the official code (the gate starts at sigmoid(0) = 0.5).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cfc = nn.Conv1d(channels, channels, kernel_size=2, groups=channels, bias=False)
        nn.init.zeros_(self.cfc.weight)
        self.bn = SafeBatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.stack((x.mean((2, 3)), _spatial_std(x, unbiased=False)), dim=2)  # (B, C, 2)
        z = self.bn(self.cfc(t))  # (B, C, 1)
        g = torch.sigmoid(z.squeeze(2))
        self.expose("channel", g)
        return x * g[:, :, None, None].to(x.dtype)


# --------------------------------------------------------------------------------------
# GSoP
# --------------------------------------------------------------------------------------
@register(
    "gsop",
    kind="gate",
    paper="Gao et al. 2019, Global Second-order Pooling Convolutional Networks",
)
class GSoP(AttentionModule):
    """GSoP block, channel attention (Gao et al. 2019, section 3.2, figure 2: GSoP-Net1).

    Sequence (official code, ``chan_att``): ReLU -> 1x1 conv C->d (bias, stride
    ``reduce_stride``) -> BN -> ReLU -> covariance pooling (centred, per-sample d x d,
    divided by HW) -> BN over the d rows -> row-wise conv (a grouped conv with d groups,
    kernel (d, 1), bias, giving 4d outputs) -> 1x1 conv 4d->C (bias) -> sigmoid;
    ``out = x * gate``. C=256, d=128: 230,784 parameters.

    The leading ReLU and the BN on the covariance rows are in the official code, not in the
    paper's figure. The official code uses stride 2 in the reduction conv of the first
    stage (planes <= 64) only to save memory; that is ``reduce_stride=2`` here, default 1.

    Args:
        channels: C.
        reduced_dim: d, the reduced width before covariance pooling (paper: 128); capped
            at C.
        reduce_stride: stride of the reduction conv (1 or 2).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
    """

    def __init__(self, channels: int, reduced_dim: int = 128, reduce_stride: int = 1) -> None:
        super().__init__()
        check_int("gsop", "reduced_dim", reduced_dim)
        check_int("gsop", "reduce_stride", reduce_stride)
        d = min(reduced_dim, channels)
        self.dim = d
        self.reduce = nn.Conv2d(channels, d, 1, stride=reduce_stride, bias=True)
        self.reduce_bn = SafeBatchNorm2d(d)
        self.row_bn = SafeBatchNorm2d(d)
        self.row_conv = nn.Conv2d(d, 4 * d, kernel_size=(d, 1), groups=d, bias=True)
        self.expand = nn.Conv2d(4 * d, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.reduce_bn(self.reduce(F.relu(x))))
        feats = y.flatten(2)  # (B, d, M)
        centred = feats - feats.mean(2, keepdim=True)
        cov = centred @ centred.transpose(1, 2) / feats.shape[2]  # (B, d, d)
        z = self.row_conv(self.row_bn(cov.unsqueeze(3)))  # (B, 4d, 1, 1)
        g = torch.sigmoid(self.expand(z)).flatten(1)  # (B, C)
        self.expose("channel", g)
        return x * g[:, :, None, None].to(x.dtype)


# --------------------------------------------------------------------------------------
# Gather-Excite
# --------------------------------------------------------------------------------------
_GATHER = ("pool", "conv")
_EXCITE = ("none", "mlp")


@register(
    "ge",
    kind="gate",
    paper="Hu et al. 2018, Gather-Excite: Exploiting Feature Context in CNNs",
)
class GatherExcite(AttentionModule):
    """Gather-Excite (Hu et al. 2018, NeurIPS; eq. 1-2, section 3, table 1-3).

    ``out = x * sigmoid(interp(excite(gather(x))))``. The gather aggregates each channel
    over windows of ``extent`` x ``extent`` (stride ``extent``, the last window clipped, so
    the gathered map is ceil(H/e) x ceil(W/e) for any H, W), or over the whole map for
    ``extent="global"``; the result is copied back to every position of its window
    (nearest upsampling that keeps each position with the window it was gathered from).

    The paper's variants: GE-theta-minus = ``gather="pool", excite="none"`` (no
    parameters); GE-theta = ``gather="conv"``; GE-theta-plus = ``gather="conv",
    excite="mlp"``.

    * ``pool`` gather: average pooling (parameter-free).
    * ``conv`` gather: log2(e) depthwise 3x3 convs with stride 2 (padding 1), each followed
      by BN, with ReLU between them; for the global extent one depthwise conv whose kernel
      covers the whole map + BN (official code), which needs the map size:
      ``feature_size``.
    * ``mlp`` excite: 1x1 conv C->C/r (bias) + ReLU + 1x1 conv C/r->C (bias), as SE.

    Args:
        channels: C.
        extent: an int e >= 1 (paper: 2, 4, 8; a power of two for the conv gather) or
            ``"global"`` (the paper's best, default).
        gather: ``pool`` or ``conv``.
        excite: ``none`` or ``mlp``.
        reduction: r of the ``mlp`` excite (paper: 16).
        feature_size: spatial size S of the input (S x S), needed only for
            ``gather="conv", extent="global"`` (per stage via the placement's
            ``stage_options``, e.g. [56, 28, 14, 7] on an ImageNet ResNet-50).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
    """

    def __init__(
        self,
        channels: int,
        extent: int | Literal["global"] = "global",
        gather: Literal["pool", "conv"] = "pool",
        excite: Literal["none", "mlp"] = "none",
        reduction: int = 16,
        feature_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(extent, str):
            check_choice("ge", "extent", extent, ("global",))
        else:
            check_int("ge", "extent", extent)
        self.extent = extent
        self.gather_kind = check_choice("ge", "gather", gather, _GATHER)
        self.excite_kind = check_choice("ge", "excite", excite, _EXCITE)
        check_int("ge", "reduction", reduction)
        self.feature_size = feature_size
        self.gather: nn.Module | None = None
        if gather == "conv":
            if extent == "global":
                check(
                    feature_size is not None,
                    "ge: gather='conv' with extent='global' is a depthwise conv over the "
                    "whole map, so option 'feature_size' (the input's H = W) must be set; "
                    "or use extent 2, 4, 8, or gather='pool'",
                )
                s = check_int("ge", "feature_size", feature_size)
                self.gather = nn.Sequential(
                    nn.Conv2d(channels, channels, s, groups=channels, bias=False),
                    SafeBatchNorm2d(channels),
                )
            else:
                assert isinstance(extent, int)
                check(
                    extent >= 2 and extent & (extent - 1) == 0,
                    f"ge: option 'extent' must be a power of two >= 2 (2, 4, 8, ...) or "
                    f"'global' with gather='conv', got {extent!r}",
                )
                layers: list[nn.Module] = []
                steps = int(math.log2(extent))
                for i in range(steps):
                    layers.append(
                        nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False)
                    )
                    layers.append(SafeBatchNorm2d(channels))
                    if i < steps - 1:
                        layers.append(nn.ReLU())
                self.gather = nn.Sequential(*layers)
        self.mlp: nn.Module | None = None
        if excite == "mlp":
            hidden = reduced(channels, reduction)
            self.mlp = nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
            )

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if self.gather is not None:
            if self.extent == "global":
                s = self.feature_size
                check(
                    (h, w) == (s, s),
                    f"ge: built with feature_size={s} for the global conv gather but got a "
                    f"{h}x{w} map; set feature_size to the map size at this placement",
                )
            return self.gather(x)
        if self.extent == "global":
            return x.mean((2, 3), keepdim=True)
        e = int(self.extent)
        # kernel = stride = e, last window clipped (avg over the in-bounds part only)
        return F.avg_pool2d(x, e, e, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        g = self._gather(x)
        if self.mlp is not None:
            g = self.mlp(g)
        g = torch.sigmoid(g)
        if self.extent == "global":
            self.expose("channel", g.flatten(1))
            return x * g.to(x.dtype)
        e = int(self.extent)
        b, c, gh, gw = g.shape
        # each gathered cell back onto its e x e window (expand/reshape: deterministic)
        up = g[:, :, :, None, :, None].expand(b, c, gh, e, gw, e).reshape(b, c, gh * e, gw * e)
        up = up[:, :, :h, :w]
        self.expose("excite", g)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("spatial", up.mean(1, keepdim=True))
        return x * up.to(x.dtype)
