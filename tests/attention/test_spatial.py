"""Spatial family (non-local, GC, criss-cross, DANet) against the papers' equations.

References are written independently of the modules: plain tensor ops, or explicit loops
over positions on tiny inputs, in float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from attnexp.attention import build_attention, get_spec, record_attention
from attnexp.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not spin on busy shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 conv as a matrix product, (B, Cin, H, W) -> (B, Cout, H, W)."""
    out = torch.einsum("oc,bchw->bohw", weight.reshape(weight.shape[0], -1), x)
    return out if bias is None else out + bias[None, :, None, None]


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a known, non-degenerate value (no zero-init shortcuts)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


# ----------------------------------------------------------------------------------------
# GC block
# ----------------------------------------------------------------------------------------
def gc_reference(x, w_k, w1, b1, ln_w, ln_b, w2, b2, pooling, fusion):
    """GCNet eq. 3 with plain ops: context, bottleneck transform with LN, fusion."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    if pooling == "att":
        logits = w_k @ flat  # (B, 1, N): W_k x_j, no bias (eq. 3)
        weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        context = (flat * weights).sum(-1)  # (B, C)
    else:
        context = flat.mean(-1)
    t = context @ w1.T + b1  # (B, c)
    mu = t.mean(1, keepdim=True)
    var = ((t - mu) ** 2).mean(1, keepdim=True)
    t = (t - mu) / torch.sqrt(var + 1e-5) * ln_w + ln_b
    t = torch.clamp(t, min=0) @ w2.T + b2  # (B, C)
    t = t[:, :, None, None]
    return x + t if fusion == "add" else x * (1 / (1 + torch.exp(-t)))


@pytest.mark.parametrize(
    ("pooling", "fusion"), [("att", "add"), ("att", "scale"), ("avg", "add"), ("avg", "scale")]
)
def test_gc_matches_paper_equations(pooling: str, fusion: str) -> None:
    c, ratio = 16, 0.25
    m = build_attention("gc", c, ratio=ratio, pooling=pooling, fusion=fusion).double()
    randomise(m)
    hidden = 4
    sd = m.state_dict()
    w1 = sd["transform.0.weight"].reshape(hidden, c)
    w2 = sd["transform.3.weight"].reshape(c, hidden)
    ln_w = sd["transform.1.weight"].reshape(hidden)
    ln_b = sd["transform.1.bias"].reshape(hidden)
    w_k = sd["context_conv.weight"].reshape(1, c) if pooling == "att" else None
    x = torch.randn(2, c, 5, 3, dtype=torch.float64)
    ref = gc_reference(
        x, w_k, w1, sd["transform.0.bias"], ln_w, ln_b, w2, sd["transform.3.bias"],
        pooling, fusion,
    )  # fmt: skip
    torch.testing.assert_close(m(x), ref)
    assert m.has_residual is (fusion == "add")


@pytest.mark.parametrize("channels", [16, 24, 64, 256])
@pytest.mark.parametrize("ratio", [1 / 16, 1 / 4])
@pytest.mark.parametrize("pooling", ["att", "avg"])
def test_gc_parameter_count(channels: int, ratio: float, pooling: str) -> None:
    c = max(int(channels * ratio), 1)
    # transform: conv C->c (+bias), LayerNorm([c,1,1]) (2c), conv c->C (+bias)
    expected = channels * c + c + 2 * c + c * channels + channels
    if pooling == "att":
        expected += channels  # attention conv W_k: C->1, no bias
    assert n_params(build_attention("gc", channels, ratio=ratio, pooling=pooling)) == expected


def test_gc_defaults_start_as_identity_and_expose_softmax() -> None:
    m = build_attention("gc", 64)
    x = torch.randn(2, 64, 7, 5)
    with record_attention(m):
        torch.testing.assert_close(m(x), x)
        spatial = m.attention_maps["spatial"]
    assert spatial.shape == (2, 1, 7, 5)
    torch.testing.assert_close(spatial.sum((1, 2, 3)), torch.ones(2))
    assert n_params(m) == 64 + 2 * (64 * 4) + 4 + 2 * 4 + 64


# ----------------------------------------------------------------------------------------
# Non-local block
# ----------------------------------------------------------------------------------------
def nonlocal_reference(m, x: torch.Tensor, phi_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 evaluated position by position, with the paper's f and C(x) of section 3.2."""
    sd = m.state_dict()
    pairwise = m.pairwise
    g = conv1x1(x, sd["g.weight"], None)  # the paper's linear embeddings: no bias
    if pairwise == "gaussian":
        theta, phi = x, x
    else:
        theta = conv1x1(x, sd["theta.weight"], None)
        phi = conv1x1(x, sd["phi.weight"], phi_bias)
    if m.subsample:
        g, phi = F.max_pool2d(g, 2), F.max_pool2d(phi, 2)
    b, _, h, w = x.shape
    theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)
    n, keys = theta.shape[2], phi.shape[2]
    y = torch.zeros(b, g.shape[1], n, dtype=x.dtype)
    for bi, i in itertools.product(range(b), range(n)):
        if pairwise == "concatenation":
            wf = sd["concat_weight"].reshape(-1)
            f = torch.stack(
                [torch.relu(wf @ torch.cat([theta[bi, :, i], phi[bi, :, j]])) for j in range(keys)]
            )
            norm = keys
        else:
            dots = torch.stack([theta[bi, :, i] @ phi[bi, :, j] for j in range(keys)])
            if pairwise == "dot_product":
                f, norm = dots, keys
            else:
                if m.scale:
                    dots = dots / theta.shape[1] ** 0.5
                f = torch.exp(dots)
                norm = f.sum()
        y[bi, :, i] = (f[None, :] * g[bi]).sum(1) / norm
    z = conv1x1(y.reshape(b, -1, h, w), sd["w_z.weight"], None)
    bn = m.bn  # eval mode: running statistics
    z = (z - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps
    ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return z + x


@pytest.mark.parametrize(
    ("pairwise", "subsample", "scale"),
    [
        ("gaussian", False, False),
        ("embedded_gaussian", False, False),
        ("dot_product", False, False),
        ("concatenation", False, False),
        ("embedded_gaussian", True, False),
        ("concatenation", True, False),
        ("gaussian", False, True),
        ("embedded_gaussian", False, True),
    ],
)
def test_nonlocal_pairwise_matches_paper(pairwise: str, subsample: bool, scale: bool) -> None:
    m = build_attention(
        "nonlocal", 4, pairwise=pairwise, subsample=subsample, zero_init=False, scale=scale
    ).double()
    randomise(m, seed=1)
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
    m.eval()
    x = torch.randn(2, 4, 4, 3, dtype=torch.float64) * 0.5
    torch.testing.assert_close(m(x), nonlocal_reference(m, x))


@pytest.mark.parametrize(
    "pairwise", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
)
def test_nonlocal_zero_init_is_identity(pairwise: str) -> None:
    m = build_attention("nonlocal", 16, pairwise=pairwise)
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(m(x), x)  # training mode
    m.eval()
    torch.testing.assert_close(m(x), x)


@pytest.mark.parametrize("channels", [16, 24, 256])
@pytest.mark.parametrize(
    "pairwise", ["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
)
def test_nonlocal_parameter_count(channels: int, pairwise: str) -> None:
    ci = channels // 2
    conv = channels * ci  # one of theta / phi / g (1x1 conv, no bias as the paper)
    expected = conv + ci * channels + 2 * channels  # g, W_z (no bias), BN
    if pairwise != "gaussian":
        expected += 2 * conv  # theta, phi
    if pairwise == "concatenation":
        expected += 2 * ci  # w_f
    assert n_params(build_attention("nonlocal", channels, pairwise=pairwise)) == expected


def test_nonlocal_inter_channels_and_subsample_limits() -> None:
    assert build_attention("nonlocal", 1).inter_channels == 1
    m = build_attention("nonlocal", 16, subsample=True)
    with record_attention(m):
        m(torch.randn(2, 16, 7, 5))
        assert m.attention_maps["position"].shape == (2, 1, 3, 2)
    with pytest.raises(ConfigError, match="subsample"):
        m(torch.randn(2, 16, 1, 4))


# ----------------------------------------------------------------------------------------
# Criss-cross attention
# ----------------------------------------------------------------------------------------
def criss_cross_reference(m, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """One CCA step: softmax over the H+W-1 *distinct* positions of the row and column."""
    sd = m.state_dict()
    q = conv1x1(x, sd["query.weight"], sd["query.bias"])
    k = conv1x1(x, sd["key.weight"], key_bias)
    v = conv1x1(x, sd["value.weight"], sd["value.bias"])
    b, c, h, w = x.shape
    out = torch.zeros_like(x)
    for bi, i, j in itertools.product(range(b), range(h), range(w)):
        cross = sorted({(i, s) for s in range(w)} | {(r, j) for r in range(h)})
        assert len(cross) == h + w - 1
        energy = torch.stack([q[bi, :, i, j] @ k[bi, :, r, s] for r, s in cross])
        attn = torch.softmax(energy, 0)
        out[bi, :, i, j] = sum(a * v[bi, :, r, s] for a, (r, s) in zip(attn, cross))
    return sd["gamma"] * out + x


def test_criss_cross_matches_reference_centre_once() -> None:
    m = build_attention("criss_cross", 8, recurrence=2, reduction=4).double()
    randomise(m, seed=2)
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), criss_cross_reference(m, criss_cross_reference(m, x)))


def test_criss_cross_uniform_energy_weights_every_cross_position_equally() -> None:
    """With Q = 0 all energies tie, so each of the H+W-1 positions gets 1/(H+W-1)."""
    c, h, w = 4, 5, 3
    m = build_attention("criss_cross", c, recurrence=1).double()
    with torch.no_grad():
        m.query.weight.zero_()
        m.query.bias.zero_()
        m.value.weight.copy_(torch.eye(c).reshape(c, c, 1, 1))
        m.value.bias.zero_()
        m.gamma.fill_(1.0)
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    cross_sum = x.sum(3, keepdim=True) + x.sum(2, keepdim=True) - x  # centre once
    torch.testing.assert_close(m(x), x + cross_sum / (h + w - 1))


def test_criss_cross_depends_only_on_row_and_column() -> None:
    m = build_attention("criss_cross", 16, recurrence=1)
    randomise(m, seed=3)
    h, w = 6, 5
    x = torch.randn(1, 16, h, w, requires_grad=True)
    out = m(x)
    for i, j in [(0, 0), (2, 3), (5, 4)]:
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x, retain_graph=True)
        touched = grad.abs().sum((0, 1)) > 0
        cross = torch.zeros(h, w, dtype=torch.bool)
        cross[i, :] = True
        cross[:, j] = True
        assert torch.equal(touched, cross)
    # Two recurrences reach every position (the paper's motivation for R = 2).
    m2 = build_attention("criss_cross", 16, recurrence=2)
    randomise(m2, seed=3)
    x2 = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m2(x2)[:, :, 0, 0].sum(), x2)
    assert (grad.abs().sum((0, 1)) > 0).all()


