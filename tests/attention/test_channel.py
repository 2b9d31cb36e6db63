"""Channel family (SE, ECA, SRM, GSoP, GE): parameter counts and the papers' equations.

The equation tests set known weights and compare the module with a direct evaluation of
the paper's formulas written here with plain torch ops (not the module's helpers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from attnexp.attention import build_attention
from attnexp.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("name", "expected"),
    [("se", 8_464), ("eca", 5), ("srm", 1_024), ("gsop", 230_784), ("ge", 0)],
)
def test_parameter_count_at_256_with_defaults(name: str, expected: int) -> None:
    assert n_params(build_attention(name, 256)) == expected


@pytest.mark.parametrize(("channels", "k"), [(256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_adaptive_kernel_matches_the_reference(channels: int, k: int) -> None:
    module = build_attention("eca", channels)
    assert module.kernel_size == k
    assert n_params(module) == k


@pytest.mark.parametrize("channels", [1, 3, 16, 24, 64, 100, 256, 2048])
@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_eca_params_follow_the_closed_form(channels: int, gamma: int) -> None:
    t = int(abs(math.log2(channels) / gamma + 1 / gamma))
    k = t if t % 2 else t + 1
    assert n_params(build_attention("eca", channels, gamma=gamma)) == k


@pytest.mark.parametrize("channels", [16, 24, 64, 256, 512])
@pytest.mark.parametrize("r", [2, 4, 8, 16, 32])
def test_se_params_follow_the_closed_form(channels: int, r: int) -> None:
    c = max(channels // r, 1)  # C // r, no rounding to multiples of 8
    assert n_params(build_attention("se", channels, reduction=r)) == 2 * channels * c + c + channels


@pytest.mark.parametrize("channels", [16, 24, 256, 2048])
def test_srm_params_follow_the_closed_form(channels: int) -> None:
    # CFC: 2 weights per channel; BN: weight and bias per channel.
    assert n_params(build_attention("srm", channels)) == 4 * channels


@pytest.mark.parametrize(("channels", "dim"), [(16, 128), (256, 128), (256, 64), (512, 128)])
def test_gsop_params_follow_the_closed_form(channels: int, dim: int) -> None:
    d = min(dim, channels)
    reduce = channels * d + d + 2 * d  # 1x1 conv with bias + BN
    row = 2 * d + 4 * d * d + 4 * d  # BN over rows + grouped row conv with bias
    expand = 4 * d * channels + channels
    module = build_attention("gsop", channels, reduced_dim=dim)
    assert n_params(module) == reduce + row + expand


@pytest.mark.parametrize("channels", [16, 256])
def test_ge_params_follow_the_closed_form(channels: int) -> None:
    c = max(channels // 16, 1)
    mlp = 2 * channels * c + c + channels
    for extent in (2, 4, 8):
        steps = int(math.log2(extent))
        dw = steps * (9 * channels + 2 * channels)  # depthwise 3x3 (no bias) + BN
        theta = build_attention("ge", channels, extent=extent, gather="conv")
        theta_plus = build_attention("ge", channels, extent=extent, gather="conv", excite="mlp")
        assert n_params(build_attention("ge", channels, extent=extent)) == 0  # theta-minus
        assert n_params(theta) == dw
        assert n_params(theta_plus) == dw + mlp
    glob = build_attention("ge", channels, gather="conv", feature_size=7)
    assert n_params(glob) == 49 * channels + 2 * channels


# -------------------------------------------------------------------------- equations
@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("excitation", ["sigmoid", "tanh", "relu"])
def test_se_matches_the_paper_equations(squeeze: str, excitation: str) -> None:
    C, r = 8, 4
    module = build_attention("se", C, reduction=r, squeeze=squeeze, excitation=excitation)
    w1, b1 = torch.randn(C // r, C), torch.randn(C // r)
    w2, b2 = torch.randn(C, C // r), torch.randn(C)
    with torch.no_grad():
        module.fc1.weight.copy_(w1)
        module.fc1.bias.copy_(b1)
        module.fc2.weight.copy_(w2)
        module.fc2.bias.copy_(b2)
    x = torch.randn(2, C, 5, 3)
    # eq. 2: z_c = 1/(HW) sum_ij u_c(i, j)  (or the max for TPAMI table 11)
    z = x.sum(dim=(2, 3)) / 15 if squeeze == "avg" else x.flatten(2).max(dim=2).values
    # eq. 3: s = act(W2 delta(W1 z))
    hidden = torch.clamp(z @ w1.T + b1, min=0)
    a = hidden @ w2.T + b2
    s = {"sigmoid": 1 / (1 + torch.exp(-a)), "tanh": torch.tanh(a), "relu": a.clamp(min=0)}
    # eq. 4: x~_c = s_c * u_c
    expected = x * s[excitation].reshape(2, C, 1, 1)
    torch.testing.assert_close(module(x), expected)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_eca_matches_the_paper_equations(k: int) -> None:
    C = 7
    module = build_attention("eca", C, kernel_size=k)
    w = torch.randn(k)
    with torch.no_grad():
        module.conv.weight.copy_(w.reshape(1, 1, k))
    x = torch.randn(2, C, 4, 6)
    y = x.mean(dim=(2, 3))
    # eq. 11/figure 2: omega_i = sigma(sum_j w_j y_{i + j - (k-1)/2}), zero outside [0, C)
    half = (k - 1) // 2
    logits = torch.zeros(2, C)
    for i in range(C):
        for j in range(k):
            src = i + j - half
            if 0 <= src < C:
                logits[:, i] += w[j] * y[:, src]
    expected = x * torch.sigmoid(logits).reshape(2, C, 1, 1)
    torch.testing.assert_close(module(x), expected)


def test_srm_matches_the_paper_equations() -> None:
    C = 5
    module = build_attention("srm", C).eval()
    w = torch.randn(C, 2)
    rm, rv, gamma, beta = torch.randn(C), torch.rand(C) + 0.5, torch.randn(C), torch.randn(C)
    with torch.no_grad():
        module.cfc.weight.copy_(w.reshape(C, 1, 2))
        module.bn.running_mean.copy_(rm)
        module.bn.running_var.copy_(rv)
        module.bn.weight.copy_(gamma)
        module.bn.bias.copy_(beta)
    x = torch.randn(3, C, 4, 5)
    flat = x.reshape(3, C, 20)
    mu = flat.sum(-1) / 20  # eq. 1
    sigma = torch.sqrt(((flat - mu[..., None]) ** 2).sum(-1) / 20)  # eq. 2 (population)
    z = w[:, 0] * mu + w[:, 1] * sigma  # eq. 3
    z_hat = (z - rm) / torch.sqrt(rv + 1e-5) * gamma + beta  # eq. 4
    expected = x * torch.sigmoid(z_hat).reshape(3, C, 1, 1)  # eq. 5
    torch.testing.assert_close(module(x), expected)


def test_gsop_covariance_is_the_centred_per_sample_matrix() -> None:
    # With identity-like reduction weights the row conv sees the covariance of relu(x).
    C = 4
    module = build_attention("gsop", C, reduced_dim=4).eval()
    x = torch.randn(2, C, 3, 5)
    with torch.no_grad():
        module.reduce.weight.copy_(torch.eye(C).reshape(C, C, 1, 1))
        module.reduce.bias.zero_()
    captured: dict[str, torch.Tensor] = {}
    module.row_bn.register_forward_hook(lambda m, i, o: captured.setdefault("cov", i[0]))
    module(x)
    f = torch.relu(module.reduce_bn(torch.relu(x))).reshape(2, C, 15)
    ref = torch.stack([torch.cov(f[b], correction=0) for b in range(2)])
    torch.testing.assert_close(captured["cov"].squeeze(3), ref)


def test_ge_pool_gather_averages_each_window_and_copies_it_back() -> None:
    x = torch.randn(2, 3, 5, 3)  # 5x3 with extent 2: windows clipped at the border
    out = build_attention("ge", 3, extent=2)(x)
    expected = torch.empty_like(x)
    for i in range(5):
        for j in range(3):
            a, b = (i // 2) * 2, (j // 2) * 2
            window = x[:, :, a : a + 2, b : b + 2]
            expected[:, :, i, j] = x[:, :, i, j] * torch.sigmoid(window.mean(dim=(2, 3)))
    torch.testing.assert_close(out, expected)


def test_ge_global_is_a_parameter_free_gate() -> None:
    x = torch.randn(2, 6, 7, 5)
    out = build_attention("ge", 6)(x)
    torch.testing.assert_close(out, x * torch.sigmoid(x.mean(dim=(2, 3), keepdim=True)))


@pytest.mark.parametrize("extent", [2, 4, 8])
@pytest.mark.parametrize("size", [(7, 5), (8, 8), (1, 1), (3, 9)])
def test_ge_conv_gather_keeps_any_size(extent: int, size: tuple[int, int]) -> None:
    module = build_attention("ge", 8, extent=extent, gather="conv", excite="mlp")
    x = torch.randn(2, 8, *size)
    assert module(x).shape == x.shape


def test_ge_global_conv_gather_checks_the_map_size() -> None:
    module = build_attention("ge", 4, gather="conv", feature_size=7)
    assert module(torch.randn(2, 4, 7, 7)).shape == (2, 4, 7, 7)
    with pytest.raises(ConfigError, match="feature_size"):
        module(torch.randn(2, 4, 5, 5))


# ------------------------------------------------------------------- numerical guards
@pytest.mark.parametrize("name", ["srm", "gsop", "se", "eca", "ge"])
def test_one_by_one_maps_and_a_batch_of_one_in_training(name: str) -> None:
    module = build_attention(name, 16).train()
    x = torch.randn(1, 16, 1, 1, requires_grad=True)
    out = module(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_srm_batch_of_one_leaves_running_stats_alone() -> None:
    module = build_attention("srm", 8).train()
    with torch.no_grad():
        module.cfc.weight.normal_()
    module(torch.randn(1, 8, 4, 4))
    assert int(module.bn.num_batches_tracked) == 0
    assert torch.equal(module.bn.running_mean, torch.zeros(8))
    module(torch.randn(4, 8, 4, 4))
    assert int(module.bn.num_batches_tracked) == 1
    assert not torch.equal(module.bn.running_mean, torch.zeros(8))


def test_srm_constant_channel_has_finite_gradients() -> None:
    module = build_attention("srm", 4).train()
    x = torch.zeros(2, 4, 3, 3, requires_grad=True)  # e.g. dead ReLU channels
    module(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------- invalid values
@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("se", {"reduction": 0}, "reduction"),
        ("se", {"reduction": 2.5}, "reduction"),
        ("se", {"squeeze": "median"}, "squeeze"),
        ("se", {"excitation": "softmax"}, "excitation"),
        ("eca", {"kernel_size": 4}, "kernel_size"),
        ("eca", {"kernel_size": 0}, "kernel_size"),
        ("eca", {"kernel_size": "auto"}, "kernel_size"),
        ("eca", {"gamma": 0}, "gamma"),
        ("gsop", {"reduced_dim": 0}, "reduced_dim"),
        ("ge", {"extent": 0}, "extent"),
        ("ge", {"extent": "local"}, "extent"),
        ("ge", {"extent": 3, "gather": "conv"}, "extent"),
        ("ge", {"gather": "max"}, "gather"),
        ("ge", {"excite": "se"}, "excite"),
        ("ge", {"gather": "conv"}, "feature_size"),
        ("ge", {"reduction": 0}, "reduction"),
    ],
)
def test_invalid_values_name_the_option(name: str, options: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        build_attention(name, 16, **options)


def test_choice_errors_list_the_valid_values() -> None:
    with pytest.raises(ConfigError) as info:
        build_attention("se", 16, squeeze="median")
    assert "avg" in str(info.value) and "max" in str(info.value)
    with pytest.raises(ConfigError, match="odd"):
        build_attention("eca", 16, kernel_size=6)
