"""The contract every gate (and stage) module keeps: (B, C, H, W) in, the same out.

Parametrised over ``available("gate")`` – the whole registry – so a module registered in
any family file (channel, spatial, token, hybrid, ...) is covered without editing this
file. Tensors are tiny: the suite runs on shared CPU cores.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch

from attnexp.attention import available, build_attention, get_spec, record_attention
from attnexp.attention.base import AttentionModule
from attnexp.errors import ConfigError

GATES = available("gate")
CHANNELS = (16, 24, 256)
#: Candidate map sizes: H != W, odd, and a 1x1 map (the last stage of an ImageNet-stem
#: ResNet on 32-pixel images); each module runs on those not below its ``min_size``.
SIZES = ((8, 6), (7, 5), (1, 1))
#: Modules that legitimately expose no map.
NO_MAPS = {"none"}


def _sizes(name: str) -> list[tuple[int, int]]:
    m = get_spec(name).min_size
    return [s for s in SIZES if min(s) >= m] or [(m, m + 1)]


def _size(name: str) -> tuple[int, int]:
    return _sizes(name)[0]


def _build(name: str, channels: int = 16) -> torch.nn.Module:
    return build_attention(name, channels)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not stall on a busy shared core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_registry_has_the_channel_and_hybrid_families() -> None:
    mine = {"se", "eca", "srm", "gsop", "ge", "cbam", "cbam_channel", "cbam_spatial", "bam"}
    mine |= {"coord", "triplet", "simam", "sge", "shuffle", "polarized", "a2"}
    assert mine <= set(GATES)


@pytest.mark.parametrize("name", GATES)
def test_is_a_zoo_module_with_a_consistent_residual_flag(name: str) -> None:
    spec = get_spec(name)
    assert issubclass(spec.cls, AttentionModule)
    assert spec.cls.has_residual == spec.residual, name
    assert spec.paper


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("name", GATES)
def test_output_has_the_input_shape_and_dtype(name: str, channels: int) -> None:
    module = build_attention(name, channels).train()
    for h, w in _sizes(name):
        x = torch.randn(2, channels, h, w)
        out = module(x)
        assert out.shape == x.shape, (name, channels, h, w)
        assert out.dtype == x.dtype, (name, channels, h, w)
        assert torch.isfinite(out).all(), (name, channels, h, w)


@pytest.mark.parametrize("name", GATES)
def test_batch_of_one_in_training_mode(name: str) -> None:
    # BatchNorm on pooled features fails for one sample in training (PITFALLS.md).
    module = _build(name).train()
    h, w = _size(name)
    out = module(torch.randn(1, 16, h, w))
    assert out.shape == (1, 16, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GATES)
def test_gradients_reach_every_parameter(name: str) -> None:
    # C=32, not 16: at 16 some papers' bottlenecks have one channel (GC: C/16 = 1, and a
    # LayerNorm over one value cuts the gradient to the context branch; documented there).
    module = _build(name, 32)
    # Move zero-initialised parameters (identity-start gates, SGE/SA scales) off zero so
    # that every parameter can influence the output.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 32, *_size(name), requires_grad=True)
    # Training mode: every parameter is in the graph and its gradient is finite.
    module.train()
    out = module(x)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
    # Eval mode: every parameter changes the output (no dead weights). In training mode a
    # bias right before a BatchNorm (BAM's official channel gate) has an exactly zero
    # gradient by construction, so this part is checked with running statistics.
    module.zero_grad()
    module.eval()
    out = module(x)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} is dead"


@pytest.mark.parametrize("name", GATES)
def test_gradients_are_finite_on_the_smallest_map(name: str) -> None:
    m = get_spec(name).min_size
    module = _build(name).train()
    x = torch.randn(2, 16, m, m, requires_grad=True)
    out = module(x)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(out).all(), name
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
    for pname, p in module.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}.{pname}"


@pytest.mark.parametrize("name", GATES)
def test_eval_output_is_deterministic(name: str) -> None:
    module = _build(name).eval()
    x = torch.randn(2, 16, *_size(name))
    with torch.no_grad():
        assert torch.equal(module(x), module(x)), name


@pytest.mark.parametrize("name", GATES)
def test_channels_last_gives_the_same_output(name: str) -> None:
    module = _build(name).eval()
    x = torch.randn(2, 16, *_size(name))
    with torch.no_grad():
        expected = module(x)
        module = module.to(memory_format=torch.channels_last)
        got = module(x.to(memory_format=torch.channels_last))
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", GATES)
def test_bf16_autocast_on_cpu_is_finite(name: str) -> None:
    module = _build(name).train()
    x = torch.randn(2, 16, *_size(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.shape == x.shape
    assert torch.isfinite(out.float()).all(), name


@pytest.mark.parametrize("name", GATES)
def test_maps_are_exposed_only_while_recording(name: str) -> None:
    module = _build(name).eval()
    x = torch.randn(2, 16, *_size(name))
    with torch.no_grad():
        module(x)
        assert module.attention_maps == {}, "maps kept without record_attention"
        with record_attention(module) as recorded:
            module(x)
            maps = dict(recorded[""].attention_maps)
    assert module.attention_maps == {} and not module.record_maps
    if name in NO_MAPS:
        return
    assert maps, f"{name} exposes no attention map"
    for key, value in maps.items():
        assert value.shape[0] == 2, (name, key, tuple(value.shape))
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all(), (name, key)
        assert not value.requires_grad
    for key in ("channel", "spatial"):
        if key in maps and key == "channel":
            assert maps[key].dim() == 2, (name, key, tuple(maps[key].shape))
        if key in maps and key == "spatial":
            assert maps[key].dim() == 4 and maps[key].shape[2:] == x.shape[2:], (name, key)


@pytest.mark.parametrize("name", GATES)
def test_unknown_option_is_a_config_error_listing_the_valid_ones(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_attention(name, 16, not_an_option=1)
    message = str(info.value)
    assert "not_an_option" in message
    for option in get_spec(name).option_names():
        assert option in message, (name, option)


@pytest.mark.parametrize("name", GATES)
def test_every_option_has_a_default(name: str) -> None:
    # build_attention(name, C) must give the paper's module: no required knobs.
    spec = get_spec(name)
    params = inspect.signature(spec.cls.__init__).parameters
    missing = [o for o in spec.option_names() if params[o].default is inspect.Parameter.empty]
    assert not missing, (name, missing)
