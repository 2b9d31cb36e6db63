"""Hybrid family (CBAM, BAM, coord, triplet, SimAM, SGE, SA, PSA, A^2): counts, equations.

The equation tests set known weights and compare the module with a direct evaluation of
the paper's formulas written here with plain torch ops (not the module's helpers).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from attnexp.attention import build_attention, get_spec
from attnexp.errors import ConfigError

EPS = 1e-5  # BatchNorm's default eps


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def set_bn(bn: torch.nn.Module, n: int) -> tuple[torch.Tensor, ...]:
    """Give an eval-mode BN known statistics and affine parameters; return them."""
    rm, rv = torch.randn(n), torch.rand(n) + 0.5
    w, b = torch.randn(n), torch.randn(n)
    with torch.no_grad():
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    return rm, rv, w, b


def bn_eval(x: torch.Tensor, stats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """BatchNorm with running statistics over dim 1, written out."""
    rm, rv, w, b = (s.reshape(1, -1, *([1] * (x.dim() - 2))) for s in stats)
    return (x - rm) / torch.sqrt(rv + EPS) * w + b


def sigmoid(t: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-t))


def se_params(C: int, r: int) -> int:
    c = max(C // r, 1)
    return 2 * C * c + c + C


def bam_params(C: int, r: int) -> int:
    c = max(C // r, 1)
    return (2 * C * c + 3 * c + C) + (C * c + 18 * c * c + 10 * c + 1)


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cbam", 8_564),
        ("cbam_channel", 8_464),
        ("cbam_spatial", 100),
        ("bam", 17_361),
        ("simam", 0),
        ("coord", 6_680),
        ("triplet", 300),
        ("sge", 128),
        ("shuffle", 12),
        ("polarized", 131_840),
        ("a2", 65_856),
    ],
)
def test_parameter_count_at_256_with_defaults(name: str, expected: int) -> None:
    assert n_params(build_attention(name, 256)) == expected


@pytest.mark.parametrize("C", [16, 24, 64, 256, 512])
@pytest.mark.parametrize("r", [4, 8, 16])
@pytest.mark.parametrize("k", [3, 7])
def test_cbam_params_follow_the_closed_form(C: int, r: int, k: int) -> None:
    # SE's MLP + k x k conv 2->1 without bias + BN(1)
    assert n_params(build_attention("cbam", C, reduction=r, kernel_size=k)) == se_params(C, r) + (
        2 * k * k + 2
    )
    # table 2's learned 1x1 conv C->1 instead of [avg; max]
    conv1x1 = build_attention("cbam", C, reduction=r, kernel_size=k, spatial_pool="conv1x1")
    assert n_params(conv1x1) == se_params(C, r) + C + k * k + 2
    one_pool = build_attention("cbam", C, reduction=r, kernel_size=k, spatial_pool="max")
    assert n_params(one_pool) == se_params(C, r) + k * k + 2


@pytest.mark.parametrize("C", [16, 64, 256, 512, 1024])
@pytest.mark.parametrize("r", [4, 16])
def test_bam_params_follow_the_closed_form(C: int, r: int) -> None:
    assert n_params(build_attention("bam", C, reduction=r)) == bam_params(C, r)
    c = max(C // r, 1)
    channel_only = build_attention("bam", C, reduction=r, use_spatial=False)
    spatial_only = build_attention("bam", C, reduction=r, use_channel=False)
    assert n_params(channel_only) == 2 * C * c + 3 * c + C
    assert n_params(spatial_only) == C * c + 18 * c * c + 10 * c + 1


@pytest.mark.parametrize("C", [16, 24, 256, 1024])
def test_other_closed_forms(C: int) -> None:
    mid = max(8, C // 32)
    assert n_params(build_attention("coord", C)) == 3 * C * mid + 3 * mid + 2 * C
    assert n_params(build_attention("triplet", C)) == 3 * (2 * 49 + 2)
    assert n_params(build_attention("triplet", C, no_spatial=True)) == 2 * (2 * 49 + 2)
    half = max(C // 2, 1)
    assert n_params(build_attention("polarized", C)) == 4 * C * half + 3 * C
    m = max(C // 4, 1)
    assert n_params(build_attention("a2", C)) == 4 * C * m + m + C
    sge = build_attention("sge", C)
    assert n_params(sge) == 2 * sge.groups
    sa = build_attention("shuffle", C)
    assert n_params(sa) == 6 * C // (2 * sa.groups)
    assert n_params(build_attention("simam", C)) == 0


# -------------------------------------------------------------------------- equations
def _cbam_with_known_weights(C: int, r: int, **options: object):
    module = build_attention("cbam", C, reduction=r, **options).eval()
    w1, b1 = torch.randn(C // r, C), torch.randn(C // r)
    w2, b2 = torch.randn(C, C // r), torch.randn(C)
    conv = torch.randn(1, 2, 7, 7) * 0.2
    cg, sg = module.channel_gate, module.spatial_gate
    with torch.no_grad():
        cg.fc1.weight.copy_(w1)
        cg.fc1.bias.copy_(b1)
        cg.fc2.weight.copy_(w2)
        cg.fc2.bias.copy_(b2)
        sg.conv.weight.copy_(conv)
    bn = set_bn(sg.bn, 1)

    def mlp(z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(z @ w1.T + b1, min=0) @ w2.T + b2

    def mc(f: torch.Tensor) -> torch.Tensor:  # eq. 2
        avg = f.sum(dim=(2, 3)) / (f.shape[2] * f.shape[3])
        mx = f.flatten(2).max(dim=2).values
        return sigmoid(mlp(avg) + mlp(mx))[:, :, None, None]

    def ms(f: torch.Tensor) -> torch.Tensor:  # eq. 3 (+ the official BN)
        pooled = torch.cat([f.mean(dim=1, keepdim=True), f.max(dim=1, keepdim=True).values], 1)
        return sigmoid(bn_eval(F.conv2d(pooled, conv, padding=3), bn))

    return module, mc, ms


def test_cbam_matches_the_paper_equations_channel_first() -> None:
    module, mc, ms = _cbam_with_known_weights(8, 2)
    x = torch.randn(2, 8, 6, 5)
    f1 = mc(x) * x  # eq. 1
    f2 = ms(f1) * f1
    torch.testing.assert_close(module(x), f2)


def test_cbam_spatial_first_and_parallel() -> None:
    x = torch.randn(2, 8, 5, 7)
    module, mc, ms = _cbam_with_known_weights(8, 2, order="spatial_first")
    f1 = ms(x) * x
    torch.testing.assert_close(module(x), mc(f1) * f1)
    module, mc, ms = _cbam_with_known_weights(8, 2, order="parallel")
    torch.testing.assert_close(module(x), x * mc(x) * ms(x))


def test_cbam_channel_with_avg_pool_is_se() -> None:
    # CBAM table 1: the AvgPool row is SE.
    se = build_attention("se", 32)
    gate = build_attention("cbam_channel", 32, channel_pool="avg")
    gate.channel_gate.load_state_dict(se.state_dict())
    x = torch.randn(2, 32, 4, 3)
    torch.testing.assert_close(gate(x), se(x))


def test_cbam_gates_alone_share_cbam_parameter_names() -> None:
    cbam = set(build_attention("cbam", 32).state_dict())
    channel = set(build_attention("cbam_channel", 32).state_dict())
    spatial = set(build_attention("cbam_spatial", 32).state_dict())
    assert channel | spatial == cbam and not channel & spatial


def test_cbam_switches() -> None:
    x = torch.randn(2, 16, 4, 4)
    channel_only = build_attention("cbam", 16, use_spatial=False).eval()
    assert channel_only.spatial_gate is None
    expected = x * channel_only.channel_gate(x)[:, :, None, None]
    torch.testing.assert_close(channel_only(x), expected)
    spatial_only = build_attention("cbam", 16, use_channel=False).eval()
    torch.testing.assert_close(spatial_only(x), x * spatial_only.spatial_gate(x))
    with pytest.raises(ConfigError, match="use_channel"):
        build_attention("cbam", 16, use_channel=False, use_spatial=False)


def test_cbam_zero_init_spatial_bn_starts_the_spatial_gate_at_one_half() -> None:
    module = build_attention("cbam_spatial", 16, zero_init_spatial_bn=True).eval()
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(module(x), 0.5 * x)
    default = build_attention("cbam_spatial", 16)
    assert torch.equal(default.spatial_gate.bn.weight, torch.ones(1))


def test_cbam_has_no_residual_and_a_7x7_kernel() -> None:
    spec = get_spec("cbam")
    assert spec.residual is False and spec.option_defaults()["kernel_size"] == 7
    module = build_attention("cbam", 16)
    assert module.spatial_gate.conv.kernel_size == (7, 7)


@pytest.mark.parametrize("combine", ["sum", "product"])
def test_bam_matches_the_paper_equations(combine: str) -> None:
    C, r, d = 8, 2, 2
    c = C // r
    module = build_attention("bam", C, reduction=r, dilation=d, combine=combine).eval()
    cg, sg = module.channel_gate, module.spatial_gate
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    bn_c = set_bn(cg[1], c)
    bn_s = [set_bn(sg[i], c) for i in (1, 4, 7)]
    x = torch.randn(2, C, 7, 6)
    # eq. 3: Mc = BN(W1 (W0 AvgPool(F) + b0) + b1), with BN+ReLU after the hidden layer
    hidden = torch.clamp(bn_eval(x.mean(dim=(2, 3)) @ cg[0].weight.T + cg[0].bias, bn_c), min=0)
    m_c = (hidden @ cg[3].weight.T + cg[3].bias)[:, :, None, None]
    # eq. 4: Ms = f1x1(f3x3(f3x3(f1x1(F)))), dilated 3x3 convs with padding = dilation
    s = torch.clamp(bn_eval(F.conv2d(x, sg[0].weight, sg[0].bias), bn_s[0]), min=0)
    for conv, bn in ((sg[3], bn_s[1]), (sg[6], bn_s[2])):
        s = F.conv2d(s, conv.weight, conv.bias, padding=d, dilation=d)
        s = torch.clamp(bn_eval(s, bn), min=0)
    m_s = F.conv2d(s, sg[9].weight, sg[9].bias)
    logits = m_c + m_s if combine == "sum" else m_c * m_s
    expected = x * (1 + sigmoid(logits))  # eq. 1-2: F' = F + F * M(F)
    torch.testing.assert_close(module(x), expected)


def test_bam_is_a_stage_module_without_additive_residual() -> None:
    spec = get_spec("bam")
    assert spec.kind == "stage" and spec.default_position == "between_stages"
    assert spec.residual is False
    assert spec.option_defaults()["combine"] == "sum"


@pytest.mark.parametrize("size", [(7, 7), (3, 3), (1, 1), (9, 4)])
def test_bam_dilated_convs_keep_the_map_size(size: tuple[int, int]) -> None:
    module = build_attention("bam", 64).eval()
    captured: list[torch.Size] = []
    module.spatial_gate.register_forward_hook(lambda m, i, o: captured.append(o.shape))
    module(torch.randn(2, 64, *size))
    assert captured == [torch.Size((2, 1, *size))]


def test_bam_batch_of_one_in_training_leaves_bn1d_stats_alone() -> None:
    module = build_attention("bam", 64).train()
    bn1d = module.channel_gate[1]
    out = module(torch.randn(1, 64, 5, 5))
    assert out.shape == (1, 64, 5, 5)
    assert int(bn1d.num_batches_tracked) == 0
    module(torch.randn(2, 64, 5, 5))
    assert int(bn1d.num_batches_tracked) == 1


def test_simam_matches_the_paper_equations() -> None:
    lam = 1e-4
    x = torch.randn(2, 3, 4, 5)
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).sum(dim=(2, 3), keepdim=True) / (4 * 5 - 1)  # over the n = M-1 others
    inv_e = (x - mu) ** 2 / (4 * (var + lam)) + 0.5  # eq. 5 (inverse of the minimal energy)
    torch.testing.assert_close(build_attention("simam", 3)(x), x * sigmoid(inv_e))


def test_simam_on_a_1x1_map_is_finite() -> None:
    x = torch.randn(2, 4, 1, 1, requires_grad=True)
    out = build_attention("simam", 4)(x)
    out.sum().backward()
    torch.testing.assert_close(out, x * sigmoid(torch.tensor(0.5)))
    assert torch.isfinite(x.grad).all()


def test_triplet_matches_the_paper_equations() -> None:
    module = build_attention("triplet", 4).eval()
    branches = {name: getattr(module, name) for name in ("cw", "hc", "hw")}
    weights, stats = {}, {}
    for name, gate in branches.items():
        weights[name] = torch.randn(1, 2, 7, 7) * 0.3
        with torch.no_grad():
            gate.conv.weight.copy_(weights[name])
        stats[name] = set_bn(gate.bn, 1)
    x = torch.randn(2, 4, 5, 6)

    def branch(t: torch.Tensor, name: str) -> torch.Tensor:  # Z-pool over dim 1, conv, BN
        z = torch.cat([t.max(dim=1, keepdim=True).values, t.mean(dim=1, keepdim=True)], 1)
        return sigmoid(bn_eval(F.conv2d(z, weights[name], padding=3), stats[name]))

    # rotate, attend, rotate back (official permutations), then average the three
    y_cw = (x.permute(0, 2, 1, 3) * branch(x.permute(0, 2, 1, 3), "cw")).permute(0, 2, 1, 3)
    y_hc = (x.permute(0, 3, 2, 1) * branch(x.permute(0, 3, 2, 1), "hc")).permute(0, 3, 2, 1)
    y_hw = x * branch(x, "hw")
    torch.testing.assert_close(module(x), (y_cw + y_hc + y_hw) / 3)


def test_coord_matches_the_paper_equations() -> None:
    C, H, W = 16, 5, 7
    module = build_attention("coord", C).eval()
    bn = set_bn(module.bn1, 8)
    x = torch.randn(2, C, H, W)
    z_h = x.mean(dim=3)  # eq. 4: (B, C, H)
    z_w = x.mean(dim=2)  # eq. 5: (B, C, W)
    w1, b1 = module.conv1.weight.reshape(8, C), module.conv1.bias
    f = torch.cat([z_h, z_w], dim=2)  # (B, C, H+W)
    f = torch.einsum("mc,bcl->bml", w1, f) + b1[:, None]
    f = bn_eval(f, bn)
    f = f * torch.clamp(f + 3, 0, 6) / 6  # eq. 7, h-swish
    f_h, f_w = f[:, :, :H], f[:, :, H:]
    wh, bh = module.conv_h.weight.reshape(C, 8), module.conv_h.bias
    ww, bw = module.conv_w.weight.reshape(C, 8), module.conv_w.bias
    g_h = sigmoid(torch.einsum("cm,bml->bcl", wh, f_h) + bh[:, None])  # eq. 8
    g_w = sigmoid(torch.einsum("cm,bml->bcl", ww, f_w) + bw[:, None])
    expected = x * g_h[:, :, :, None] * g_w[:, :, None, :]  # eq. 9
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_polarized_matches_the_paper_equations(mode: str) -> None:
    C, H, W = 8, 3, 5
    module = build_attention("polarized", C, mode=mode).eval()
    with torch.no_grad():
        module.ch_norm.weight.normal_()
        module.ch_norm.bias.normal_()
    wv, wq = module.ch_v.weight.reshape(C // 2, C), module.ch_q.weight.reshape(1, C)
    wz = module.ch_z.weight
    sv, sq = module.sp_v.weight.reshape(C // 2, C), module.sp_q.weight.reshape(C // 2, C)
    g, beta = module.ch_norm.weight, module.ch_norm.bias

    def a_ch(t: torch.Tensor) -> torch.Tensor:  # eq. 1
        flat = t.flatten(2)  # (B, C, HW)
        q = torch.softmax(torch.einsum("oc,bcn->bon", wq, flat), dim=-1)
        v = torch.einsum("oc,bcn->bon", wv, flat)
        z = (v * q).sum(-1) @ wz.T  # (B, C)
        mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
        return sigmoid((z - mu) / torch.sqrt(var + EPS) * g + beta)[:, :, None, None]

    def a_sp(t: torch.Tensor) -> torch.Tensor:  # eq. 3
        flat = t.flatten(2)
        q = torch.softmax(torch.einsum("oc,bcn->bon", sq, flat).mean(-1), dim=-1)  # (B, C/2)
        v = torch.einsum("oc,bcn->bon", sv, flat)
        return sigmoid(torch.einsum("bo,bon->bn", q, v)).reshape(-1, 1, H, W)

    x = torch.randn(2, C, H, W)
    if mode == "parallel":  # eq. 4
        expected = a_ch(x) * x + a_sp(x) * x
    else:  # eq. 5
        y = a_ch(x) * x
        expected = a_sp(y) * y
    torch.testing.assert_close(module(x), expected)


def test_a2_matches_the_paper_equations() -> None:
    C, H, W = 8, 3, 4
    module = build_attention("a2", C).eval()
    x = torch.randn(2, C, H, W)
    m = C // 4
    flat = x.flatten(2)
    A = torch.einsum("mc,bcn->bmn", module.phi.weight.reshape(m, C), flat)
    B = torch.softmax(torch.einsum("mc,bcn->bmn", module.theta.weight.reshape(m, C), flat), -1)
    V = torch.einsum("mc,bcn->bmn", module.rho.weight.reshape(m, C), flat)
    V = torch.softmax(V + module.rho.bias[:, None], dim=1)
    G = torch.einsum("bmn,bkn->bmk", A, B)  # gather: G = A B^T
    Z = torch.einsum("bmk,bkn->bmn", G, V)  # distribute: z_i = G v_i
    out = torch.einsum("cm,bmn->bcn", module.out.weight.reshape(C, m), Z)
    expected = x + (out + module.out.bias[:, None]).reshape(2, C, H, W)
    torch.testing.assert_close(module(x), expected)
    assert get_spec("a2").residual and module.has_residual


def test_a2_zero_init_output_starts_as_identity() -> None:
    module = build_attention("a2", 16, zero_init_output=True)
    x = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(module(x), x)


def test_sge_matches_the_official_equations() -> None:
    C, G, H, W = 8, 2, 3, 4
    module = build_attention("sge", C, groups=G)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
    x = torch.randn(2, C, H, W)
    xg = x.reshape(2, G, C // G, H * W)
    c = (xg * xg.mean(-1, keepdim=True)).sum(2)  # eq. 2: (B, G, HW)
    c = (c - c.mean(-1, keepdim=True)) / (c.std(-1, keepdim=True) + 1e-5)  # eq. 3-4
    a = sigmoid(c * module.weight.reshape(1, G, 1) + module.bias.reshape(1, G, 1))
    expected = (xg * a[:, :, None, :]).reshape(2, C, H, W)  # eq. 5
    torch.testing.assert_close(module(x), expected)


def test_shuffle_matches_the_official_equations() -> None:
    C, G, H, W = 8, 2, 3, 3
    module = build_attention("shuffle", C, groups=G)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, C, H, W)
    h = C // (2 * G)
    outs = []
    for gi in range(G):
        grp = x[:, gi * 2 * h : (gi + 1) * 2 * h]
        xc, xs = grp[:, :h], grp[:, h:]
        cw, cb = module.cweight.reshape(1, h, 1, 1), module.cbias.reshape(1, h, 1, 1)
        sw, sb = module.sweight.reshape(1, h, 1, 1), module.sbias.reshape(1, h, 1, 1)
        yc = xc * sigmoid(cw * xc.mean(dim=(2, 3), keepdim=True) + cb)  # eq. 3
        mu = xs.mean(dim=(2, 3), keepdim=True)
        var = xs.var(dim=(2, 3), unbiased=False, keepdim=True)
        gn = (xs - mu) / torch.sqrt(var + EPS)
        gn = gn * module.gn.weight.reshape(1, h, 1, 1) + module.gn.bias.reshape(1, h, 1, 1)
        ys = xs * sigmoid(sw * gn + sb)  # eq. 4
        outs.append(torch.cat([yc, ys], 1))
    cat = torch.cat(outs, 1)  # (B, C, H, W) in group order
    shuffled = torch.cat([cat[:, i :: C // 2] for i in range(C // 2)], 1)  # shuffle, 2 groups
    torch.testing.assert_close(module(x), shuffled)


# -------------------------------------------------------------------- group handling
@pytest.mark.parametrize(
    ("C", "sge", "shuffle"), [(16, 16, 8), (24, 24, 12), (64, 64, 32), (256, 64, 64), (160, 40, 40)]
)
def test_group_counts_for_widths_the_paper_did_not_use(C: int, sge: int, shuffle: int) -> None:
    assert build_attention("sge", C).groups == sge
    assert build_attention("shuffle", C).groups == shuffle


def test_shuffle_needs_an_even_channel_count() -> None:
    with pytest.raises(ConfigError, match="even"):
        build_attention("shuffle", 7)


# ---------------------------------------------------------------------- invalid values
@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("cbam", {"reduction": 0}, "reduction"),
        ("cbam", {"kernel_size": 4}, "kernel_size"),
        ("cbam", {"channel_pool": "lse"}, "channel_pool"),
        ("cbam", {"spatial_pool": "lp"}, "spatial_pool"),
        ("cbam", {"order": "random"}, "order"),
        ("cbam", {"use_channel": "yes"}, "use_channel"),
        ("cbam", {"zero_init_spatial_bn": 1}, "zero_init_spatial_bn"),
        ("cbam_channel", {"channel_pool": "median"}, "channel_pool"),
        ("cbam_spatial", {"kernel_size": 8}, "kernel_size"),
        ("bam", {"reduction": 0}, "reduction"),
        ("bam", {"dilation": 0}, "dilation"),
        ("bam", {"combine": "max"}, "combine"),
        ("bam", {"use_channel": False, "use_spatial": False}, "use_spatial"),
        ("coord", {"reduction": 0}, "reduction"),
        ("triplet", {"kernel_size": 6}, "kernel_size"),
        ("simam", {"e_lambda": 0}, "e_lambda"),
        ("sge", {"groups": 0}, "groups"),
        ("shuffle", {"groups": 0}, "groups"),
        ("polarized", {"mode": "both"}, "mode"),
        ("a2", {"reduction": 0}, "reduction"),
    ],
)
def test_invalid_values_name_the_option(name: str, options: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        build_attention(name, 16, **options)


def test_choice_errors_list_the_valid_values() -> None:
    with pytest.raises(ConfigError) as info:
        build_attention("cbam", 16, spatial_pool="lp")
    for valid in ("avg", "max", "avg_max", "conv1x1"):
        assert valid in str(info.value)
