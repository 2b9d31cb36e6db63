"""The contract every conv-kind module keeps: it can stand in for a padded 3x3 conv.

Parametrised over ``available("conv")``, so a newly registered conv module is covered
without editing this file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from attnexp.attention import available, build_conv, get_spec, record_attention
from attnexp.errors import ConfigError

CONV_MODULES = available("conv")
#: Modules whose paper normalises the branch weights with a softmax over branches/experts
#: (splat only with radix > 1, its default).
SOFTMAX_OVER_BRANCHES = {"sk", "splat", "psa", "dynamic_conv"}
SIZES = [(8, 8), (7, 9)]
CHANNELS = [(32, 32), (32, 64), (64, 64)]


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not stall on a busy shared core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_registry_has_the_branch_family() -> None:
    assert {"conv3x3", "condconv"} | SOFTMAX_OVER_BRANCHES <= set(CONV_MODULES)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", CONV_MODULES)
def test_output_size_matches_padded_3x3_conv(name: str, stride: int) -> None:
    for c_in, c_out in CHANNELS:
        module = build_conv(name, c_in, c_out, stride).eval()
        reference = nn.Conv2d(c_in, c_out, 3, stride, padding=1)
        for h, w in SIZES:
            x = torch.randn(2, c_in, h, w)
            with torch.no_grad():
                assert module(x).shape == reference(x).shape, (name, c_in, c_out, h, w)


@pytest.mark.parametrize("name", CONV_MODULES)
def test_gradients_reach_every_parameter(name: str) -> None:
    module = build_conv(name, 32, 64, 2).train()
    out = module(torch.randn(4, 32, 7, 9))
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", CONV_MODULES)
def test_channels_last_gives_the_same_output(name: str) -> None:
    module = build_conv(name, 32, 64, 1).eval()
    x = torch.randn(2, 32, 7, 9)
    with torch.no_grad():
        expected = module(x)
        module = module.to(memory_format=torch.channels_last)
        got = module(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CONV_MODULES)
def test_bf16_autocast_on_cpu_is_finite(name: str) -> None:
    module = build_conv(name, 32, 32, 2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(2, 32, 8, 8))
    assert out.shape == (2, 32, 4, 4)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", CONV_MODULES)
def test_branch_weights_are_exposed(name: str) -> None:
    module = build_conv(name, 32, 64, 1).eval()
    with record_attention(module) as recorded, torch.no_grad():
        module(torch.randn(3, 32, 8, 8))
        maps = recorded[""].attention_maps
        if name not in SOFTMAX_OVER_BRANCHES and "branch" not in maps:
            return  # e.g. conv3x3 has no branches
        weights = maps["branch"]
    assert weights.dim() in (2, 3) and weights.shape[0] == 3
    if name in SOFTMAX_OVER_BRANCHES:
        torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)))
    assert module.attention_maps == {}  # cleared when recording stops


@pytest.mark.parametrize("name", CONV_MODULES)
def test_unknown_option_lists_valid_options(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_conv(name, 32, 32, 1, no_such_option=1)
    message = str(err.value)
    assert "no_such_option" in message
    for option in get_spec(name).option_names():
        assert option in message


@pytest.mark.parametrize("name", CONV_MODULES)
def test_declares_whether_it_includes_norm_act(name: str) -> None:
    # Conv modules must declare it: the backbone skips its own BN+ReLU when it is True.
    flag = get_spec(name).cls.includes_norm_act
    assert isinstance(flag, bool)
    if name in {"conv3x3", "sk", "splat", "psa", "condconv", "dynamic_conv"}:
        assert flag == (name in {"sk", "splat"})  # BN+ReLU inside the branches in the paper
