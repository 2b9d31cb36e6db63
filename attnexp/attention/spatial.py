"""Spatial / position attention family: non-local, GC, criss-cross (CCNet), DANet.

These modules relate positions to each other (or pool positions into a context), and all
four carry their own residual in their papers, so ``has_residual`` is True. That additive
form is also how they start as the identity (:func:`attnexp.attention.init_identity`): the
branch's last layer or scale is zeroed. Each constructor option is a knob of the paper with
the paper's default; where the paper and the official code disagree, the docstring says
which one is followed.

Exposed maps (see :mod:`attnexp.attention.base`): ``position`` is the attention a position
*receives*, averaged over all queries, shape (B, 1, H, W) – it sums to 1 over positions. It
keeps the exposed tensor O(HW) even though the attention matrix itself is O((HW)^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention import fused
from attnexp.attention.base import AttentionModule
from attnexp.attention.options import check_choice, check_flag, check_int, check_number
from attnexp.attention.registry import register
from attnexp.errors import ConfigError, check

__all__ = ["CrissCrossAttention", "DualAttention", "GlobalContextBlock", "NonLocalBlock"]


def _received(attn: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Mean over queries of a (B, N_query, N_key) attention -> (B, 1, *key grid)."""
    return attn.mean(1).reshape(attn.shape[0], 1, *shape)


# --------------------------------------------------------------------------------------
# Non-local block
# --------------------------------------------------------------------------------------
_PAIRWISE = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")


