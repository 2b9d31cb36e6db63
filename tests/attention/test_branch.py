"""Paper-specific behaviour of the branch/expert convs in ``attnexp.attention.branch``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from attnexp.attention import build_conv, record_attention
from attnexp.attention.branch import (
    CondConv,
    DynamicConv,
    SelectiveKernelConv,
    SplitAttentionConv,
    anneal_temperature,
)
from attnexp.errors import ConfigError


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not stall on a busy shared core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("train", [True, False])
def test_sk_single_branch_without_attention_is_conv_bn_relu(train: bool) -> None:
    sk = build_conv("sk", 32, 64, 2, kernels=[3], attention=False)
    assert sk.groups == 32 and sk.includes_norm_act
    plain = nn.Sequential(
        nn.Conv2d(32, 64, 3, 2, padding=1, groups=32, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    )
    plain.load_state_dict(sk.branches[0].state_dict())
    sk.train(train)
    plain.train(train)
    x = torch.randn(4, 32, 7, 9)
    torch.testing.assert_close(sk(x), plain(x))
    assert n_params(sk) == n_params(plain)  # no fuse/select parameters without attention


def test_dynamic_conv_with_one_kernel_is_a_plain_conv() -> None:
    dyn = build_conv("dynamic_conv", 16, 24, 2, kernels=1)
    conv = nn.Conv2d(16, 24, 3, 2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(dyn.expert_kernels()[0])
    x = torch.randn(3, 16, 9, 8)
    torch.testing.assert_close(dyn(x), conv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [CondConv, DynamicConv])
def test_batched_expert_conv_matches_per_example_loop(cls: type[nn.Module]) -> None:
    module = cls(8, 12, 2)
    x = torch.randn(3, 8, 7, 6)
    with record_attention(module):
        out = module(x)
        weights = module.attention_maps["branch"]  # (B, experts)
    for b in range(3):
        kernel = torch.einsum("e,eoikl->oikl", weights[b], module.expert_kernels())
        ref = nn.functional.conv2d(x[b : b + 1], kernel, stride=2, padding=1)
        torch.testing.assert_close(out[b : b + 1], ref, rtol=1e-5, atol=1e-5)


def _dynamic_conv_per_sample(module: DynamicConv, x: torch.Tensor) -> torch.Tensor:
    """Dynamic conv of eq. 1-3 written per example, without the batched grouped conv."""
    outs = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        z = module.fc2(torch.relu(module.fc1(xb.mean((2, 3)))))
        pi = (z / module.temperature).softmax(dim=1)[0]
        kernel = torch.einsum("k,koihw->oihw", pi, module.expert_kernels())
        bias = None if module.bias is None else pi @ module.bias
        outs.append(nn.functional.conv2d(xb, kernel, bias, stride=module.stride, padding=1))
    return torch.cat(outs)


@pytest.mark.parametrize("bias", [False, True])
def test_dynamic_conv_float64_gradients_match_a_per_sample_reference(bias: bool) -> None:
    """float64 stays float64 (no cast to float32 in the routing softmax): outputs and the
    gradients of the input and of every parameter agree with a per-example loop to 1e-12."""
    module = DynamicConv(6, 10, 2, kernels=3, reduction=2, temperature=2.0, bias=bias).double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the bias starts at zero: give it a gradient
    x = torch.randn(4, 6, 7, 9, dtype=torch.float64)
    upstream = torch.randn(4, 10, 4, 5, dtype=torch.float64)
    grads = []
    for fn in (module, lambda t: _dynamic_conv_per_sample(module, t)):
        xi = x.clone().requires_grad_(True)
        module.zero_grad()
        out = fn(xi)
        assert out.dtype == torch.float64
        (out * upstream).sum().backward()
        grads.append([out.detach(), xi.grad, *(p.grad.clone() for p in module.parameters())])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- sk
def test_sk_default_second_branch_is_dilated_3x3() -> None:
    sk = build_conv("sk", 64, 64, 1)
    assert sk.kernels == (3, 5)
    conv3, conv5 = sk.branches[0][0], sk.branches[1][0]
    assert conv3.weight.shape == (64, 2, 3, 3) and conv3.dilation == (1, 1)
    assert conv5.weight.shape == (64, 2, 3, 3)
    assert conv5.dilation == (2, 2) and conv5.padding == (2, 2)


def test_sk_undilated_uses_true_5x5() -> None:
    sk = build_conv("sk", 64, 64, 1, dilated=False)
    conv5 = sk.branches[1][0]
    assert conv5.weight.shape == (64, 2, 5, 5)
    assert conv5.dilation == (1, 1) and conv5.padding == (2, 2)
    assert sk(torch.randn(2, 64, 7, 9)).shape == (2, 64, 7, 9)


def test_sk_groups_capped_for_narrow_layers() -> None:
    assert build_conv("sk", 16, 16, 1).groups == 16
    assert build_conv("sk", 16, 24, 1).groups == 8
    assert build_conv("sk", 128, 128, 1).groups == 32


def test_sk_softmax_is_across_branches() -> None:
    sk = build_conv("sk", 32, 32, 1, kernels=[3, 5, 7]).eval()
    with record_attention(sk), torch.no_grad():
        sk(torch.randn(2, 32, 8, 8))
        a = sk.attention_maps["branch"]
    assert a.shape == (2, 3, 32)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 32))
    assert not torch.allclose(a.sum(2), torch.ones(2, 3))


def test_sk_trains_on_a_batch_of_one() -> None:
    sk = build_conv("sk", 32, 32, 1).train()
    running = sk.fuse_bn.running_mean.clone()
    out = sk(torch.randn(1, 32, 4, 4))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(sk.fuse_bn.running_mean, running)


# --------------------------------------------------------------------------- splat
@pytest.mark.parametrize(("radix", "cardinality"), [(2, 2), (4, 1), (1, 1)])
def test_splat_radix_softmax(radix: int, cardinality: int) -> None:
    m = SplitAttentionConv(32, 32, 1, radix=radix, cardinality=cardinality).eval()
    with record_attention(m), torch.no_grad():
        assert m(torch.randn(2, 32, 6, 6)).shape == (2, 32, 6, 6)
        a = m.attention_maps["branch"]
    assert a.shape == (2, radix, 32)
    if radix > 1:
        torch.testing.assert_close(a.sum(1), torch.ones(2, 32))
    else:  # sigmoid gate
        assert ((a > 0) & (a < 1)).all()


# --------------------------------------------------------------------------- psa
def test_psa_group_counts_are_capped() -> None:
    assert build_conv("psa", 128, 128, 1).groups == (1, 4, 8, 16)
    assert build_conv("psa", 32, 32, 1).groups == (1, 4, 8, 8)  # split width 8


# --------------------------------------------------------------------------- dynamic conv
def test_anneal_temperature_goes_from_30_to_1() -> None:
    model = nn.Sequential(
        build_conv("dynamic_conv", 8, 8, 1), nn.ReLU(), build_conv("dynamic_conv", 8, 8, 2)
    )
    dyn = [m for m in model.modules() if isinstance(m, DynamicConv)]
    assert all(float(m.temperature) == 30.0 for m in dyn)
    seen = [anneal_temperature(model, epoch) for epoch in range(13)]
    assert seen[0] == 30.0 and seen[5] == pytest.approx(15.5) and seen[10] == 1.0
    assert seen[10:] == [1.0, 1.0, 1.0]
    assert all(a > b for a, b in zip(seen[:10], seen[1:11]))
    assert all(float(m.temperature) == 1.0 for m in dyn)
    # The annealed temperature travels with the checkpoint.
    fresh = build_conv("dynamic_conv", 8, 8, 1)
    fresh.load_state_dict(dyn[0].state_dict())
    assert float(fresh.temperature) == 1.0


def test_low_temperature_sharpens_dynamic_attention() -> None:
    dyn = build_conv("dynamic_conv", 16, 16, 1).eval()
    x = torch.randn(4, 16, 5, 5)
    maps = {}
    for t in (30.0, 1.0):
        dyn.set_temperature(t)
        with record_attention(dyn), torch.no_grad():
            dyn(x)
            maps[t] = dyn.attention_maps["branch"]
    assert maps[1.0].amax(1).mean() > maps[30.0].amax(1).mean()


# --------------------------------------------------------------------------- invalid options
@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("conv3x3", {"kernel_size": 4}, ["kernel_size", "odd"]),
        ("conv3x3", {"groups": 3}, ["groups", "1, 2, 4, 8, 16, 32"]),
        ("conv3x3", {"dilation": 0}, ["dilation"]),
        ("sk", {"kernels": [3, 4]}, ["kernels"]),
        ("sk", {"kernels": []}, ["kernels"]),
        ("sk", {"groups": 24}, ["groups", "1, 2, 4, 8, 16, 32"]),
        ("sk", {"reduction": 0}, ["reduction"]),
        ("splat", {"radix": 0}, ["radix"]),
        ("splat", {"cardinality": 3}, ["cardinality"]),
        ("psa", {"kernels": [3, 5, 7], "groups": [1, 4, 8]}, ["out_channels", "len(kernels)"]),
        ("psa", {"kernels": [3, 5, 7, 8]}, ["kernels"]),
        ("psa", {"groups": [1, 2]}, ["groups"]),
        ("condconv", {"experts": 0}, ["experts"]),
        ("condconv", {"dropout_rate": 1.5}, ["dropout_rate"]),
        ("dynamic_conv", {"kernels": 0}, ["kernels"]),
        ("dynamic_conv", {"temperature": 0.0}, ["temperature"]),
    ],
)
def test_invalid_options_name_the_option(name: str, options: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        build_conv(name, 32, 32, 1, **options)
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------- parameter counts
def test_parameter_counts_at_128_channels() -> None:
    c = 128
    assert n_params(build_conv("conv3x3", c, c, 1)) == 147_456 == c * c * 9
    # SK defaults: K=2 branches (3x3, 3x3 dilation 2), G=32, r=16, L=32 -> d = max(8, 32).
    k, g, d = 2, 32, max(c // 16, 32)
    sk_expected = k * (c * (c // g) * 9 + 2 * c) + (c * d + 2 * d) + k * d * c
    assert n_params(SelectiveKernelConv(c, c, 1)) == sk_expected == 22_080
    # CondConv: 8 experts + routing FC (no bias); dynamic conv: 4 kernels + attention FCs.
    assert n_params(CondConv(c, c, 1)) == 8 * c * c * 9 + c * 8
    h = c // 4
    assert n_params(DynamicConv(c, c, 1)) == 4 * c * c * 9 + (c * h + h) + (h * 4 + 4)