def test_criss_cross_parameter_count_and_identity_at_init() -> None:
    c, qk = 256, 32
    m = build_attention("criss_cross", c)
    assert n_params(m) == (c * qk + qk) + c * qk + c * c + c + 1  # Q, K (no bias), V, gamma
    assert build_attention("criss_cross", 16).query.out_channels == 2
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(build_attention("criss_cross", 16)(x), x)


# ----------------------------------------------------------------------------------------
# DANet
# ----------------------------------------------------------------------------------------
def danet_reference(m, x: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    outs = []
    if m.use_position:
        sd = m.state_dict()
        q = conv1x1(x, sd["query.weight"], sd["query.bias"]).flatten(2)
        k = conv1x1(x, sd["key.weight"], key_bias).flatten(2)
        v = conv1x1(x, sd["value.weight"], sd["value.bias"]).flatten(2)
        s = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # s[i, j]: j's influence on i
        outs.append(m.alpha * (v @ s.transpose(1, 2)).reshape(b, c, h, w) + x)
    if m.use_channel:
        energy = flat @ flat.transpose(1, 2)
        if m.cam_energy == "max_minus":
            energy = energy.max(-1, keepdim=True).values - energy
        attn = torch.softmax(energy, dim=-1)
        outs.append(m.beta * (attn @ flat).reshape(b, c, h, w) + x)
    out = sum(outs)
    return out / 2 if m.merge == "mean" and len(outs) == 2 else out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"use_channel": False},
        {"use_position": False},
        {"use_position": False, "cam_energy": "plain"},
        {"merge": "mean"},
    ],
)
def test_danet_matches_reference(options: dict) -> None:
    m = build_attention("danet", 16, **options).double()
    randomise(m, seed=4)
    x = torch.randn(2, 16, 3, 4, dtype=torch.float64) * 0.3
    torch.testing.assert_close(m(x), danet_reference(m, x))


