"""Hybrid (channel + spatial) attention family.

CBAM (and its two gates alone), BAM, Coordinate Attention, Triplet Attention, SimAM,
Spatial Group-wise Enhance, Shuffle Attention, Polarized Self-Attention and A^2 double
attention. Every constructor option is a knob of the paper with the paper's default; where
the paper and the official code disagree, the docstring says which one is followed and the
other is an option where it matters for a table (PITFALLS.md).

Only A^2 adds its own residual (``has_residual``); CBAM has none (one public collection
adds ``out + x``, which doubles the block's residual), and BAM's ``1 +`` is a multiplicative
identity, not an additive residual (see :class:`BAM`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.channel import (
    SafeBatchNorm1d,
    SafeBatchNorm2d,
    check_choice,
    check_flag,
    check_int,
    check_odd,
    reduced,
)
from attnexp.attention.registry import register
from attnexp.errors import ConfigError, check

__all__ = [
    "BAM",
    "CBAM",
    "CBAMChannel",
    "CBAMSpatial",
    "CoordinateAttention",
    "DoubleAttention",
    "PolarizedSelfAttention",
    "ShuffleAttention",
    "SimAM",
    "SpatialGroupEnhance",
    "TripletAttention",
]

#: BN momentum of the official CBAM / Triplet ``BasicConv`` (PyTorch convention: 0.01 is a
#: slow running average), kept so running statistics match the released models.
_OFFICIAL_GATE_BN_MOMENTUM = 0.01


# --------------------------------------------------------------------------------------
# CBAM
# --------------------------------------------------------------------------------------
_CHANNEL_POOL = ("avg", "max", "avg_max")
_SPATIAL_POOL = ("avg", "max", "avg_max", "conv1x1")
_ORDER = ("channel_first", "spatial_first", "parallel")


class _CBAMChannelGate(nn.Module):
    """CBAM eq. 2: ``Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))``, one shared MLP
    (Linear C->C/r, ReLU, Linear C/r->C, both with bias, as the official code)."""

    def __init__(self, channels: int, reduction: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        hidden = reduced(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def _mlp(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> gate (B, C) in (0, 1)."""
        if self.pool == "avg":
            logits = self._mlp(x.mean((2, 3)))
        elif self.pool == "max":
            logits = self._mlp(x.amax((2, 3)))
        else:
            logits = self._mlp(x.mean((2, 3))) + self._mlp(x.amax((2, 3)))
        return torch.sigmoid(logits)


