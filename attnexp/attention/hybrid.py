"""Hybrid (channel + spatial) attention: Coordinate Attention, SimAM, Spatial Group-wise
Enhance, Shuffle Attention, Polarized Self-Attention and A^2 double attention.

Every constructor option is a knob of the paper with the paper's default; where the paper
and the official code disagree, the docstring says which one is followed and the other is
an option where it matters for a table. (CBAM, BAM and Triplet attention are in
:mod:`attnexp.attention.cbam`.)

Only A^2 adds its own residual (``has_residual``). Identity start
(:func:`attnexp.attention.init_identity`): A^2 zeroes its output conv; the other gates are
never exactly 1 and use the exact learnable blend of
:meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.options import check_choice, check_flag, check_int, reduced
from attnexp.attention.registry import register
from attnexp.errors import ConfigError, check

__all__ = [
    "CoordinateAttention",
    "DoubleAttention",
    "PolarizedSelfAttention",
    "ShuffleAttention",
    "SimAM",
    "SpatialGroupEnhance",
]


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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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
    ``out = x * sigmoid(1/e*)``. On a 1x1 map n would be 0 (a NaN); n is
    clamped to 1 there, which gives the exact limit: every neuron equals the mean, so the
    gate is sigmoid(0.5).

    Exposes ``spatial``: the gate averaged over channels, (B, 1, H, W).

    Args:
        channels: C (unused; parameter-free).
        e_lambda: lambda, the energy's regulariser (paper: 1e-4).

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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

    Identity start: the exact blend of ``AttentionModule.reset_to_identity`` (alpha = 0).
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
            initialisation (for inserting it into a pretrained network); the same as
            :meth:`reset_to_identity`, which zeroes W_out's weight and bias.
    """

    has_residual = True
    identity_start = "W_out = 0"

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
            self.reset_to_identity()

    def reset_to_identity(self) -> None:
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()

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
