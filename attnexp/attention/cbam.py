"""CBAM-style gates: CBAM (and its two gates alone), BAM and Triplet attention.

Each pools the input, turns the pooled maps into a gate with small convs or an MLP (plus
BN, as the official code), and multiplies the input by it. Every constructor option is a
knob of the paper with the paper's default; where the paper and the official code
disagree, the docstring says which one is followed and the other is an option where it
matters for a table.

None adds a residual of its own: CBAM has none (one public collection adds ``out + x``,
which doubles the block's residual), and BAM's ``1 +`` is a multiplicative identity, not an
additive residual (see :class:`BAM`). Identity start
(:func:`attnexp.attention.init_identity`): none of these gates is exactly 1 (BAM's is in
(1, 2)), so all use the exact learnable blend of
:meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
"""

from __future__ import annotations

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
    check_flag,
    check_int,
    check_odd,
    reduced,
)
from attnexp.attention.registry import register
from attnexp.errors import check

__all__ = ["BAM", "CBAM", "CBAMChannel", "CBAMSpatial", "TripletAttention"]

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
        return fused.linear(F.relu(fused.linear(z, self.fc1)), self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> gate (B, C) in (0, 1)."""
        if self.pool == "avg":
            logits = self._mlp(x.mean((2, 3)))
        elif self.pool == "max":
            logits = self._mlp(x.amax((2, 3)))
        else:
            # = mlp(avg) + mlp(max), both descriptors in one pass through the MLP
            logits = fused.shared_mlp_sum(self._mlp, x.mean((2, 3)), x.amax((2, 3)))
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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
    and its released weights, ``sigmoid(Mc * Ms)``. With one branch switched
    off the other branch's map is used alone, ``F * (1 + sigmoid(M))``, for both rules.

    BatchNorm1d on the pooled (B, C/r) vector fails in training for a batch of one; the BNs
    here fall back to their running statistics for that input (see ``SafeBatchNorm1d``).

    Args:
        channels: C.
        reduction: r, for both branches (paper: 16).
        dilation: d of the two 3x3 convs (paper: 4); padding = d keeps the map size.
        combine: ``sum`` (default, the paper) or ``product`` (the official code).
        use_channel, use_spatial: channel-only / spatial-only ablations (paper table 1).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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
            if self.record_maps:
                self.expose("channel", torch.sigmoid(mc))
            mc = mc[:, :, None, None]
        if self.spatial_gate is not None:
            ms = self.spatial_gate(x)  # (B, 1, H, W)
            if self.record_maps:
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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