class _CBAMSpatialGate(nn.Module):
    """CBAM eq. 3: ``Ms = sigmoid(f_kxk([AvgPool_c(F); MaxPool_c(F)]))``.

    The k x k conv has no bias and is followed by BN(1) (official code; BN momentum 0.01
    as there). Channel order of the pooled maps is the paper's [avg; max] (the official
    code stacks [max; mean]: swap the two input channels of ``conv.weight`` to load its
    checkpoints). ``conv1x1`` (CBAM table 2) compresses the channels with a learned 1x1
    conv C->1 without bias instead of pooling.
    """

    def __init__(self, channels: int, pool: str, kernel_size: int, zero_init_bn: bool) -> None:
        super().__init__()
        self.pool = pool
        self.compress = nn.Conv2d(channels, 1, 1, bias=False) if pool == "conv1x1" else None
        in_ch = 2 if pool == "avg_max" else 1
        self.conv = nn.Conv2d(in_ch, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SafeBatchNorm2d(1, momentum=_OFFICIAL_GATE_BN_MOMENTUM)
        if zero_init_bn:
            nn.init.zeros_(self.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> gate (B, 1, H, W) in (0, 1)."""
        if self.pool == "avg":
            pooled = x.mean(1, keepdim=True)
        elif self.pool == "max":
            pooled = x.amax(1, keepdim=True)
        elif self.pool == "avg_max":
            pooled = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), dim=1)
        else:
            assert self.compress is not None
            pooled = self.compress(x)
        return torch.sigmoid(self.bn(self.conv(pooled)))


def _check_cbam_channel(reduction: object, channel_pool: object) -> None:
    check_int("cbam", "reduction", reduction)
    check_choice("cbam", "channel_pool", channel_pool, _CHANNEL_POOL)


def _check_cbam_spatial(spatial_pool: object, kernel_size: object, zero_init: object) -> None:
    check_choice("cbam", "spatial_pool", spatial_pool, _SPATIAL_POOL)
    check_odd("cbam", "kernel_size", kernel_size)
    check_flag("cbam", "zero_init_spatial_bn", zero_init)


@register("cbam", kind="gate", paper="Woo et al. 2018, CBAM: Convolutional Block Attention Module")
class CBAM(AttentionModule):
    """Convolutional Block Attention Module (Woo et al. 2018, eq. 1-3, figures 1-3).

    ``F' = Mc(F) * F``, ``F'' = Ms(F') * F'`` (eq. 1, ``order="channel_first"``), with the
    channel gate of eq. 2 (shared MLP over avg- and max-pooled descriptors, summed, then a
    sigmoid) and the spatial gate of eq. 3 ([avg; max] over channels -> 7x7 conv without
    bias -> BN -> sigmoid, the BN from the official code). No residual of its own.
    Parameters: SE's MLP (2*C*(C/r) + C/r + C) + 2*k*k + 2 (C=256, r=16, k=7: 8,564).

    Arrangement (table 3): ``channel_first`` (the paper's choice), ``spatial_first``
    (``F' = Ms(F) * F``, ``F'' = Mc(F') * F'``), or ``parallel``: both gates are computed
    from the same input F and applied together, ``F'' = F * Mc(F) * Ms(F)``. The paper does
    not spell out the parallel combination; the product keeps each gate's role and range
    ((0, 1), as in the sequential variants) and differs from ``channel_first`` only in
    that Ms sees F instead of F', which is exactly the comparison the table makes.

    Args:
        channels: C.
        reduction: r of the channel MLP (paper: 16); hidden ``max(C // r, 1)``.
        channel_pool: ``avg`` (= SE), ``max`` or ``avg_max`` (table 1; default).
        spatial_pool: ``avg``, ``max``, ``avg_max`` (default) or ``conv1x1`` (table 2).
        kernel_size: k of the spatial conv, odd (paper: 7; table 2 also has 3).
        order: ``channel_first`` (default), ``spatial_first`` or ``parallel`` (table 3).
        use_channel, use_spatial: switch either gate off (tables 1 and 2; at least one on).
        zero_init_spatial_bn: start the spatial BN's scale at 0, i.e. the spatial gate at a
            constant 0.5, as the official ResNet code does (not in the paper). Default
            False (the paper).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        channel_pool: Literal["avg", "max", "avg_max"] = "avg_max",
        spatial_pool: Literal["avg", "max", "avg_max", "conv1x1"] = "avg_max",
        kernel_size: int = 7,
        order: Literal["channel_first", "spatial_first", "parallel"] = "channel_first",
        use_channel: bool = True,
        use_spatial: bool = True,
        zero_init_spatial_bn: bool = False,
    ) -> None:
        super().__init__()
        _check_cbam_channel(reduction, channel_pool)
        _check_cbam_spatial(spatial_pool, kernel_size, zero_init_spatial_bn)
        self.order = check_choice("cbam", "order", order, _ORDER)
        check_flag("cbam", "use_channel", use_channel)
        check_flag("cbam", "use_spatial", use_spatial)
        check(
            use_channel or use_spatial,
            "cbam: options 'use_channel' and 'use_spatial' are both false; switch at least "
            "one on (or use attention 'none')",
        )
        self.channel_gate = (
            _CBAMChannelGate(channels, reduction, channel_pool) if use_channel else None
        )
        self.spatial_gate = (
            _CBAMSpatialGate(channels, spatial_pool, kernel_size, zero_init_spatial_bn)
            if use_spatial
            else None
        )

    def _channel(self, x: torch.Tensor) -> torch.Tensor:
        assert self.channel_gate is not None
        mc = self.channel_gate(x)
        self.expose("channel", mc)
        return mc[:, :, None, None].to(x.dtype)

    def _spatial(self, x: torch.Tensor) -> torch.Tensor:
        assert self.spatial_gate is not None
        ms = self.spatial_gate(x)
        self.expose("spatial", ms)
        return ms.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_gate is None:
            return x * self._spatial(x)
        if self.spatial_gate is None:
            return x * self._channel(x)
        if self.order == "channel_first":
            y = x * self._channel(x)
            return y * self._spatial(y)
        if self.order == "spatial_first":
            y = x * self._spatial(x)
            return y * self._channel(y)
        return x * self._channel(x) * self._spatial(x)


@register(
    "cbam_channel",
    kind="gate",
    paper="Woo et al. 2018, CBAM: Convolutional Block Attention Module (channel gate)",
)
class CBAMChannel(AttentionModule):
    """CBAM's channel gate alone (eq. 2; table 1: ``avg`` = SE, ``max``, ``avg_max``).

    Same layers and parameter names as ``cbam``'s ``channel_gate``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        channel_pool: Literal["avg", "max", "avg_max"] = "avg_max",
    ) -> None:
        super().__init__()
        _check_cbam_channel(reduction, channel_pool)
        self.channel_gate = _CBAMChannelGate(channels, reduction, channel_pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = self.channel_gate(x)
        self.expose("channel", mc)
        return x * mc[:, :, None, None].to(x.dtype)


@register(
    "cbam_spatial",
    kind="gate",
    paper="Woo et al. 2018, CBAM: Convolutional Block Attention Module (spatial gate)",
)
class CBAMSpatial(AttentionModule):
    """CBAM's spatial gate alone (eq. 3; table 2's pooling and kernel variants).

    Same layers and parameter names as ``cbam``'s ``spatial_gate``; 2*k*k + 2 parameters
    with ``avg_max`` (k=7: 100).
    """

    def __init__(
        self,
        channels: int,
        spatial_pool: Literal["avg", "max", "avg_max", "conv1x1"] = "avg_max",
        kernel_size: int = 7,
        zero_init_spatial_bn: bool = False,
    ) -> None:
        super().__init__()
        _check_cbam_spatial(spatial_pool, kernel_size, zero_init_spatial_bn)
        self.spatial_gate = _CBAMSpatialGate(
            channels, spatial_pool, kernel_size, zero_init_spatial_bn
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = self.spatial_gate(x)
        self.expose("spatial", ms)
        return x * ms.to(x.dtype)


# --------------------------------------------------------------------------------------
# BAM
# --------------------------------------------------------------------------------------
_COMBINE = ("sum", "product")


@register(
    "bam",
    kind="stage",
    paper="Park et al. 2018, BAM: Bottleneck Attention Module",
    default_position="between_stages",
)
class BAM(AttentionModule):
    """Bottleneck Attention Module (Park et al. 2018, eq. 1-4, figure 2).

    ``F' = F + F * M(F) = F * (1 + M(F))``, ``M(F) = sigmoid(Mc(F) + Ms(F))`` (eq. 1-2),
    with Mc and Ms broadcast to C x H x W before the sum. Layers (official code):

    * channel gate Mc (eq. 3): GAP -> Linear(C, C/r) -> BN1d -> ReLU -> Linear(C/r, C);
    * spatial gate Ms (eq. 4): 1x1 conv C->C/r (bias) -> BN -> ReLU -> 2 x [3x3 conv
      C/r->C/r, dilation d, padding d (bias) -> BN -> ReLU] -> 1x1 conv C/r->1 (bias).

    Parameters 2*C*c + 3c + C + C*c + 18c^2 + 10c + 1 with c = C/r (C=256: 17,361).

    The ``1 +`` is part of the module (the paper's eq. 1), so the module keeps the input
    when the attention saturates at 0; it is a multiplicative identity, not an additive
    residual around the block, hence ``has_residual`` is False.

    ``combine``: ``sum`` = the paper, ``sigmoid(Mc + Ms)``; ``product`` = the official code
    and its released weights, ``sigmoid(Mc * Ms)`` (PITFALLS.md). With one branch switched
    off the other branch's map is used alone, ``F * (1 + sigmoid(M))``, for both rules.

    BatchNorm1d on the pooled (B, C/r) vector fails in training for a batch of one; the BNs
    here fall back to their running statistics for that input (see ``SafeBatchNorm1d``).

    Args:
        channels: C.
        reduction: r, for both branches (paper: 16).
        dilation: d of the two 3x3 convs (paper: 4); padding = d keeps the map size.
        combine: ``sum`` (default, the paper) or ``product`` (the official code).
        use_channel, use_spatial: channel-only / spatial-only ablations (paper table 1).
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        dilation: int = 4,
        combine: Literal["sum", "product"] = "sum",
        use_channel: bool = True,
        use_spatial: bool = True,
    ) -> None:
        super().__init__()
        check_int("bam", "reduction", reduction)
        check_int("bam", "dilation", dilation)
        self.combine = check_choice("bam", "combine", combine, _COMBINE)
        check_flag("bam", "use_channel", use_channel)
        check_flag("bam", "use_spatial", use_spatial)
        check(
            use_channel or use_spatial,
            "bam: options 'use_channel' and 'use_spatial' are both false; switch at least "
            "one on (or use attention 'none')",
        )
        c = reduced(channels, reduction)
        self.channel_gate: nn.Module | None = None
        self.spatial_gate: nn.Module | None = None
        if use_channel:
            self.channel_gate = nn.Sequential(
                nn.Linear(channels, c), SafeBatchNorm1d(c), nn.ReLU(), nn.Linear(c, channels)
            )
        if use_spatial:
            layers: list[nn.Module] = [
                nn.Conv2d(channels, c, 1),
                SafeBatchNorm2d(c),
                nn.ReLU(),
            ]
            for _ in range(2):
                layers += [
                    nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation),
                    SafeBatchNorm2d(c),
                    nn.ReLU(),
                ]
            layers.append(nn.Conv2d(c, 1, 1))
            self.spatial_gate = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc = ms = None
        if self.channel_gate is not None:
            mc = self.channel_gate(x.mean((2, 3)))  # (B, C)
            self.expose("channel", torch.sigmoid(mc))
            mc = mc[:, :, None, None]
        if self.spatial_gate is not None:
            ms = self.spatial_gate(x)  # (B, 1, H, W)
            self.expose("spatial", torch.sigmoid(ms))
        if mc is None:
            logits = ms
        elif ms is None:
            logits = mc
        else:
            logits = mc + ms if self.combine == "sum" else mc * ms
        assert logits is not None
        return x * (1 + torch.sigmoid(logits)).to(x.dtype)


