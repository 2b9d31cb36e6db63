"""Backbones: exact parameter counts (torchvision), torchvision equivalence,
shapes, options and their errors.

Counting tests build on the meta device (no memory, no init cost); forward tests are small.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from attnexp.errors import ConfigError
from attnexp.models import available_models, build_model, load_torchvision_weights, model_info


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kwargs)


def conv_linear_macs(model: nn.Module, size: int) -> int:
    """Multiply-accumulates of convs and linears for one size x size image (meta forward)."""
    total = 0

    def hook(m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += out[0].numel() * k
        else:
            total += m.in_features * m.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    return total


# --------------------------------------------------------------------------- counts
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
}


@pytest.mark.parametrize("name", list(IMAGENET_PARAMS))
def test_imagenet_param_counts(name: str) -> None:
    ours = n_params(meta_model(name, num_classes=1000))
    with torch.device("meta"):
        theirs = n_params(getattr(torchvision.models, name)())
    assert ours == IMAGENET_PARAMS[name] == theirs


@pytest.mark.parametrize("name", list(IMAGENET_PARAMS))
def test_imagenet_state_dict_names_match_torchvision(name: str) -> None:
    with torch.device("meta"):
        theirs = getattr(torchvision.models, name)().state_dict()
    ours = meta_model(name, num_classes=1000).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }


CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


@pytest.mark.parametrize("name", list(CIFAR_PARAMS))
def test_cifar_param_counts(name: str) -> None:
    base = n_params(meta_model(name, num_classes=10))
    assert base == CIFAR_PARAMS[name]
    assert n_params(meta_model(name, num_classes=100)) == base + 5_850
    assert n_params(meta_model(name, num_classes=10, shortcut="B")) == base + 2_752


def test_preact_cifar_param_counts() -> None:
    # He et al. 2016b: ResNet-164 1.7M; Zagoruyko & Komodakis: WRN-16-8 11.0M, WRN-28-10 36.5M.
    assert n_params(meta_model("resnet164", num_classes=10)) == 1_703_258
    assert n_params(meta_model("wrn16_8", num_classes=10)) == 10_961_370
    assert n_params(meta_model("wrn28_10", num_classes=10)) == 36_479_194
    assert n_params(meta_model("wrn28_10", num_classes=100)) == 36_536_884


def test_zero_pad_shortcut_has_no_parameters() -> None:
    model = meta_model("resnet20", num_classes=10)
    shortcut = model.layer2[0].downsample
    assert shortcut is not None and n_params(shortcut) == 0
    x = torch.randn(2, 16, 8, 8)
    out = type(shortcut)(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()


# --------------------------------------------------------------------------- v1 / v1.5
def test_stride_position_v1_vs_v15() -> None:
    v15 = meta_model("resnet50", num_classes=1000)
    v1 = meta_model("resnet50", num_classes=1000, stride_position="v1")
    b15, b1 = v15.layer2[0], v1.layer2[0]
    assert (b15.conv1.stride, b15.conv2.stride) == ((1, 1), (2, 2))
    assert (b1.conv1.stride, b1.conv2.stride) == ((2, 2), (1, 1))
    assert n_params(v1) == n_params(v15) == 25_557_032
    # torchvision: 4.089 GMACs (v1.5) and 3.858 GMACs (v1) at 224x224.
    assert round(conv_linear_macs(v15, 224) / 1e9, 3) == 4.089
    assert round(conv_linear_macs(v1, 224) / 1e9, 3) == 3.858


@pytest.mark.parametrize(
    ("name", "gmacs"),
    [("resnet18", 1.814), ("resnet34", 3.664), ("resnet101", 7.801), ("resnext50_32x4d", 4.230)],
)
def test_imagenet_macs(name: str, gmacs: float) -> None:
    assert round(conv_linear_macs(meta_model(name, num_classes=1000), 224) / 1e9, 3) == gmacs


def test_basic_block_nets_ignore_stride_position() -> None:
    a = meta_model("resnet18", num_classes=1000, stride_position="v1")
    assert a.layer2[0].conv1.stride == (2, 2)


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("name", list(IMAGENET_PARAMS))
def test_imagenet_forward_matches_torchvision(name: str) -> None:
    """Every ImageNet backbone, torchvision's weights loaded: same logits (64x64, batch 1)."""
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)().eval()
    model = build_model(name, num_classes=1000).eval()
    report = load_torchvision_weights(model, ref.state_dict())
    assert report.missing == report.unexpected == report.mismatched == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == (1, 1000)
    torch.testing.assert_close(out, expected)


