"""Token-style attention family: BoTNet MHSA, external attention, ResT's EMSA.

The papers define these on token sequences (B, N, C); here each one is wrapped to take and
return (B, C, H, W) with N = H*W, so it can be placed like any other gate; BoTNet's MHSA is
also a conv-kind module (``mhsa``, replacing a 3x3 conv, with position embeddings of the
map's size) beside its gate form ``mhsa_gate``. Exposed maps (see :mod:`attnexp.attention.base`):
``position`` is the attention each key position *receives*, averaged over queries, shape
(B, heads, H_key, W_key), which keeps the exposed tensor O(HW) while the attention is
O((HW)^2).

Identity start (:func:`attnexp.attention.init_identity`): external attention with its
residual zeroes its output BN; MHSA and EMSA have no residual, so they take the exact blend
of :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.options import check_choice, check_flag, check_heads, check_int
from attnexp.attention.registry import register
from attnexp.errors import ConfigError

__all__ = ["BoTMHSA", "EfficientMHSA", "ExternalAttention", "MHSA2d"]


def _received(attn: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Mean over queries of a (B, heads, N_query, N_key) attention -> (B, heads, *grid)."""
    return attn.mean(2).reshape(attn.shape[0], attn.shape[1], *shape)


# --------------------------------------------------------------------------------------
# BoTNet multi-head self-attention
# --------------------------------------------------------------------------------------
_POSITIONS = ("relative", "absolute", "none")


class _BoTAttention(AttentionModule):
    """The attention of BoTNet's MHSA layer (Srinivas et al. 2021, figure 4), shared by the
    conv-kind ``mhsa`` and the gate ``mhsa_gate``.

    q, k, v are 1x1 convs C_in -> C_out without bias (split into ``heads`` of d = C_out/heads),
    q is scaled by d^-1/2, and the logits are ``q k^T + q r^T``. With ``position='relative'``
    r is the sum of a height and a width relative embedding (``r_{p-x}^H + r_{q-y}^W`` for
    query (x, y) and key (p, q), shared by the heads, as the official code); with
    ``'absolute'`` a learned height plus width embedding of the key position; with ``'none'``
    content logits only. The output is the concatenated heads (no output projection: in
    BoTNet the following 1x1 conv does that). The tables have ``2 * rows - 1`` (relative) or
    ``rows`` (absolute) entries per axis and cover maps up to ``rows`` per side. Init as the
    official code: projections N(0, 0.01), embeddings N(0, d^-1/2).
    """

    def _setup(
        self, name: str, c_in: int, c_out: int, heads: int, position: str, rows: int
    ) -> None:
        self.heads = check_heads(name, c_out, heads)
        self.position = check_choice(name, "position", position, _POSITIONS)
        self.rows = rows
        self.head_dim = c_out // self.heads
        self.qkv = nn.Conv2d(c_in, 3 * c_out, 1, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.01)
        n = {"relative": 2 * rows - 1, "absolute": rows}.get(self.position)
        if n is not None:
            std = self.head_dim**-0.5
            self.height_embedding = nn.Parameter(torch.randn(n, self.head_dim) * std)
            self.width_embedding = nn.Parameter(torch.randn(n, self.head_dim) * std)

    def _relative(self, length: int, table: torch.Tensor) -> torch.Tensor:
        """(length, length, d): row [i, j] is the embedding of offset j - i."""
        pos = torch.arange(length, device=table.device)
        return table[pos[None, :] - pos[:, None] + self.rows - 1]

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.head_dim, h, w).unbind(1)
        q = q * self.head_dim**-0.5
        logits = torch.einsum("bndxy,bndpq->bnxypq", q, k)
        if self.position == "relative":
            rel_w = self._relative(w, self.width_embedding)  # [y, q]
            rel_h = self._relative(h, self.height_embedding)  # [x, p]
            logits = logits + torch.einsum("bndxy,yqd->bnxyq", q, rel_w)[:, :, :, :, None, :]
            logits = logits + torch.einsum("bndxy,xpd->bnxyp", q, rel_h)[..., None]
        elif self.position == "absolute":
            emb = self.height_embedding[:h, None, :] + self.width_embedding[None, :w, :]
            logits = logits + torch.einsum("bndxy,pqd->bnxypq", q, emb)
        attn = logits.reshape(b, self.heads, h * w, h * w).softmax(dim=-1)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("position", _received(attn, (h, w)))
        out = torch.einsum("bnij,bndj->bndi", attn, v.reshape(b, self.heads, self.head_dim, -1))
        return out.reshape(b, self.heads * self.head_dim, h, w).to(x.dtype)


