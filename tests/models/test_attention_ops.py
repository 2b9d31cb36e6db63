"""Attention ops and MACs of single modules against closed forms.

attnexp/models/costs.py counts two numbers (see its docstring): ``macs`` (products with a
weight: convs, linears) and ``attention_ops`` (products of two activations anywhere, plus,
inside an attention module, every other compute op at one op per output element, or per
input element for a reduction; views, copies, padding and adding a bias count nothing).

Each closed form below is derived from the module's forward, op by op, for one image
(B = 1) of C x H x W, N = HW positions; the counts scale with the batch B. Notation: r
the reduction, h = max(C // r, 1) the hidden width, k a kernel size.
"""

from __future__ import annotations

import pytest

from attnexp.attention import build_attention
from attnexp.models.costs import count_costs

SHAPES = [(1, 16, 8, 8), (2, 32, 6, 10), (1, 64, 7, 5)]


def se(C: int, N: int, r: int = 16) -> tuple[int, int]:
    """SE: z = mean_HW(x) [CN: reads CHW] -> fc1 [MACs C*h] -> ReLU [h] -> fc2 [MACs h*C]
    -> sigmoid [C] -> x * s [CN].  Ops 2CHW + C + C/r; MACs 2Ch (biases are free)."""
    h = max(C // r, 1)
    return 2 * C * N + C + h, 2 * C * h


def eca(C: int, N: int, k: int) -> tuple[int, int]:
    """ECA: mean_HW [CN] -> conv1d over channels [MACs C*k] -> sigmoid [C] -> x * s [CN].
    Ops 2CHW + C; MACs kC."""
    return 2 * C * N + C, C * k


def cbam(C: int, N: int, r: int = 16, k: int = 7) -> tuple[int, int]:
    """CBAM (channel first, avg+max pools, shared MLP, k x k spatial conv + BN):
    channel gate: mean_HW, max_HW [2CN]; the MLP twice [ReLU 2h; MACs 2*2Ch]; avg + max
    logits [C]; sigmoid [C]; y = x * Mc [CN].
    spatial gate on y: mean_C, max_C [2CN: reductions read CHW]; concat (free); k x k conv
    2 -> 1 [MACs 2k^2 N]; BN (eval) [N]; sigmoid [N]; y * Ms [CN].
    Ops 6CHW + 2C + 2h + 2HW; MACs 4Ch + 2k^2 HW."""
    h = max(C // r, 1)
    return 6 * C * N + 2 * C + 2 * h + 2 * N, 4 * C * h + 2 * k * k * N


def gc(C: int, N: int, ratio: float = 1 / 16) -> tuple[int, int]:
    """GC (attention pooling, add fusion): context conv C -> 1 [MACs CN]; softmax over
    positions [N]; context = x . weights, a product of two activations [CN]; transform:
    conv C -> h [MACs Ch], LayerNorm [h], ReLU [h], conv h -> C [MACs hC]; x + term [CN].
    Ops 2CHW + HW + 2h; MACs CHW + 2Ch."""
    h = max(int(C * ratio), 1)
    return 2 * C * N + N + 2 * h, C * N + 2 * C * h


def nonlocal_block(C: int, N: int) -> tuple[int, int]:
    """Non-local (embedded Gaussian, Ci = C/2, no subsampling): theta, phi, g 1x1 convs
    [MACs 3 C Ci N]; QK^T = theta^T phi [Ci N^2]; softmax over keys [N^2]; AV = attn g^T
    [Ci N^2]; W_z 1x1 conv [MACs Ci C N]; BN (eval) [CN]; + x [CN].
    Ops 2 Ci N^2 + N^2 + 2CHW; MACs 4 C Ci N.
    The map for visualisation (the attention's mean over queries, another N^2) is computed
    only while maps are recorded, as SimAM does: a forward that always computes it spends
    N^2 more per image in every training step."""
    ci = max(C // 2, 1)
    return 2 * ci * N * N + N * N + 2 * C * N, 4 * C * ci * N


def simam(C: int, N: int) -> tuple[int, int]:
    """SimAM: mu = mean_HW [CN]; x - mu [CN]; d = ()^2 [CN]; sum_HW d [CN]; / n [C];
    + lambda [C]; 4 * () [C]; d / () [CN]; + 0.5 [CN]; sigmoid [CN]; x * gate [CN].
    Ops 8CHW + 3C; no MACs (parameter-free)."""
    return 8 * C * N + 3 * C, 0


CASES = {
    "se": (lambda C: {}, lambda C, N: se(C, N)),
    "se_r4": (lambda C: {"reduction": 4}, lambda C, N: se(C, N, r=4)),
    "eca_k5": (lambda C: {"kernel_size": 5}, lambda C, N: eca(C, N, 5)),
    "eca_adaptive": (
        lambda C: {},
        lambda C, N: eca(C, N, {16: 3, 32: 3, 64: 3}[C]),  # eq. 12: C=16..64 -> k=3
    ),
    "cbam": (lambda C: {}, lambda C, N: cbam(C, N)),
    "cbam_k3": (lambda C: {"kernel_size": 3}, lambda C, N: cbam(C, N, k=3)),
    "gc": (lambda C: {}, lambda C, N: gc(C, N)),
    "nonlocal": (lambda C: {}, lambda C, N: nonlocal_block(C, N)),
    "simam": (lambda C: {}, lambda C, N: simam(C, N)),
}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", list(CASES))
def test_attention_ops_and_macs_match_the_closed_form(case: str, shape: tuple) -> None:
    options, closed_form = CASES[case]
    b, c, h, w = shape
    module = build_attention(case.split("_")[0], c, **options(c)).eval()
    costs = count_costs(module, shape)
    ops, macs = closed_form(c, h * w)
    assert (costs.attention_ops, costs.macs) == (b * ops, b * macs), (
        f"{case} at {shape}: counted attention_ops={costs.attention_ops:,} macs={costs.macs:,}; "
        f"closed form {b * ops:,} and {b * macs:,}"
    )