def test_cifar_forward_shapes() -> None:
    model = build_model("resnet20", num_classes=100)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    out.sum().backward()
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet110", "resnet164", "wrn16_8", "wrn28_10"])
def test_cifar_forward_shapes_slow(name: str) -> None:
    model = build_model(name, num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_in_chans_and_wrn_dropout() -> None:
    model = build_model("resnet18", num_classes=5, in_chans=1)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    wrn = meta_model("wrn16_8", num_classes=10, dropout=0.3)
    assert isinstance(wrn.layer1[0].dropout, nn.Dropout) and wrn.layer1[0].dropout.p == 0.3


def test_zero_init_residual() -> None:
    model = build_model("resnet50", num_classes=1000, zero_init_residual=True)
    assert all(not b.bn3.weight.any() for stage in model.stages for b in stage)
    assert model.layer1[0].bn2.weight.all()
    basic = build_model("resnet20", num_classes=10, zero_init_residual=True)
    assert all(not b.bn2.weight.any() for stage in basic.stages for b in stage)


# --------------------------------------------------------------------------- weights
def test_torchvision_weights_load_into_resnet50_with_se() -> None:
    state = torchvision.models.resnet50(weights=None).state_dict()
    model = build_model("resnet50", num_classes=1000, placements=[{"module": "se"}], image_size=64)
    report = load_torchvision_weights(model, state)
    assert report.unexpected == [] and report.mismatched == []
    assert report.missing and all(".attn.after_conv3." in k for k in report.missing)
    attention_keys = {k for k in model.state_dict() if ".attn." in k}
    assert set(report.missing) == attention_keys
    assert torch.equal(model.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])


def test_torchvision_weights_with_other_num_classes() -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    model = build_model("resnet18", num_classes=10)
    report = load_torchvision_weights(model, state)
    assert report.mismatched == ["fc.bias", "fc.weight"]
    assert report.missing == ["fc.bias", "fc.weight"] and report.unexpected == []


# --------------------------------------------------------------------------- options
def test_registry_of_models() -> None:
    names = available_models()
    assert set(IMAGENET_PARAMS) | set(CIFAR_PARAMS) | {"resnet164", "wrn16_8", "wrn28_10"} <= set(
        names
    )
    info = model_info("resnet50")
    assert info.num_stages == 4 and info.blocks_per_stage == (3, 4, 6, 3)
    assert info.stage_channels == (256, 512, 1024, 2048)
    assert model_info("resnet20").num_stages == 3
    assert model_info("wrn28_10").stage_channels == (160, 320, 640)
    for name in names:
        model = meta_model(name, num_classes=10)
        info = model_info(name)
        assert model.num_stages == info.num_stages
        assert tuple(len(s) for s in model.stages) == info.blocks_per_stage
        assert tuple(model.stage_channels) == info.stage_channels


def test_unknown_model_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_model("resnet51", num_classes=10)


def test_unknown_backbone_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid options: in_chans, stride_position"):
        build_model("resnet50", num_classes=10, widht=2)


@pytest.mark.parametrize(
    ("name", "option", "value", "match"),
    [
        ("resnet20", "stride_position", "v1", "stride_position.*CIFAR ResNet"),
        ("wrn16_8", "stride_position", "v1", "stride_position"),
        ("resnet50", "shortcut", "A", "shortcut.*ImageNet ResNet"),
        ("resnet50", "dropout", 0.1, "dropout"),
        ("resnet50", "stride_position", "v2", "stride_position.*v1.5, v1"),
        ("resnet20", "shortcut", "C", "shortcut.*A, B"),
        ("wrn16_8", "dropout", 1.5, "dropout"),
        ("wrn16_8", "zero_init_residual", True, "zero_init_residual"),
        ("resnet18", "in_chans", 0, "in_chans"),
    ],
)
def test_backbone_option_errors(name: str, option: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        meta_model(name, num_classes=10, **{option: value})


def test_num_classes_is_checked() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("resnet20", num_classes=0)