@register(
    "mhsa",
    kind="conv",
    paper="Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition",
    memory="quadratic",
)
class BoTMHSA(_BoTAttention):
    """BoTNet's MHSA layer in place of a 3x3 conv (Srinivas et al. 2021, figure 4, section 3).

    ``conv=mhsa`` with ``conv.stages=[4]`` on resnet50 is BoT50: the 3x3 convs of the last
    stage become MHSA (the BN + ReLU after them stay, as in the paper). A stride is applied
    after the attention by a ``stride x stride`` average pooling (BoTNet's first c5 block: 2x2
    average pooling with stride 2 after MHSA; ceil mode, so odd maps keep a padded 3x3 conv's
    output size). Relative position embeddings have the size of the map: the placement
    fills ``feature_size`` from ``image_size`` at the replaced conv's input, and a map of
    another size is a ConfigError (the model was built for one input size). Without
    ``feature_size`` (a module built by hand) the tables cover maps up to ``max_size`` and
    are sliced. No residual (the block's shortcut is the residual).

    Args:
        heads: number of heads (paper: 4); must divide out_channels.
        position: relative (paper) | absolute | none.
        feature_size: side of the square input map the position embeddings are built for;
            null = filled in by the placement from image_size.
        max_size: with feature_size null, the largest map side the embeddings cover.
    """

    includes_norm_act: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        heads: int = 4,
        position: str = "relative",
        feature_size: int | None = None,
        max_size: int = 64,
    ) -> None:
        super().__init__()
        self.stride = check_int("mhsa", "stride", stride)
        self.max_size = check_int("mhsa", "max_size", max_size)
        self.feature_size = (
            None if feature_size is None else check_int("mhsa", "feature_size", feature_size)
        )
        rows = self.max_size if self.feature_size is None else self.feature_size
        self._setup("mhsa", in_channels, out_channels, heads, position, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.feature_size is not None and self.position != "none":
            if (h, w) != (self.feature_size, self.feature_size):
                raise ConfigError(
                    f"mhsa was built for {self.feature_size}x{self.feature_size} maps (its "
                    f"relative position embeddings have that size; feature_size comes from "
                    f"model.image_size) but got a {h}x{w} map; feed images of the size the "
                    "model was built for or build it with that image_size"
                )
        elif self.position != "none" and max(h, w) > self.max_size:
            raise ConfigError(
                f"mhsa got a {h}x{w} map but option 'max_size' is {self.max_size}; "
                f"set max_size >= {max(h, w)} (position embeddings cover max_size per axis)"
            )
        out = self._attend(x)
        if self.stride > 1:
            out = F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True)
        return out


