"""Token-style attention family: BoTNet MHSA, external attention, ResT's EMSA.

The papers define these on token sequences (B, N, C); here each one is wrapped to take and
return (B, C, H, W) with N = H*W, so it can be placed like any other gate. None of them
needs a fixed input size at construction. Exposed maps (see :mod:`attnexp.attention.base`):
``position`` is the attention each key position *receives*, averaged over queries, shape
(B, heads, H_key, W_key), which keeps the exposed tensor O(HW) while the attention is
O((HW)^2).
"""

from __future__ import annotations

import torch
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.registry import register
from attnexp.errors import ConfigError, check, choices_error

__all__ = ["EfficientMHSA", "ExternalAttention", "MHSA2d"]


def _choice(option: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise choices_error(f"value for option {option!r}:", value, valid)
    return value


def _positive_int(option: str, value: object) -> int:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"option {option!r} must be an integer >= 1, got {value!r}",
    )
    return value  # type: ignore[return-value]


def _flag(option: str, value: object) -> bool:
    check(isinstance(value, bool), f"option {option!r} must be true or false, got {value!r}")
    return value  # type: ignore[return-value]


def _heads(module: str, channels: int, heads: object) -> int:
    heads = _positive_int("heads", heads)
    if channels % heads:
        valid = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ConfigError(
            f"{module}: option 'heads'={heads} does not divide channels={channels}; valid "
            f"heads for {channels} channels: {', '.join(map(str, valid))}"
        )
    return heads


def _received(attn: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Mean over queries of a (B, heads, N_query, N_key) attention -> (B, heads, *grid)."""
    return attn.mean(2).reshape(attn.shape[0], attn.shape[1], *shape)


# --------------------------------------------------------------------------------------
# BoTNet multi-head self-attention
# --------------------------------------------------------------------------------------
_POSITIONS = ("relative", "absolute", "none")


@register(
    "mhsa",
    kind="gate",
    paper="Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition",
    residual=False,
    default_position="after_conv2",
    memory="quadratic",
)
class MHSA2d(AttentionModule):
    """BoTNet's 2-D multi-head self-attention (Srinivas et al. 2021, figure 4).

    q, k, v are 1x1 convs C -> C without bias (split into ``heads`` of d = C/heads), q is
    scaled by d^-1/2, and the logits are ``q k^T + q r^T``. With ``position='relative'`` r is
    the sum of a height and a width relative embedding (``r_{p-x}^H + r_{q-y}^W`` for query
    (x, y) and key (p, q), shared by the heads, as the official code), with
    ``'absolute'`` a learned height plus width embedding of the key position, with
    ``'none'`` content logits only. The output is the concatenated heads (no output
    projection: in BoTNet the following 1x1 conv does that), and there is no residual: in
    BoTNet this layer *replaces* the 3x3 conv of a bottleneck, so its default position is
    ``after_conv2``.

    To work for any H, W without creating parameters on the fly, the embedding tables cover
    offsets up to ``max_size`` (2*max_size - 1 rows per axis for relative, max_size for
    absolute) and are sliced for the current map; larger maps raise ConfigError. Init as the
    official code: projections N(0, 0.01), embeddings N(0, d^-1/2).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        position: str = "relative",
        max_size: int = 64,
    ) -> None:
        super().__init__()
        self.heads = _heads("mhsa", channels, heads)
        self.position = _choice("position", position, _POSITIONS)
        self.max_size = _positive_int("max_size", max_size)
        self.head_dim = channels // self.heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.01)
        rows = {"relative": 2 * self.max_size - 1, "absolute": self.max_size}.get(self.position)
        if rows is not None:
            std = self.head_dim**-0.5
            self.height_embedding = nn.Parameter(torch.randn(rows, self.head_dim) * std)
            self.width_embedding = nn.Parameter(torch.randn(rows, self.head_dim) * std)

    def _relative(self, length: int, table: torch.Tensor) -> torch.Tensor:
        """(length, length, d): row [i, j] is the embedding of offset j - i."""
        pos = torch.arange(length, device=table.device)
        return table[pos[None, :] - pos[:, None] + self.max_size - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.position != "none" and (h > self.max_size or w > self.max_size):
            raise ConfigError(
                f"mhsa got a {h}x{w} map but option 'max_size' is {self.max_size}; "
                f"set max_size >= {max(h, w)} (position embeddings cover max_size per axis)"
            )
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
        self.expose("position", _received(attn, (h, w)))
        out = torch.einsum("bnij,bndj->bndi", attn, v.reshape(b, self.heads, self.head_dim, -1))
        return out.reshape(b, c, h, w).to(x.dtype)


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
    residual=True,
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
    """

    has_residual = True

    def __init__(
        self,
        channels: int,
        memory_size: int = 64,
        norm: str = "double",
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.memory_size = _positive_int("memory_size", memory_size)
        self.norm = _choice("norm", norm, ("double", "softmax"))
        self.residual = _flag("residual", residual)
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
    residual=False,
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
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        sr_ratio: int = 2,
        transform: bool = True,
    ) -> None:
        super().__init__()
        self.heads = _heads("emsa", channels, heads)
        self.sr_ratio = _positive_int("sr_ratio", sr_ratio)
        self.transform = _flag("transform", transform)
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
        self.expose("position", _received(attn, grid))
        out = torch.einsum("bnij,bnjd->bnid", attn, v).transpose(1, 2).reshape(b, h * w, c)
        out = self.proj(out).transpose(1, 2).reshape(b, c, h, w)
        return out.to(x.dtype)