@register(
    "nonlocal",
    kind="gate",
    paper="Wang et al. 2018, Non-local Neural Networks",
    default_position="after_add",
    memory="quadratic",
)
class NonLocalBlock(AttentionModule):
    """Non-local block (Wang et al. 2018, eq. 1 and eq. 6, figure 2), 2-D version.

    ``y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j)`` and ``z_i = W_z y_i + x_i``, with
    g, theta, phi, W_z 1x1 convs and a BN after W_z. ``pairwise`` is the paper's section 3.2:

    * ``gaussian``: f = exp(x_i^T x_j) on the raw input, C(x) = sum_j f (a softmax);
    * ``embedded_gaussian``: f = exp(theta(x_i)^T phi(x_j)), a softmax (the default);
    * ``dot_product``: f = theta(x_i)^T phi(x_j), C(x) = number of key positions;
    * ``concatenation``: f = ReLU(w^T [theta(x_i), phi(x_j)]), C(x) = number of key positions.

    ``inter_channels`` defaults to C//2 (at least 1), as the paper. ``subsample`` puts a 2x2
    max pool after phi and g (the paper's trick; the official Caffe2 code pools the input
    before the convs, which is cheaper but not the same function); it needs H, W >= 2, and
    with an odd size the last row/column is dropped from the keys (floor, as the official
    code). ``zero_init`` zero-initialises the BN scale after W_z so the block starts as the
    identity (paper section 4.1). ``scale`` divides the softmax logits by sqrt(d) as the
    official code does (``NONLOCAL.USE_SCALE = True`` there); the paper has no scaling, so
    the default is False. The embeddings and W_z are linear maps without bias, as in the
    paper's equations; the official code adds biases, but phi's is cancelled by the softmax
    and W_z's (and, for the softmax forms, g's) by the BN in training, so they would be
    dead parameters. Weights are initialised N(0, 0.01) (official code).
    Memory is O((HW)^2) (O(HW^2/4) with ``subsample``). The BN follows PyTorch's rule: a
    batch of one 1x1 map cannot be normalised in training.

    Identity start: the BN after W_z gets weight 0 and bias 0, so the branch adds exactly 0
    (the BN's weight receives the gradient from the first step).
    """

    has_residual = True
    identity_start = "W_z's BN weight, bias = 0"

    def __init__(
        self,
        channels: int,
        pairwise: str = "embedded_gaussian",
        inter_channels: int | None = None,
        subsample: bool = False,
        zero_init: bool = True,
        scale: bool = False,
    ) -> None:
        super().__init__()
        self.pairwise = check_choice("nonlocal", "pairwise", pairwise, _PAIRWISE)
        if inter_channels is None:
            inter_channels = max(channels // 2, 1)
        self.inter_channels = check_int("nonlocal", "inter_channels", inter_channels)
        self.subsample = check_flag("nonlocal", "subsample", subsample)
        self.zero_init = check_flag("nonlocal", "zero_init", zero_init)
        self.scale = check_flag("nonlocal", "scale", scale)
        check(
            not (self.scale and self.pairwise in ("dot_product", "concatenation")),
            f"nonlocal: option 'scale' only applies to the softmax pairwise functions (gaussian, "
            f"embedded_gaussian), not pairwise={self.pairwise!r}",
        )
        ci = self.inter_channels
        self.g = nn.Conv2d(channels, ci, 1, bias=False)
        if self.pairwise != "gaussian":
            self.theta = nn.Conv2d(channels, ci, 1, bias=False)
            self.phi = nn.Conv2d(channels, ci, 1, bias=False)
        if self.pairwise == "concatenation":
            # w_f of the paper, split into its theta half and its phi half.
            self.concat_weight = nn.Parameter(torch.empty(2, ci))
            nn.init.normal_(self.concat_weight, std=0.01)
        self.w_z = nn.Conv2d(ci, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        for conv in (m for m in self.modules() if isinstance(m, nn.Conv2d)):
            nn.init.normal_(conv.weight, std=0.01)
        if self.zero_init:
            nn.init.zeros_(self.bn.weight)

    def reset_to_identity(self) -> None:
        with torch.no_grad():
            self.bn.weight.zero_()
            self.bn.bias.zero_()

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, 2) if self.subsample else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.subsample and (h < 2 or w < 2):
            raise ConfigError(
                f"nonlocal with option 'subsample'=True needs H, W >= 2 (2x2 max pool), got "
                f"{h}x{w}; set subsample=False for this placement"
            )
        g = self._pool(self.g(x))
        key_shape = (g.shape[2], g.shape[3])
        g = g.flatten(2)  # (B, ci, M)
        if self.pairwise == "gaussian":
            theta, phi = x.flatten(2), self._pool(x).flatten(2)
        else:
            theta, phi = self.theta(x).flatten(2), self._pool(self.phi(x)).flatten(2)
        n_keys = phi.shape[2]
        if self.pairwise == "concatenation":
            a = torch.einsum("c,bci->bi", self.concat_weight[0], theta)
            k = torch.einsum("c,bcj->bj", self.concat_weight[1], phi)
            attn = F.relu(a[:, :, None] + k[:, None, :]) / n_keys
        else:
            logits = torch.einsum("bci,bcj->bij", theta, phi)
            if self.pairwise == "dot_product":
                attn = logits / n_keys
            else:
                if self.scale:
                    logits = logits * theta.shape[1] ** -0.5
                attn = logits.softmax(dim=-1)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("position", _received(attn, key_shape))
        y = torch.einsum("bij,bcj->bci", attn, g).reshape(b, self.inter_channels, h, w)
        return (self.bn(self.w_z(y)) + x).to(x.dtype)


# --------------------------------------------------------------------------------------
# Global context block
# --------------------------------------------------------------------------------------
@register(
    "gc",
    kind="gate",
    paper="Cao et al. 2019, GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
    memory="linear",
)
class GlobalContextBlock(AttentionModule):
    """Global context block (Cao et al. 2019, figure 4(d), eq. 3).

    ``z_i = x_i + W_v2 ReLU(LN(W_v1 sum_j softmax_j(W_k x_j) x_j))``: context modelling by a
    1x1 conv C->1 and a softmax over all HW positions (``pooling='att'``; ``'avg'`` is plain
    global average pooling, the paper's table 4 ablation), a bottleneck transform 1x1 conv
    C->c, LayerNorm([c, 1, 1]), ReLU, 1x1 conv c->C with c = max(int(C * ratio), 1), and a
    fusion: ``add`` (broadcast add, the default) or ``scale`` (x * sigmoid(transform)).

    Residual: with ``fusion='add'`` the block is x + transform(context), so it carries its own
    residual and the registry flag is True; with ``fusion='scale'`` there is no identity path
    (the instance's ``has_residual`` is then False; the registry flag describes the default).
    ``zero_init_last`` zero-initialises the last conv (weight and bias), as the official code
    does for both fusions: the block starts as the identity with ``add``, and as x * 0.5 with
    ``scale``. The attention conv W_k has no bias (as eq. 3; the official conv's bias is a
    constant under the softmax over positions, a dead parameter) and Kaiming-normal fan-in
    init (official code).

    Small C: with C < 2/ratio the bottleneck has c = 1 channel, and a LayerNorm over a single
    value outputs its bias, so the transform no longer depends on the context (the default
    ratio 1/16 hits this at C = 16 and 24). This is the paper's module taken literally; use a
    larger ``ratio`` for narrow stages.

    Identity start: with ``fusion='add'`` the last conv of the transform gets weight 0 and
    bias 0 (the branch adds exactly 0; that conv receives the gradient). With
    ``fusion='scale'`` the gate x * sigmoid(.) is not exactly 1, so the exact blend of
    :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity` is used.
    """

    has_residual = True
    identity_start = "last conv = 0 (add); blend (scale)"

    def __init__(
        self,
        channels: int,
        ratio: float = 1 / 16,
        pooling: str = "att",
        fusion: str = "add",
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        check_number("gc", "ratio", ratio, 0, 1)
        self.pooling = check_choice("gc", "pooling", pooling, ("att", "avg"))
        self.fusion = check_choice("gc", "fusion", fusion, ("add", "scale"))
        self.zero_init_last = check_flag("gc", "zero_init_last", zero_init_last)
        self.has_residual = self.fusion == "add"
        self.hidden = max(int(channels * ratio), 1)
        if self.pooling == "att":
            self.context_conv = nn.Conv2d(channels, 1, 1, bias=False)
            nn.init.kaiming_normal_(self.context_conv.weight, mode="fan_in", nonlinearity="relu")
        self.transform = nn.Sequential(
            nn.Conv2d(channels, self.hidden, 1),
            nn.LayerNorm([self.hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(self.hidden, channels, 1),
        )
        if self.zero_init_last:
            nn.init.zeros_(self.transform[-1].weight)
            nn.init.zeros_(self.transform[-1].bias)

    def reset_to_identity(self) -> None:
        if self.fusion != "add":
            super().reset_to_identity()
            return
        with torch.no_grad():
            self.transform[-1].weight.zero_()
            self.transform[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.pooling == "att":
            weights = fused.conv1x1_to_one(x, self.context_conv).flatten(2).softmax(dim=-1)
            context = fused.weighted_pool(x, weights)  # (B, C): sum_hw x * weights
        else:
            weights = x.new_full((b, 1, h * w), 1.0 / (h * w))
            context = x.mean((2, 3))
        self.expose("spatial", weights.reshape(b, 1, h, w))
        term = self.transform(context[:, :, None, None])
        if self.fusion == "add":
            out = x + term
        else:
            gate = torch.sigmoid(term)
            self.expose("channel", gate.reshape(b, c))
            out = x * gate
        return out.to(x.dtype)


# --------------------------------------------------------------------------------------
# Criss-cross attention (CCNet)
# --------------------------------------------------------------------------------------
@register(
    "criss_cross",
    kind="gate",
    paper="Huang et al. 2019, CCNet: Criss-Cross Attention for Semantic Segmentation",
    default_position="after_add",
    memory="linear",
)
class CrissCrossAttention(AttentionModule):
    """Recurrent criss-cross attention (Huang et al. 2019, section 3.2, eq. 1-2, figure 3).

    Each position u attends to the H + W - 1 positions of its row and column:
    ``H'_u = gamma * sum_{v in cross(u)} softmax_v(Q_u . K_v) V_v + H_u`` with Q, K 1x1 convs
    C -> C//reduction (at least 1; the paper uses C/8), V a 1x1 conv C -> C and a learned
    scalar gamma initialised to 0 (so the module starts as the identity). The position u
    itself lies on both its row and its column; it is counted once, as in the official
    implementation, which masks it with -inf in the vertical branch. ``recurrence`` applies
    the same module (shared weights) R times, R = 2 in the paper (RCCA), which lets every
    position reach every other. The segmentation head's convs around RCCA are not included.
    K has no bias: the official one adds q_u . b to every energy of u's softmax, which
    cancels. Memory per image: O(HW (H + W)).

    Identity start: gamma = 0, so every pass returns its input exactly (gamma receives
    the gradient).
    """

    has_residual = True
    identity_start = "gamma = 0"

    def __init__(self, channels: int, recurrence: int = 2, reduction: int = 8) -> None:
        super().__init__()
        self.recurrence = check_int("criss_cross", "recurrence", recurrence)
        self.reduction = check_int("criss_cross", "reduction", reduction)
        qk = max(channels // self.reduction, 1)
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def reset_to_identity(self) -> None:
        with torch.no_grad():
            self.gamma.zero_()

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        q, k, v = self.query(x), self.key(x), self.value(x)
        # energy_col[b, i, j, r] = q(i, j) . k(r, j); energy_row[b, i, j, s] = q(i, j) . k(i, s)
        energy_col = torch.einsum("bcij,bcrj->bijr", q, k)
        energy_row = torch.einsum("bcij,bcis->bijs", q, k)
        self_pos = torch.eye(h, dtype=torch.bool, device=x.device)[:, None, :]
        energy_col = energy_col.masked_fill(self_pos, float("-inf"))
        attn = torch.cat([energy_col, energy_row], dim=-1).softmax(dim=-1)
        att_col, att_row = attn[..., :h], attn[..., h:]
        out = torch.einsum("bijr,bcrj->bcij", att_col, v) + torch.einsum(
            "bijs,bcis->bcij", att_row, v
        )
        if self.record_maps:
            received = att_col.sum(1).transpose(1, 2) + att_row.sum(2)  # (B, H, W)
            self.expose("position", received[:, None] / (h * w))
        return self.gamma * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for _ in range(self.recurrence):
            out = self._attend(out)
        # einsum leaves a permuted layout; hand the next conv the input's memory format, or
        # it rounds differently (the identity start would then differ by ~1e-5 downstream)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return out.to(x.dtype).contiguous(memory_format=fmt)


# --------------------------------------------------------------------------------------
# DANet: position and channel attention
# --------------------------------------------------------------------------------------
@register(
    "danet",
    kind="gate",
    paper="Fu et al. 2019, Dual Attention Network for Scene Segmentation",
    default_position="after_add",
    memory="quadratic",
)
class DualAttention(AttentionModule):
    """Position (PAM) and channel (CAM) attention of DANet (Fu et al. 2019, section 3.2-3.3).

    PAM (eq. 1-2): ``E = alpha * V softmax(Q^T K)^T + x`` with Q, K 1x1 convs C -> C//reduction
    (the paper's C/8, at least 1), V a 1x1 conv C -> C and alpha a scalar initialised to 0.
    CAM (eq. 3-4): ``E = beta * softmax(X X^T) X + x`` computed on the input itself (no
    convs), beta initialised to 0. ``cam_energy='max_minus'`` (default) follows the official
    code, which feeds ``rowmax(X X^T) - X X^T`` to the softmax: by shift invariance this is
    softmax(-X X^T), i.e. it favours *dissimilar* channels; ``'plain'`` is the paper's eq. 3,
    softmax(X X^T).

    With both branches on the outputs are combined by ``merge``: ``sum`` (default) adds the
    two module outputs as the paper's fusion does, so the identity is counted twice and the
    module starts as 2x; ``mean`` halves the sum, so it starts as the identity (the same
    function family, alpha and beta rescaled). The segmentation head's 3x3 convs before and
    after each branch are not part of the gate. K has no bias (the official one is cancelled
    by the softmax over keys). Memory: O((HW)^2) for PAM, O(C^2) for CAM.

    Identity start: alpha = beta = 0, which is the identity with one branch or with
    ``merge='mean'``. With both branches and ``merge='sum'`` that is 2x, so there the exact
    blend of :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity` is used.
    """

    has_residual = True
    identity_start = "alpha = beta = 0 (mean, one branch); blend (sum)"

    def __init__(
        self,
        channels: int,
        use_position: bool = True,
        use_channel: bool = True,
        reduction: int = 8,
        merge: str = "sum",
        cam_energy: str = "max_minus",
    ) -> None:
        super().__init__()
        self.use_position = check_flag("danet", "use_position", use_position)
        self.use_channel = check_flag("danet", "use_channel", use_channel)
        check(
            self.use_position or self.use_channel,
            "danet needs at least one branch: options 'use_position' and 'use_channel' "
            "cannot both be false",
        )
        self.reduction = check_int("danet", "reduction", reduction)
        self.merge = check_choice("danet", "merge", merge, ("sum", "mean"))
        self.cam_energy = check_choice("danet", "cam_energy", cam_energy, ("max_minus", "plain"))
        if self.use_position:
            qk = max(channels // self.reduction, 1)
            self.query = nn.Conv2d(channels, qk, 1)
            self.key = nn.Conv2d(channels, qk, 1, bias=False)
            self.value = nn.Conv2d(channels, channels, 1)
            self.alpha = nn.Parameter(torch.zeros(1))
        if self.use_channel:
            self.beta = nn.Parameter(torch.zeros(1))

    def reset_to_identity(self) -> None:
        if self.use_position and self.use_channel and self.merge == "sum":
            super().reset_to_identity()
            return
        with torch.no_grad():
            for name in ("alpha", "beta"):
                if hasattr(self, name):
                    getattr(self, name).zero_()

    def _position(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k = self.query(x).flatten(2), self.key(x).flatten(2)
        attn = torch.einsum("bci,bcj->bij", q, k).softmax(dim=-1)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("position", _received(attn, (h, w)))
        out = torch.einsum("bij,bcj->bci", attn, self.value(x).flatten(2)).reshape(b, c, h, w)
        return self.alpha * out + x

    def _channel(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)
        energy = torch.einsum("bcn,bdn->bcd", flat, flat)
        if self.cam_energy == "max_minus":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        attn = energy.softmax(dim=-1)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("channel", attn.mean(1))
        out = torch.einsum("bcd,bdn->bcn", attn, flat).reshape(b, c, h, w)
        return self.beta * out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_position and self.use_channel:
            out = self._position(x) + self._channel(x)
            if self.merge == "mean":
                out = out / 2
        elif self.use_position:
            out = self._position(x)
        else:
            out = self._channel(x)
        return out.to(x.dtype)