@register(
    "mhsa_gate",
    kind="gate",
    paper="Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition (as a gate)",
    default_position="after_conv2",
    memory="quadratic",
)
class MHSA2d(_BoTAttention):
    """BoTNet's MHSA as a gate C -> C that keeps the block's 3x3 conv (not BoTNet: for
    BoTNet itself use the conv-kind ``mhsa``, which replaces the 3x3 conv).

    Default position ``after_conv2`` (after the 3x3 conv unit). The embedding tables cover
    maps up to ``max_size`` per side and are sliced for the current map, so any size up to
    it works; larger maps raise ConfigError. No residual.

    Args:
        heads: number of heads (paper: 4); must divide channels.
        position: relative (paper) | absolute | none.
        max_size: the largest map side the position embeddings cover.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        position: str = "relative",
        max_size: int = 64,
    ) -> None:
        super().__init__()
        self.max_size = check_int("mhsa_gate", "max_size", max_size)
        self._setup("mhsa_gate", channels, channels, heads, position, self.max_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.position != "none" and max(h, w) > self.max_size:
            raise ConfigError(
                f"mhsa_gate got a {h}x{w} map but option 'max_size' is {self.max_size}; "
                f"set max_size >= {max(h, w)} (position embeddings cover max_size per axis)"
            )
        return self._attend(x)


# --------------------------------------------------------------------------------------
# External attention
# --------------------------------------------------------------------------------------
@register(
    "external",
    kind="gate",
    paper=(
        "Guo et al. 2021, Beyond Self-attention: External Attention using Two Linear Layers "
        "for Visual Tasks"
    ),
    default_position="after_add",
    memory="linear",
)
class ExternalAttention(AttentionModule):
    """External attention block (Guo et al. 2021, eq. 5-7 and algorithm 1).

    ``A = Norm(F M_k^T)``, ``F_out = A M_v`` with two external memories M_k (C -> S) and M_v
    (S -> C), linear layers without bias (S = ``memory_size``, 64 in the paper). ``norm``:

    * ``double`` (the paper's, eq. 7): a softmax over the N = HW positions for each memory
      unit, then an L1 normalisation over the S memory units for each position
      (eps 1e-9 as the official code);
    * ``softmax``: a single softmax over the S memory units (eq. 6, the paper's ablation).

    The block is the official segmentation one: 1x1 conv in, EA, 1x1 conv out (no bias) +
    BN, plus the identity when ``residual`` is True (default; then the module carries its
    own residual and the registry flag says so). The conv in has a bias only with
    ``norm='softmax'``: under the double normalisation the official bias only shifts each
    memory unit's logits by a constant over positions, which the softmax cancels. The official block also applies
    a ReLU after the sum; that ReLU is left out so the gate can sit before a residual add
    (deviation, stated). Convs use the official N(0, sqrt(2 / fan_out)) init; the official
    code additionally makes M_v share storage with M_k^T, which is not reproduced (M_v is an
    independent parameter). The BN follows PyTorch's rule: a batch of one 1x1 map cannot be
    normalised in training.

    Exposed map ``spatial``: (B, S, H, W), the normalised attention of each memory unit.

    Identity start: with ``residual`` the BN after the output conv gets weight 0 and bias
    0, so the block adds exactly 0 (the BN weight receives the gradient); without it the
    exact blend of :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
    """

    has_residual = True
    identity_start = "out BN weight, bias = 0 (residual); blend"

    def __init__(
        self,
        channels: int,
        memory_size: int = 64,
        norm: str = "double",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.memory_size = check_int("external", "memory_size", memory_size)
        self.norm = check_choice("external", "norm", norm, ("double", "softmax"))
        self.residual = check_flag("external", "residual", residual)
        self.has_residual = self.residual
        self.conv_in = nn.Conv2d(channels, channels, 1, bias=self.norm == "softmax")
        self.memory_key = nn.Conv2d(channels, self.memory_size, 1, bias=False)  # M_k
        self.memory_value = nn.Conv2d(self.memory_size, channels, 1, bias=False)  # M_v
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        for conv in (self.conv_in, self.memory_key, self.memory_value, self.conv_out):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def reset_to_identity(self) -> None:
        if not self.residual:
            super().reset_to_identity()
            return
        with torch.no_grad():
            self.bn.weight.zero_()
            self.bn.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        logits = self.memory_key(self.conv_in(x)).flatten(2)  # (B, S, N)
        if self.norm == "double":
            attn = logits.softmax(dim=-1)
            attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
        else:
            attn = logits.softmax(dim=1)
        attn = attn.reshape(b, self.memory_size, h, w)
        self.expose("spatial", attn)
        out = self.bn(self.conv_out(self.memory_value(attn)))
        if self.residual:
            out = out + x
        return out.to(x.dtype)


# --------------------------------------------------------------------------------------
# ResT efficient multi-head self-attention
# --------------------------------------------------------------------------------------
@register(
    "emsa",
    kind="gate",
    paper="Zhang & Yang 2021, ResT: An Efficient Transformer for Visual Recognition",
    default_position="after_conv2",
    memory="quadratic",
)
class EfficientMHSA(AttentionModule):
    """Efficient multi-head self-attention of ResT (Zhang & Yang 2021, section 3.1, eq. 3).

    ``EMSA(Q, K, V) = IN(Softmax(Conv(Q K^T / sqrt(d_k)))) V`` followed by a linear output
    projection. Q = x W_q; K and V come from the input reduced by a depth-wise conv (kernel
    s+1, stride s, padding s//2, s = ``sr_ratio``) and a LayerNorm, so the attention is
    N x N/s^2. ``transform`` adds the paper's 1x1 conv across heads before the softmax and the
    instance norm (no affine) after it; as in the official code it is only active with more
    than one head. Positional encoding: none (ResT's PA lives in its patch embedding).

    Biases: the released ResT models use qkv_bias=True, but only the biases that can change
    the output are created: q's always; v's and the LayerNorm's shift only without the
    transform (with it, every row of the instance-normalised attention sums to exactly 0, so
    anything added to all values cancels); never k's or the head conv's (a constant over the
    softmax axis). The function is the official one; the parameter count is lower by those
    dead biases (3C + heads at the defaults: k, v, LayerNorm shift, head conv).

    Residual: none. ResT wraps EMSA in a pre-norm transformer block, x + EMSA(LN(x)) followed
    by an MLP; inside a ResNet block the host block provides the residual, so this gate is
    EMSA alone (has_residual False). Init: truncated normal std 0.02, zero bias (official).
    The instance norm is written out (same formula as InstanceNorm2d) so that a single-
    element attention map (a 1x1 input) gives 0 instead of an error in training.

    Exposed map ``position``: (B, heads, h', w') on the reduced key grid, the mean over
    queries of the attention actually applied; with the transform that is the instance-
    normalised map, so it is signed and has zero mean (not a distribution).

    Identity start: no residual of its own, so the exact blend of
    :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        sr_ratio: int = 2,
        transform: bool = True,
    ) -> None:
        super().__init__()
        self.heads = check_heads("emsa", channels, heads)
        self.sr_ratio = check_int("emsa", "sr_ratio", sr_ratio)
        self.transform = check_flag("emsa", "transform", transform)
        self.head_dim = channels // self.heads
        self.apply_transform = self.transform and self.heads > 1
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels, bias=False)
        if not self.apply_transform:
            self.v_bias = nn.Parameter(torch.zeros(channels))
        self.proj = nn.Linear(channels, channels)
        if self.sr_ratio > 1:
            s = self.sr_ratio
            self.sr = nn.Conv2d(
                channels, channels, s + 1, stride=s, padding=s // 2, groups=channels
            )
            self.sr_norm = nn.LayerNorm(channels, bias=not self.apply_transform)
        if self.apply_transform:
            self.transform_conv = nn.Conv2d(self.heads, self.heads, 1, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q = self.q(tokens).reshape(b, h * w, self.heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            s = self.sr_ratio
            grid = tuple((n + 2 * (s // 2) - (s + 1)) // s + 1 for n in (h, w))
            if min(grid) < 1:
                raise ConfigError(
                    f"emsa: option 'sr_ratio'={s} cannot reduce a {h}x{w} map (the depth-wise "
                    f"conv has kernel {s + 1}, padding {s // 2}); use a smaller sr_ratio "
                    f"(even values work for any size)"
                )
            reduced = self.sr(x)
            kv_tokens = self.sr_norm(reduced.flatten(2).transpose(1, 2))
        else:
            grid, kv_tokens = (h, w), tokens
        kv = self.kv(kv_tokens)
        if not self.apply_transform:
            kv = kv + torch.cat([kv.new_zeros(c), self.v_bias])
        k, v = kv.reshape(b, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bnid,bnjd->bnij", q, k) * self.head_dim**-0.5
        if self.apply_transform:
            attn = self.transform_conv(attn).softmax(dim=-1)
            attn = attn.to(torch.promote_types(attn.dtype, torch.float32))
            var, mean = torch.var_mean(attn, dim=(2, 3), unbiased=False, keepdim=True)
            attn = (attn - mean) * torch.rsqrt(var + 1e-5)
        else:
            attn = attn.softmax(dim=-1)
        if self.record_maps:  # the map costs a pass over the activations
            self.expose("position", _received(attn, grid))
        out = torch.einsum("bnij,bnjd->bnid", attn, v).transpose(1, 2).reshape(b, h * w, c)
        out = self.proj(out).transpose(1, 2).reshape(b, c, h, w)
        return out.to(x.dtype)