# --------------------------------------------------------------------------------------
# Coordinate attention
# --------------------------------------------------------------------------------------
@register(
    "coord",
    kind="gate",
    paper="Hou et al. 2021, Coordinate Attention for Efficient Mobile Network Design",
)
class CoordinateAttention(AttentionModule):
    """Coordinate Attention (Hou et al. 2021, eq. 4-9, figure 2c).

    Pool along W and along H separately (eq. 4-5) -> concatenate the two strips -> shared
    1x1 conv C->mid (bias) -> BN -> h-swish (eq. 7; h-swish from the official code) ->
    split -> 1x1 conv mid->C (bias) per direction -> sigmoid (eq. 8);
    ``out = x * g_h * g_w`` (eq. 9). ``mid = max(8, C // reduction)`` as in the official
    code. Works for any H != W. Parameters 3*C*mid + 3*mid + 2*C (C=256: 6,680).

    Args:
        channels: C.
        reduction: r (paper: 32).
    """

    def __init__(self, channels: int, reduction: int = 32) -> None:
        super().__init__()
        check_int("coord", "reduction", reduction)
        mid = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)  # over H + W >= 2 positions: never one value
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        pooled_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        pooled_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = F.hardswish(self.bn1(self.conv1(torch.cat((pooled_h, pooled_w), dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        g_h = torch.sigmoid(self.conv_h(y_h))  # (B, C, H, 1)
        g_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))  # (B, C, 1, W)
        self.expose("height", g_h)
        self.expose("width", g_w)
        if self.record_maps:
            self.expose("spatial", (g_h * g_w).mean(1, keepdim=True))
        return x * g_h.to(x.dtype) * g_w.to(x.dtype)


# --------------------------------------------------------------------------------------
# Triplet attention
# --------------------------------------------------------------------------------------
class _ZPoolGate(nn.Module):
    """One triplet branch: Z-pool ([max; mean] over the pooled axis) -> k x k conv 2->1
    without bias -> BN (momentum 0.01, official code) -> sigmoid."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = SafeBatchNorm2d(1, momentum=_OFFICIAL_GATE_BN_MOMENTUM)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Pool ``t`` (B, P, A1, A2) over P; (A1, A2) is the conv plane -> (B, 1, A1, A2)."""
        z = torch.cat((t.amax(1, keepdim=True), t.mean(1, keepdim=True)), dim=1)
        return torch.sigmoid(self.bn(self.conv(z)))


@register(
    "triplet",
    kind="gate",
    paper="Misra et al. 2021, Rotate to Attend: Convolutional Triplet Attention Module",
)
class TripletAttention(AttentionModule):
    """Triplet Attention (Misra et al. 2021, eq. 1-2, figure 3).

    Three branches, each Z-pool ([max; mean], paper's order) over one axis followed by a
    k x k conv + BN + sigmoid on the plane of the other two: (C, W) with H pooled, (H, C)
    with W pooled (the paper's rotated branches) and (H, W) with C pooled (the spatial
    branch). ``out = (x*s_cw + x*s_hc + x*s_hw) / 3``; with ``no_spatial`` the spatial
    branch is dropped and the two others are averaged. Parameters 3*(2*k*k + 2) (k=7:
    300), independent of C. Conv orientation matches the official code's permutations.

    Args:
        channels: C (unused by the layers; kept for the registry's signature).
        kernel_size: k, odd (paper: 7).
        no_spatial: drop the (H, W) branch (paper's ablation).
    """

    def __init__(self, channels: int, kernel_size: int = 7, no_spatial: bool = False) -> None:
        super().__init__()
        check_odd("triplet", "kernel_size", kernel_size)
        self.no_spatial = check_flag("triplet", "no_spatial", no_spatial)
        self.cw = _ZPoolGate(kernel_size)  # plane (C, W), H pooled
        self.hc = _ZPoolGate(kernel_size)  # plane (H, C), W pooled
        self.hw = None if no_spatial else _ZPoolGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the official code's rotations: (B,H,C,W) and (B,W,H,C); permute is a view
        s_cw = self.cw(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)  # (B,1,C,W) -> (B,C,1,W)
        s_hc = self.hc(x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # (B,1,H,C) -> (B,C,H,1)
        self.expose("channel_width", s_cw)
        self.expose("channel_height", s_hc)
        out = x * s_cw.to(x.dtype) + x * s_hc.to(x.dtype)
        if self.hw is None:
            return out / 2
        s_hw = self.hw(x)  # (B, 1, H, W)
        self.expose("spatial", s_hw)
        return (out + x * s_hw.to(x.dtype)) / 3


# --------------------------------------------------------------------------------------
# SimAM
# --------------------------------------------------------------------------------------
@register(
    "simam",
    kind="gate",
    paper="Yang et al. 2021, SimAM: A Simple, Parameter-Free Attention Module for CNNs",
)
class SimAM(AttentionModule):
    """SimAM (Yang et al. 2021, eq. 5 and the paper's listing 1), parameter-free.

    Inverse minimal energy per neuron ``1/e* = (t - mu)^2 / (4 (sigma^2 + lambda)) + 0.5``
    with mu, sigma^2 over the channel's map, ``sigma^2 = sum_HW (x - mu)^2 / n``,
    ``n = HW - 1`` (paper's listing);
    ``out = x * sigmoid(1/e*)``. On a 1x1 map n would be 0 (NaN, PITFALLS.md); n is
    clamped to 1 there, which gives the exact limit: every neuron equals the mean, so the
    gate is sigmoid(0.5).

    Exposes ``spatial``: the gate averaged over channels, (B, 1, H, W).

    Args:
        channels: C (unused; parameter-free).
        e_lambda: lambda, the energy's regulariser (paper: 1e-4).
    """

    def __init__(self, channels: int, e_lambda: float = 1e-4) -> None:
        super().__init__()
        check(
            isinstance(e_lambda, (int, float)) and not isinstance(e_lambda, bool) and e_lambda > 0,
            f"simam: option 'e_lambda' must be a positive number, got {e_lambda!r}",
        )
        self.e_lambda = float(e_lambda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        inv_energy = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        gate = torch.sigmoid(inv_energy)
        if self.record_maps:
            self.expose("spatial", gate.mean(1, keepdim=True))
        return x * gate

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"


# --------------------------------------------------------------------------------------
# Group helpers (SGE, Shuffle)
# --------------------------------------------------------------------------------------
def _largest_group_count(channels: int, groups: int, per_group_multiple: int) -> int:
    """Largest g <= ``groups`` with ``channels % (per_group_multiple * g) == 0`` (0 if none)."""
    for g in range(min(groups, channels // per_group_multiple), 0, -1):
        if channels % (per_group_multiple * g) == 0:
            return g
    return 0


# --------------------------------------------------------------------------------------
# SGE
# --------------------------------------------------------------------------------------
@register(
    "sge",
    kind="gate",
    paper="Li et al. 2019, Spatial Group-wise Enhance: Improving Semantic Feature Learning in CNNs",
)
class SpatialGroupEnhance(AttentionModule):
    """Spatial Group-wise Enhance (Li et al. 2019, eq. 1-5, figure 2).

    Per group of C/G channels: global descriptor ``g = mean(x)`` (eq. 1), similarity
    ``c_i = g . x_i`` at each position (eq. 2), normalised over positions (eq. 3-4), then
    ``a = sigmoid(gamma * c_hat + beta)`` and ``out_i = x_i * a_i`` (eq. 5). 2G parameters
    (gamma starts at 0 and beta at 1, official code). The std is the unbiased one with
    1e-5 added (official code); on 1x1 maps and constant groups it is 0 + 1e-5, not NaN.

    Groups: the paper's G=64 needs C divisible by G. When it is not (small CIFAR widths,
    WRN widths such as 160), the module uses the largest divisor of C not above
    ``groups`` (C=16 -> 16, C=24 -> 24, C=160 -> 40) so the default builds everywhere;
    the value used is ``self.groups`` and appears in the model printout.

    Args:
        channels: C.
        groups: G, the requested number of groups (paper: 64).
    """

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        check_int("sge", "groups", groups)
        self.groups = _largest_group_count(channels, groups, 1)
        self.weight = nn.Parameter(torch.zeros(1, self.groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, self.groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)
        sim = (xg * xg.mean((2, 3), keepdim=True)).sum(1).reshape(b * self.groups, h * w)
        sim = sim - sim.mean(1, keepdim=True)
        var = sim.pow(2).sum(1, keepdim=True) / max(h * w - 1, 1)
        sim = sim / (var.clamp_min(1e-12).sqrt() + 1e-5)
        logits = sim.reshape(b, self.groups, h, w) * self.weight + self.bias
        gate = torch.sigmoid(logits)  # (B, G, H, W)
        self.expose("spatial", gate)
        out = xg * gate.reshape(b * self.groups, 1, h, w).to(x.dtype)
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# --------------------------------------------------------------------------------------
# Shuffle attention
# --------------------------------------------------------------------------------------
@register(
    "shuffle",
    kind="gate",
    paper="Zhang & Yang 2021, SA-Net: Shuffle Attention for Deep CNNs",
)
class ShuffleAttention(AttentionModule):
    """Shuffle Attention (Zhang & Yang 2021, eq. 1-5, figure 2).

    Split C into G groups, each group into two halves of c' = C/(2G) channels. Channel
    half: ``x * sigmoid(W1 * GAP(x) + b1)`` (eq. 3); spatial half:
    ``x * sigmoid(W2 * GN(x) + b2)`` (eq. 4, GroupNorm with one channel per group, affine,
    official code); concatenate, then a channel shuffle with 2 groups. Parameters 6c'
    (C=256, G=64: 12); W1, W2 start at 0 and b1, b2 at 1 (official code).

    Groups: C must be divisible by 2G. When it is not, the module uses the largest G'
    <= ``groups`` with C divisible by 2G' (C=16 -> 8, C=24 -> 12); the value used is
    ``self.groups``. An odd C cannot be split in halves and is a ConfigError.

    Exposes ``channel`` (B, C/2): the channel-half gates (group-major order) and
    ``spatial`` (B, 1, H, W): the spatial-half gates averaged over their channels.

    Args:
        channels: C (even).
        groups: G, the requested number of groups (paper: 64).
    """

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        check_int("shuffle", "groups", groups)
        g = _largest_group_count(channels, groups, 2)
        if g == 0:
            raise ConfigError(
                f"shuffle: channels={channels} cannot be split into two halves per group; "
                "Shuffle Attention needs an even channel count"
            )
        self.groups = g
        half = channels // (2 * g)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xg = x.reshape(b * self.groups, c // self.groups, h, w)
        x_ch, x_sp = xg.chunk(2, dim=1)
        g_ch = torch.sigmoid(self.cweight * x_ch.mean((2, 3), keepdim=True) + self.cbias)
        g_sp = torch.sigmoid(self.sweight * self.gn(x_sp) + self.sbias)
        if self.record_maps:
            self.expose("channel", g_ch.reshape(b, -1))
            self.expose("spatial", g_sp.reshape(b, -1, h, w).mean(1, keepdim=True))
        out = torch.cat((x_ch * g_ch.to(x.dtype), x_sp * g_sp.to(x.dtype)), dim=1)
        # back to (B, C, H, W), then channel shuffle with 2 groups
        out = out.reshape(b, 2, c // 2, h, w).transpose(1, 2)
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


# --------------------------------------------------------------------------------------
# Polarized self-attention
# --------------------------------------------------------------------------------------
_PSA_MODE = ("parallel", "sequential")


@register(
    "polarized",
    kind="gate",
    paper="Liu et al. 2021, Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
)
class PolarizedSelfAttention(AttentionModule):
    """Polarized Self-Attention (Liu et al. 2021, eq. 1-5, figure 2).

    Channel-only branch (eq. 1): ``A_ch = sigmoid(LN(W_z(W_v(X) softmax_HW(W_q(X)))))``,
    W_v: 1x1 C->C/2, W_q: 1x1 C->1, W_z: C/2->C, LayerNorm over C; ``Z_ch = A_ch * X``.
    Spatial-only branch (eq. 3): ``A_sp = sigmoid(softmax_C(GAP(W_q'(X)))^T W_v'(X))``,
    W_q', W_v': 1x1 C->C/2; ``Z_sp = A_sp * X``.
    ``mode="parallel"`` (eq. 4): ``Z_ch + Z_sp``; ``mode="sequential"`` (eq. 5):
    ``Z_sp(Z_ch(X))``. The sum of two gated copies is the paper's (not a residual).

    The paper's equations are followed (with the LayerNorm of eq. 1); the official code's
    convs have no bias, kept here, which also avoids a dead bias before the HW softmax.
    Parameters (C=256): 4 * C*C/2 + C + 2C = 131,840.

    Args:
        channels: C.
        mode: ``parallel`` (PSA_p, default) or ``sequential`` (PSA_s).
    """

    def __init__(self, channels: int, mode: Literal["parallel", "sequential"] = "parallel") -> None:
        super().__init__()
        self.mode = check_choice("polarized", "mode", mode, _PSA_MODE)
        inner = max(channels // 2, 1)
        self.ch_v = nn.Conv2d(channels, inner, 1, bias=False)
        self.ch_q = nn.Conv2d(channels, 1, 1, bias=False)
        self.ch_z = nn.Linear(inner, channels, bias=False)
        self.ch_norm = nn.LayerNorm(channels)
        self.sp_v = nn.Conv2d(channels, inner, 1, bias=False)
        self.sp_q = nn.Conv2d(channels, inner, 1, bias=False)

    def _channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        v = self.ch_v(x).flatten(2)  # (B, C/2, HW)
        q = torch.softmax(self.ch_q(x).flatten(2), dim=-1)  # (B, 1, HW)
        z = (v @ q.transpose(1, 2)).squeeze(2)  # (B, C/2)
        a = torch.sigmoid(self.ch_norm(self.ch_z(z)))  # (B, C)
        self.expose("channel", a)
        return a[:, :, None, None].to(x.dtype)

    def _spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        q = torch.softmax(self.sp_q(x).mean((2, 3)), dim=1)  # (B, C/2)
        v = self.sp_v(x).flatten(2)  # (B, C/2, HW)
        a = torch.sigmoid(q.unsqueeze(1) @ v).reshape(x.shape[0], 1, h, w)
        self.expose("spatial", a)
        return a.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "parallel":
            return x * self._channel_gate(x) + x * self._spatial_gate(x)
        y = x * self._channel_gate(x)
        return y * self._spatial_gate(y)


# --------------------------------------------------------------------------------------
# A^2 double attention
# --------------------------------------------------------------------------------------
@register(
    "a2",
    kind="gate",
    paper="Chen et al. 2018, A^2-Nets: Double Attention Networks",
    residual=True,
    default_position="after_add",
)
class DoubleAttention(AttentionModule):
    """Double attention block (Chen et al. 2018, eq. 2-6, figure 2).

    A = phi(X) (c_m maps), B = softmax over positions of theta(X) (c_n attention maps),
    V = softmax over the c_n maps of rho(X) (attention vectors), all 1x1 convs.
    Gather (eq. 3-4): ``G = A B^T`` (c_m x c_n global descriptors); distribute (eq. 5):
    ``z_i = G v_i``; a 1x1 conv c_m->C restores the width and the block's output is added
    to its input, ``out = X + W_out Z`` (the paper's residual form, so ``has_residual``).

    c_m = c_n = C / ``reduction`` (default 4, i.e. C/4). theta and phi have no bias: a
    per-map bias cancels in the spatial softmax (theta) and only shifts Z by a constant
    that W_out's bias already provides (phi). Parameters (C=256): 65,856.

    Args:
        channels: C.
        reduction: C / c_m = C / c_n (default 4).
        zero_init_output: start W_out at zero so the block is the identity at
            initialisation (for inserting it into a pretrained network; PITFALLS.md).
    """

    has_residual = True

    def __init__(self, channels: int, reduction: int = 4, zero_init_output: bool = False) -> None:
        super().__init__()
        check_int("a2", "reduction", reduction)
        check_flag("a2", "zero_init_output", zero_init_output)
        inner = reduced(channels, reduction)
        self.phi = nn.Conv2d(channels, inner, 1, bias=False)  # A: features (c_m)
        self.theta = nn.Conv2d(channels, inner, 1, bias=False)  # B: gather maps (c_n)
        self.rho = nn.Conv2d(channels, inner, 1)  # V: distribution vectors (c_n)
        self.out = nn.Conv2d(inner, channels, 1)
        if zero_init_output:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        feats = self.phi(x).flatten(2)  # (B, m, HW)
        gather = torch.softmax(self.theta(x).flatten(2), dim=-1)  # (B, n, HW)
        distribute = torch.softmax(self.rho(x).flatten(2), dim=1)  # (B, n, HW)
        descriptors = feats @ gather.transpose(1, 2)  # (B, m, n)
        z = (descriptors @ distribute).reshape(b, -1, h, w)  # (B, m, H, W)
        if self.record_maps:
            self.expose("spatial", gather.reshape(b, -1, h, w))
            self.expose("distribute", distribute.reshape(b, -1, h, w))
        return x + self.out(z).to(x.dtype)
