"""Every registered zoo module x every position: it builds and runs, or it fails at build
time with the documented ConfigError.

Parametrised from the registry at collection time, so new zoo modules are covered without
editing this file. Default run: the whole matrix on ResNet-20 (32x32, forward + backward,
batch 2; every block at ``auto``, the first block of each stage at the other positions)
and each module at its own position on the first block of each ResNet-50 stage at 64x64.
The whole ResNet-50 matrix is ``slow``; the pre-activation nets run in CI's ``essential`` stage.
"""

from __future__ import annotations

import copy

import pytest
import torch

from attnexp.attention import available, get_spec
from attnexp.errors import ConfigError
from attnexp.models import GATE_POSITIONS, POSITIONS, Backbone, apply_placements, build_model
from attnexp.models.cifar import wide_resnet

MODULES = [name for name in available() if not name.startswith("_test")]
PLACES = list(POSITIONS)  # auto, every gate position, conv
_BASE: dict[str, Backbone] = {}


def base(name: str) -> Backbone:
    """A cached bare backbone; copied per test (cheaper than building ImageNet nets)."""
    if name not in _BASE:
        torch.manual_seed(0)
        if name == "wrn10_2":
            _BASE[name] = wide_resnet(10, 2)
        elif name == "resnet164":
            _BASE[name] = build_model("resnet164", num_classes=10)
        else:
            _BASE[name] = build_model(name, num_classes=10)
    return _BASE[name]


def expected_error(module: str, position: str, model: Backbone, image_size: int) -> str | None:
    """The documented reason a (module, position) pair cannot exist, else None."""
    spec = get_spec(module)
    resolved = spec.default_position if position == "auto" else position
    if (spec.kind == "conv") != (resolved == "conv"):
        return "position"
    sizes = model.stage_sizes(image_size)
    smallest = sizes[-2] if resolved == "between_stages" else sizes[-1]
    if resolved == "conv":
        smallest = sizes[-1]
    if spec.min_size > smallest:
        return "min_size"
    return None


def check_pair(
    model_name: str, module: str, position: str, image_size: int, backward: bool, blocks="all"
) -> None:
    bare = base(model_name)
    spec = get_spec(module)
    resolved = spec.default_position if position == "auto" else position
    if resolved == "between_stages":
        blocks = "all"  # one module after each stage; blocks does not apply
    placement = {"module": module, "position": position, "blocks": blocks}
    reason = expected_error(module, position, bare, image_size)
    if reason is not None:
        with pytest.raises(ConfigError, match=reason):
            apply_placements(bare, [placement], image_size=image_size)
        assert not bare.placed_modules  # a failed request leaves the model untouched
        return
    model = copy.deepcopy(bare)
    records = apply_placements(model, [placement], image_size=image_size)
    assert records, (module, position)
    assert all(r.module == module for r in records)
    x = torch.randn(2, 3, image_size, image_size)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all(), (module, position)
    if backward:
        out.sum().backward()
        grads = [p.grad for r in records for p in model.get_submodule(r.path).parameters()]
        assert all(g is not None for g in grads), f"{module} at {position}: unused parameters"


@pytest.mark.parametrize("position", PLACES)
@pytest.mark.parametrize("module", MODULES)
def test_resnet20_matrix(module: str, position: str) -> None:
    # every block at the module's own position; the first block of each stage (the
    # downsampling ones included) elsewhere
    blocks = "all" if position == "auto" else "first"
    check_pair("resnet20", module, position, 32, backward=True, blocks=blocks)


@pytest.mark.parametrize("module", MODULES)
def test_resnet50_default_position(module: str) -> None:
    check_pair("resnet50", module, "auto", 64, backward=False, blocks="first")


@pytest.mark.slow
@pytest.mark.parametrize("position", PLACES)
@pytest.mark.parametrize("module", MODULES)
def test_resnet50_matrix(module: str, position: str) -> None:
    blocks = "all" if position == "auto" else "first"
    check_pair("resnet50", module, position, 64, backward=True, blocks=blocks)


@pytest.mark.essential
@pytest.mark.parametrize("position", PLACES)
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("model", ["wrn10_2", "resnet164"])
def test_preact_matrix(model: str, module: str, position: str) -> None:
    check_pair(model, module, position, 32, backward=True, blocks="first")


CONV_MODULES = [name for name in available("conv") if not name.startswith("_test")]


@pytest.mark.parametrize("module", CONV_MODULES)
def test_conv_module_on_both_convs_of_every_basic_block(module: str) -> None:
    """Every conv-kind module on conv1 and conv2 of every block of ResNet-20 (forward +
    backward, 32x32): the DY-ResNet layout."""
    bare = base("resnet20")
    model = copy.deepcopy(bare)
    conv = {"module": module, "position": "conv", "sites": ["conv1", "conv2"]}
    records = apply_placements(model, [conv], image_size=32)
    assert len(records) == 2 * sum(len(model.blocks(s)) for s in (1, 2, 3))
    assert {r.site for r in records} == {"conv1", "conv2"}
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    for r in records:
        for p in model.get_submodule(r.path).parameters():
            assert p.grad is not None, f"{module} at {r.path}: unused parameters"


@pytest.mark.parametrize("module", CONV_MODULES)
def test_conv_module_on_conv2_of_every_bottleneck(module: str) -> None:
    """Every conv-kind module on the 3x3 conv2 of every ResNet-50 block (64x64, forward)."""
    model = copy.deepcopy(base("resnet50"))
    conv = {"module": module, "position": "conv", "sites": ["conv2"]}
    records = apply_placements(model, [conv], image_size=64)
    assert len(records) == 16 and {r.site for r in records} == {"conv2"}
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


def test_matrix_covers_every_position() -> None:
    assert "none" in MODULES
    assert set(PLACES) == {"auto", "conv", *GATE_POSITIONS}