def test_danet_init_and_parameter_count() -> None:
    x = torch.randn(2, 24, 7, 5)
    torch.testing.assert_close(build_attention("danet", 24)(x), 2 * x)  # paper's sum
    torch.testing.assert_close(build_attention("danet", 24, merge="mean")(x), x)
    c, qk = 256, 32
    # PAM: Q (bias), K (no bias), V (bias), alpha; CAM: beta
    assert n_params(build_attention("danet", c)) == (c * qk + qk) + c * qk + c * c + c + 2
    assert n_params(build_attention("danet", c, use_position=False)) == 1


def test_danet_both_branches_off_is_config_error() -> None:
    with pytest.raises(ConfigError, match="use_position"):
        build_attention("danet", 16, use_position=False, use_channel=False)


# ----------------------------------------------------------------------------------------
# Registry facts and option validation
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "memory", "position"),
    [
        ("nonlocal", "quadratic", "after_add"),
        ("gc", "linear", "after_conv3"),
        ("criss_cross", "linear", "after_add"),
        ("danet", "quadratic", "after_add"),
    ],
)
def test_registry_entries(name: str, memory: str, position: str) -> None:
    spec = get_spec(name)
    assert spec.residual is True
    assert spec.cls.has_residual is True
    assert build_attention(name, 16).has_residual is True
    assert spec.memory == memory
    assert spec.default_position == position
    assert spec.min_size == 1


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("nonlocal", {"pairwise": "cosine"}, "pairwise"),
        ("nonlocal", {"inter_channels": 0}, "inter_channels"),
        ("nonlocal", {"subsample": "yes"}, "subsample"),
        ("nonlocal", {"pairwise": "dot_product", "scale": True}, "scale"),
        ("gc", {"ratio": 0}, "ratio"),
        ("gc", {"ratio": 2.0}, "ratio"),
        ("gc", {"pooling": "max"}, "pooling"),
        ("gc", {"fusion": "mul"}, "fusion"),
        ("criss_cross", {"recurrence": 0}, "recurrence"),
        ("criss_cross", {"reduction": 1.5}, "reduction"),
        ("danet", {"reduction": 0}, "reduction"),
        ("danet", {"merge": "max"}, "merge"),
        ("danet", {"cam_energy": "min"}, "cam_energy"),
    ],
)
def test_invalid_options_name_the_option(name: str, options: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        build_attention(name, 16, **options)


def test_choice_error_lists_valid_values() -> None:
    with pytest.raises(ConfigError) as err:
        build_attention("nonlocal", 16, pairwise="cosine")
    for valid in ("gaussian", "embedded_gaussian", "dot_product", "concatenation"):
        assert valid in str(err.value)


def test_official_biases_left_out_are_dead() -> None:
    """The official code's biases that these modules omit cannot change the output."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64, generator=gen)

    m = build_attention("nonlocal", 8, zero_init=False).double().eval()
    randomise(m, seed=12)
    phi_bias = torch.randn(4, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(m(x), nonlocal_reference(m, x, phi_bias=phi_bias))

    m = build_attention("criss_cross", 8, recurrence=1, reduction=4).double()
    randomise(m, seed=13)
    key_bias = torch.randn(2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(m(x), criss_cross_reference(m, x, key_bias=key_bias))

    m = build_attention("danet", 8, use_channel=False, reduction=4).double()
    randomise(m, seed=14)
    torch.testing.assert_close(m(x), danet_reference(m, x, key_bias=key_bias))

    m = build_attention("gc", 8, ratio=0.5).double()
    randomise(m, seed=15)
    with torch.no_grad():
        with_bias = torch.nn.Conv2d(8, 1, 1).double()
        with_bias.weight.copy_(m.context_conv.weight)
        with_bias.bias.fill_(3.0)
        expected = m(x)
        m.context_conv = with_bias
        torch.testing.assert_close(m(x), expected)
