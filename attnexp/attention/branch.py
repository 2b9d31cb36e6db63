"""Branch and expert attention: modules that stand in for a block's 3x3 convolution.

Every module here is a conv-kind zoo entry, built as ``cls(in_channels, out_channels,
stride, *, options)``, and has the output size of ``nn.Conv2d(in, out, 3, stride,
padding=1)`` for any input size and stride.

``includes_norm_act`` (class attribute) tells the backbone whether the module's output is
already batch-normalised and activated. It is True for ``sk`` and ``splat``, whose papers put
BN+ReLU inside every branch (before the attention-weighted sum); the backbone must then skip
its own BN+ReLU after the conv position, or the features are normalised twice. It is False for
the others, which are bare convolutions followed by the backbone's BN+ReLU as in their papers.

Branch/expert weights are exposed as ``branch``: (B, K, C) for ``sk``/``splat``/``psa``
(softmax over K, sigmoid for ``splat`` with radix 1), (B, K) for ``condconv`` (sigmoid
routing) and ``dynamic_conv`` (softmax).

Modules:

* ``conv3x3``      – the plain convolution (the "no branch attention" / "one kernel" row);
* ``sk``           – Selective Kernel convolution, Li et al. 2019 (SKNet);
* ``splat``        – Split Attention, Zhang et al. 2020 (ResNeSt);
* ``psa``          – Pyramid Split Attention, Zhang et al. 2021 (EPSANet);
* ``condconv``     – Conditionally parameterised convolution, Yang et al. 2019;
* ``dynamic_conv`` – Dynamic convolution, Chen et al. 2020 (tau annealed per epoch).

Identity start does not apply: these modules replace a convolution, so
:func:`attnexp.attention.init_identity` refuses them with a ConfigError.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.options import (
    SafeBatchNorm2d,
    check_flag,
    check_groups,
    check_int,
    check_int_list,
    check_number,
    check_odd,
)
from attnexp.attention.registry import register
from attnexp.errors import check

__all__ = [
    "CondConv",
    "DynamicConv",
    "PlainConv",
    "PyramidSplitAttention",
    "SelectiveKernelConv",
    "SplitAttentionConv",
    "anneal_temperature",
]


# --------------------------------------------------------------------------- helpers
def _per_example_conv(
    x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """Convolve example b of ``x`` with ``kernels[b]`` (B, out, in, k, k) in one grouped conv.

    The batch is folded into channels, (1, B*in, H, W), and the per-example kernels become
    the B groups of a single convolution.
    """
    b, c_in, h, w = x.shape
    c_out = kernels.shape[1]
    y = F.conv2d(
        x.reshape(1, b * c_in, h, w),
        kernels.reshape(b * c_out, *kernels.shape[2:]),
        None if bias is None else bias.reshape(b * c_out),
        stride=stride,
        padding=padding,
        groups=b,
    )
    return y.view(b, c_out, y.shape[-2], y.shape[-1])


def _expert_bank(experts: int, out_channels: int, in_channels: int) -> nn.Parameter:
    """K conv kernels stored as one 4-D (K * out, in, 3, 3) tensor.

    4-D so that ``model.to(memory_format=torch.channels_last)`` works (it rejects 5-D
    parameters); each expert starts as nn.Conv2d's default initialisation would start it
    (the fan-in, in * 9, is that of one expert).
    """
    weight = nn.Parameter(torch.empty(experts * out_channels, in_channels, 3, 3))
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def _aggregate(weights: torch.Tensor, bank: torch.Tensor, experts: int) -> torch.Tensor:
    """Per-example kernels sum_k weights[b, k] W_k, shape (B, out, in, 3, 3)."""
    out_in_kk = (bank.shape[0] // experts, *bank.shape[1:])
    flat = bank.reshape(experts, -1).to(weights.dtype)
    return (weights @ flat).view(-1, *out_in_kk)


# --------------------------------------------------------------------------- conv3x3
@register("conv3x3", kind="conv", paper="plain convolution (He et al. 2016 baseline)")
class PlainConv(AttentionModule):
    """The plain k x k convolution, so "no branch attention" and "one large kernel" are rows
    of the same sweep as the attention convs. Padding ``dilation * (k - 1) // 2`` keeps the
    output size of a padded 3x3 conv."""

    includes_norm_act: bool = False
    exposes_maps = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        kernel_size: int = 3,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = "conv3x3"
        kernel_size = check_odd(name, "kernel_size", kernel_size)
        dilation = check_int(name, "dilation", dilation)
        bias = check_flag(name, "bias", bias)
        groups = check_groups(
            name, "groups", groups, ("in_channels", in_channels), ("out_channels", out_channels)
        )
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=dilation * (kernel_size - 1) // 2,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# --------------------------------------------------------------------------- sk
@register("sk", kind="conv", paper="Li et al. 2019, Selective Kernel Networks (SKNet)")
class SelectiveKernelConv(AttentionModule):
    """Selective Kernel convolution (Li et al. 2019, section 3.1, eqs. 1-6).

    * Split: branch k is conv(k) + BN + ReLU (grouped). With ``dilated=True`` (the paper) a
      kernel k > 3 is a 3x3 conv with dilation (k - 1) // 2; ``dilated=False`` uses a true
      k x k conv.
    * Fuse: U = sum_k U_k; s = mean over H, W (eq. 2); z = ReLU(BN(W s)), W in R^{d x C},
      d = max(C / r, L) (eqs. 3-4), no bias.
    * Select: a = softmax over the K branches of A_k z (eq. 5, no bias), V = sum_k a_k U_k
      (eq. 6). Exposed as ``branch`` (B, K, C).

    ``attention=False`` drops fuse/select and sums the branches (the "K3+K5" rows of SKNet
    table 7). The output is already BN+ReLU'd per branch, hence ``includes_norm_act``.

    ``groups`` is capped at gcd(in_channels, out_channels) so the paper's G=32 still works on
    narrow layers (C=16 becomes depthwise, 16 groups); an uncapped value must divide both
    channel counts. The fuse BN handles a training batch of one (``SafeBatchNorm2d``).
    """

    includes_norm_act: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3, 5),
        dilated: bool = True,
        groups: int = 32,
        reduction: int = 16,
        min_dim: int = 32,
        attention: bool = True,
    ) -> None:
        super().__init__()
        name = "sk"
        kernels = tuple(
            check_odd(name, "kernels", k) for k in check_int_list(name, "kernels", kernels)
        )
        groups = check_int(name, "groups", groups)
        groups = check_groups(
            name,
            "groups",
            min(groups, math.gcd(in_channels, out_channels)),
            ("in_channels", in_channels),
            ("out_channels", out_channels),
        )
        reduction = check_int(name, "reduction", reduction)
        min_dim = check_int(name, "min_dim", min_dim)
        dilated = check_flag(name, "dilated", dilated)
        attention = check_flag(name, "attention", attention)
        self.kernels = kernels
        self.groups = groups
        self.attention = bool(attention)
        self.out_channels = out_channels

        self.branches = nn.ModuleList()
        for k in kernels:
            if dilated and k > 3:
                size, dil = 3, (k - 1) // 2
            else:
                size, dil = k, 1
            conv = nn.Conv2d(
                in_channels,
                out_channels,
                size,
                stride=stride,
                padding=dil * (size - 1) // 2,
                dilation=dil,
                groups=groups,
                bias=False,
            )
            self.branches.append(
                nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
            )

        self.dim = max(out_channels // reduction, min_dim)
        if self.attention:
            self.fuse = nn.Conv2d(out_channels, self.dim, 1, bias=False)
            self.fuse_bn = SafeBatchNorm2d(self.dim)
            # One matrix per branch (A, B, ... in eq. 5), stacked into a single 1x1 conv.
            self.select = nn.Conv2d(self.dim, len(kernels) * out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.attention:
            out = self.branches[0](x)
            for branch in self.branches[1:]:
                out = out + branch(x)
            return out
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)  # (B, K, C, H, W)
        b, k, c = feats.shape[:3]
        s = feats.sum(1).mean((2, 3), keepdim=True)
        z = F.relu(self.fuse_bn(self.fuse(s)))
        a = self.select(z).view(b, k, c).softmax(dim=1)  # across branches, not channels
        self.expose("branch", a)
        return (feats * a.to(feats.dtype)[..., None, None]).sum(1)


# --------------------------------------------------------------------------- splat
@register("splat", kind="conv", paper="Zhang et al. 2020, ResNeSt: Split-Attention Networks")
class SplitAttentionConv(AttentionModule):
    """Split-Attention conv of ResNeSt (Zhang et al. 2020, section 3, fig. 2; eqs. 1-3).

    conv3x3 with ``cardinality * radix`` groups producing ``radix`` splits of C channels,
    BN + ReLU; gap = mean over H, W of the sum of the splits (eq. 1); fc1 (grouped by
    cardinality) + BN + ReLU, fc2 -> r-softmax over the radix splits per cardinal group
    (sigmoid when radix = 1, eq. 3); output = sum of the weighted splits (eq. 2). Exposed as
    ``branch`` (B, radix, C).

    As in the official code: the inner width is max(in_channels * radix // reduction,
    ``min_inter_channels`` = 32) (rounded up to a multiple of ``cardinality`` when it is not
    one), fc1 and fc2 carry biases, and the BN+ReLU sit inside (``includes_norm_act``). The
    ResNeSt block's average-pool downsampling ("avd") is a backbone matter, not part of
    this module; here the stride is the conv's.
    """

    includes_norm_act: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        radix: int = 2,
        cardinality: int = 1,
        reduction: int = 4,
        min_inter_channels: int = 32,
    ) -> None:
        super().__init__()
        name = "splat"
        radix = check_int(name, "radix", radix)
        cardinality = check_int(name, "cardinality", cardinality)
        reduction = check_int(name, "reduction", reduction)
        min_inter_channels = check_int(name, "min_inter_channels", min_inter_channels)
        check_groups(name, "cardinality", cardinality, ("out_channels", out_channels))
        check(
            in_channels % (cardinality * radix) == 0,
            f"{name}: in_channels={in_channels} must be divisible by cardinality * radix = "
            f"{cardinality * radix} (the conv has that many groups); change radix or "
            f"cardinality",
        )
        inter = max(in_channels * radix // reduction, min_inter_channels)
        inter = -(-inter // cardinality) * cardinality  # fc1 is grouped by cardinality
        self.radix = radix
        self.cardinality = cardinality
        self.out_channels = out_channels
        self.conv = nn.Conv2d(
            in_channels,
            out_channels * radix,
            3,
            stride=stride,
            padding=1,
            groups=cardinality * radix,
            bias=False,
        )
        self.bn0 = nn.BatchNorm2d(out_channels * radix)
        self.fc1 = nn.Conv2d(out_channels, inter, 1, groups=cardinality)
        self.bn1 = SafeBatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, out_channels * radix, 1, groups=cardinality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.conv(x)))
        b, c, r = y.shape[0], self.out_channels, self.radix
        splits = y.unflatten(1, (r, c))  # (B, R, C, H, W)
        gap = splits.sum(1).mean((2, 3), keepdim=True)
        logits = self.fc2(F.relu(self.bn1(self.fc1(gap))))
        if r > 1:
            # fc2's outputs are ordered (cardinal group, radix, channel in group).
            g = self.cardinality
            a = logits.view(b, g, r, c // g).softmax(dim=2).transpose(1, 2).reshape(b, r, c)
        else:
            a = torch.sigmoid(logits).view(b, 1, c)
        self.expose("branch", a)
        return (splits * a.to(splits.dtype)[..., None, None]).sum(1)


# --------------------------------------------------------------------------- psa
@register("psa", kind="conv", paper="Zhang et al. 2021, EPSANet: Pyramid Split Attention")
class PyramidSplitAttention(AttentionModule):
    """Pyramid Split Attention module of EPSANet (Zhang et al. 2021, section 3.2, eqs. 1-9).

    S = len(kernels) splits of out_channels / S channels: split i is a k_i x k_i conv of the
    whole input with G_i groups (eqs. 1-2); one SEWeight module (mean, FC C'->C'/r, ReLU,
    FC, sigmoid; eq. 4, shared by the splits as in eq. 5 and the official code) gives Z_i;
    softmax across the S splits per channel (eq. 7); out = concat(F_i * att_i) (eqs. 8-9).
    Exposed as ``branch`` (B, S, C/S).

    Each group count is capped to gcd(G_i, in_channels, out_channels / S) so that narrow
    layers work (with 128 -> 128 and the defaults no cap applies). The SE hidden width is
    max(1, (C/S) // r). No BN inside: the backbone's BN+ReLU follows, as in EPSANet.
    """

    includes_norm_act: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        kernels: Sequence[int] = (3, 5, 7, 9),
        groups: Sequence[int] = (1, 4, 8, 16),
        reduction: int = 16,
    ) -> None:
        super().__init__()
        name = "psa"
        kernels = tuple(
            check_odd(name, "kernels", k) for k in check_int_list(name, "kernels", kernels)
        )
        groups = tuple(check_int(name, "groups", g) for g in check_int_list(name, "groups", groups))
        check(
            len(groups) == len(kernels),
            f"{name}: groups has {len(groups)} entries but kernels has {len(kernels)}; give "
            f"one group count per kernel",
        )
        reduction = check_int(name, "reduction", reduction)
        s = len(kernels)
        check(
            out_channels % s == 0,
            f"{name}: out_channels={out_channels} is not divisible by the number of splits "
            f"len(kernels)={s}; use a kernels list whose length divides {out_channels}",
        )
        split = out_channels // s
        self.kernels = kernels
        self.groups = tuple(math.gcd(g, in_channels, split) for g in groups)
        self.split = split
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, split, k, stride=stride, padding=k // 2, groups=g, bias=False)
            for k, g in zip(kernels, self.groups)
        )
        hidden = max(1, split // reduction)
        self.se = nn.Sequential(
            nn.Linear(split, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, split)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # (B, S, C/S, H, W)
        z = torch.sigmoid(self.se(feats.mean((3, 4))))  # SEWeight per split, (B, S, C/S)
        a = z.softmax(dim=1)  # across splits
        self.expose("branch", a)
        return (feats * a.to(feats.dtype)[..., None, None]).flatten(1, 2)


# --------------------------------------------------------------------------- condconv
@register("condconv", kind="conv", paper="Yang et al. 2019, CondConv")
class CondConv(AttentionModule):
    """Conditionally parameterised convolution (Yang et al. 2019, eqs. 1-2).

    Output = (sum_i r_i(x) W_i) * x with routing r(x) = sigmoid(GAP(x) R) (eq. 2, no bias;
    the official TF code's Dense has one). The per-example kernel is formed once and applied
    with a grouped conv over the batch. ``dropout_rate`` is dropout on the pooled routing
    input. Exposed as ``branch`` (B, experts), not normalised (sigmoid).
    """

    includes_norm_act: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        experts: int = 8,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        name = "condconv"
        experts = check_int(name, "experts", experts)
        check_number(name, "dropout_rate", dropout_rate, 0.0, 1.0, low_inclusive=True,
                     high_inclusive=False)  # fmt: skip
        self.stride = stride
        self.experts = experts
        self.weight = _expert_bank(experts, out_channels, in_channels)
        self.dropout = nn.Dropout(dropout_rate)
        self.routing = nn.Linear(in_channels, experts, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.sigmoid(self.routing(self.dropout(x.mean((2, 3)))))  # (B, E)
        self.expose("branch", r)
        return _per_example_conv(x, _aggregate(r, self.weight, self.experts), None, self.stride, 1)

    def expert_kernels(self) -> torch.Tensor:
        """The experts' kernels as (experts, out, in, 3, 3) (a view of ``weight``)."""
        return self.weight.reshape(self.experts, -1, *self.weight.shape[1:])


# --------------------------------------------------------------------------- dynamic conv
@register("dynamic_conv", kind="conv", paper="Chen et al. 2020, Dynamic Convolution")
class DynamicConv(AttentionModule):
    """Dynamic convolution (Chen et al. 2020, section 3, eqs. 1-3).

    K kernels aggregated per example, W~ = sum_k pi_k W_k with pi = softmax(z / tau),
    z = FC(ReLU(FC(GAP(x)))) with hidden width in_channels // reduction (at least 1)
    (section 3.2, eq. 3). The temperature tau starts at ``temperature`` (paper: 30) and is
    annealed linearly to ``final_temperature`` (paper: 1) over the first ``anneal_epochs``
    epochs (paper: 10; 0 keeps tau constant) by :meth:`on_train_epoch_start`, the per-epoch
    hook the trainer calls on every module that has one. tau is a buffer, so a checkpoint
    restores the annealed value. ``bias=True`` adds the aggregated bias b~ = sum_k pi_k b_k
    of eq. 1; off by default because BN follows the conv. Exposed as ``branch`` (B, K),
    summing to 1. The softmax runs in at least float32 (float64 stays float64).
    """

    includes_norm_act: bool = False
    temperature: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        kernels: int = 4,
        reduction: int = 4,
        temperature: float = 30.0,
        final_temperature: float = 1.0,
        anneal_epochs: int = 10,
        bias: bool = False,
    ) -> None:
        super().__init__()
        name = "dynamic_conv"
        kernels = check_int(name, "kernels", kernels)
        reduction = check_int(name, "reduction", reduction)
        self.initial_temperature = check_number(name, "temperature", temperature, 0)
        self.final_temperature = check_number(name, "final_temperature", final_temperature, 0)
        self.anneal_epochs = check_int(name, "anneal_epochs", anneal_epochs, low=0)
        bias = check_flag(name, "bias", bias)
        self.stride = stride
        self.kernels = kernels
        self.weight = _expert_bank(kernels, out_channels, in_channels)
        self.bias = nn.Parameter(torch.zeros(kernels, out_channels)) if bias else None
        hidden = max(1, in_channels // reduction)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, kernels)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def set_temperature(self, t: float) -> None:
        """Set the softmax temperature tau (must be positive)."""
        check(t > 0, f"dynamic_conv: temperature must be positive, got {t!r}")
        self.temperature.fill_(float(t))

    def on_train_epoch_start(self, epoch: int, max_epochs: int | None) -> dict[str, float]:
        """Per-epoch hook: set tau for ``epoch`` (the anneal schedule); returns it to log."""
        t = linear_anneal(
            epoch, self.initial_temperature, self.final_temperature, self.anneal_epochs
        )
        self.set_temperature(t)
        return {"dyconv_temperature": t}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        logits = z.to(torch.promote_types(z.dtype, torch.float32)) / self.temperature
        pi = logits.softmax(dim=1).to(z.dtype)  # (B, K)
        self.expose("branch", pi)
        kernels = _aggregate(pi, self.weight, self.kernels)
        bias = None if self.bias is None else pi @ self.bias.to(pi.dtype)
        return _per_example_conv(x, kernels, bias, self.stride, 1)

    def expert_kernels(self) -> torch.Tensor:
        """The K kernels as (K, out, in, 3, 3) (a view of ``weight``)."""
        return self.weight.reshape(self.kernels, -1, *self.weight.shape[1:])


def linear_anneal(epoch: int, start: float, end: float, epochs: int) -> float:
    """``start`` at epoch 0, linearly to ``end`` at epoch ``epochs``, then ``end``."""
    check(epochs >= 0, f"anneal: epochs must be >= 0, got {epochs!r}")
    frac = 1.0 if epochs == 0 else min(max(epoch, 0), epochs) / epochs
    return start + (end - start) * frac


def anneal_temperature(
    model: nn.Module, epoch: int, start: float = 30.0, end: float = 1.0, epochs: int = 10
) -> float:
    """Set every :class:`DynamicConv` in ``model`` to the temperature of ``epoch``.

    Linear from ``start`` at epoch 0 to ``end`` at epoch ``epochs``, then constant (Chen et
    al. 2020, section 4: 30 -> 1 over the first 10 epochs). Returns the temperature set.
    Training does this through each module's own :meth:`DynamicConv.on_train_epoch_start`;
    this is for scripts that drive a model by hand.
    """
    t = linear_anneal(epoch, start, end, epochs)
    for m in model.modules():
        if isinstance(m, DynamicConv):
            m.set_temperature(t)
    return t
