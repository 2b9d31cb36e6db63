"""The backbone owns its placement vocabulary, and any conv of a block can be a conv site.

Positions and conv sites are read from the block classes (the single source); a conv-kind
module replaces the named convs with their channels, stride and kernel size, and every
impossible request is a ConfigError naming the valid sites of that block type.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import attnexp.attention as zoo
from attnexp.errors import ConfigError
from attnexp.models import (
    GATE_POSITIONS,
    POSITIONS,
    Backbone,
    ResidualBlock,
    apply_placements,
    build_model,
    parse_placements,
)
from attnexp.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from attnexp.models.cifar import PreActResNet, wide_resnet

BLOCKS = {
    "basic": lambda: BasicBlock(8, 16, 2),
    "bottleneck": lambda: Bottleneck(8, 4, 16, 2),
    "bottleneck_v1": lambda: Bottleneck(8, 4, 16, 2, stride_on="conv1"),
    "preact_basic": lambda: PreActBasicBlock(8, 16, 2),
    "preact_bottleneck": lambda: PreActBottleneck(8, 4, 16, 2),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- vocabulary
def test_positions_come_from_the_blocks_and_the_backbone() -> None:
    assert (*ResidualBlock.POSITIONS, *Backbone.STAGE_POSITIONS) == GATE_POSITIONS
    assert ("auto", *GATE_POSITIONS, "conv") == POSITIONS
    assert not hasattr(zoo, "GATE_POSITIONS")  # the zoo no longer lists backbone positions
    assert not hasattr(zoo.registry, "GATE_POSITIONS")


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_every_block_offers_its_declared_positions_and_sites(kind: str) -> None:
    block = BLOCKS[kind]()
    cls = type(block)
    assert tuple(block.hook_points()) == cls.POSITIONS or set(block.hook_points()) == set(
        cls.POSITIONS
    )
    assert set(cls.DEFAULT_CONV_SITES) <= set(cls.CONV_SITES)
    sites = block.conv_sites()
    assert set(sites) == set(cls.CONV_SITES)  # stride 2 + new width: a projection exists
    for name, site in sites.items():
        conv = block.downsample if name == "downsample" else getattr(block, name)
        conv = conv[0] if isinstance(conv, nn.Sequential) else conv
        assert (conv.in_channels, conv.out_channels) == (site.in_channels, site.out_channels)
        assert (conv.stride[0], conv.kernel_size[0]) == (site.stride, site.kernel_size)
    assert all(sites[s].kernel_size == 3 for s in cls.DEFAULT_CONV_SITES)  # the 3x3 convs


def test_downsample_is_a_site_only_where_there_is_a_projection() -> None:
    assert "downsample" not in BasicBlock(16, 16, 1).conv_sites()
    assert "downsample" not in BasicBlock(16, 32, 2, shortcut="A").conv_sites()
    assert "downsample" in BasicBlock(16, 32, 2, shortcut="B").conv_sites()


# --------------------------------------------------------------------------- wiring
def _all_sites_equal_the_backbone(model: Backbone, image_size: int) -> None:
    """Every conv of every block replaced by the zoo's plain conv (kernel size filled in
    from the site) with the original weights: same parameter count, same output."""
    torch.manual_seed(0)
    model.eval()
    (kind,) = {type(b) for b in model.modules() if isinstance(b, ResidualBlock)}
    replaced = copy.deepcopy(model)
    conv = {"name": "conv3x3", "sites": list(kind.CONV_SITES)}
    apply_placements(replaced, parse_placements(None, conv), image_size=image_size)
    assert n_params(replaced) == n_params(model)
    state = model.state_dict()
    mapped = {}
    for key in replaced.state_dict():
        plain = key.replace(".conv.weight", ".weight")
        mapped[key] = state[plain] if key.endswith(".conv.weight") else state[key]
    replaced.load_state_dict(mapped)
    x = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        torch.testing.assert_close(replaced(x), model(x))


@pytest.mark.parametrize(
    ("name", "build", "size"),
    [
        ("resnet18", lambda: build_model("resnet18", num_classes=10, image_size=32), 32),
        ("resnet50", lambda: build_model("resnet50", num_classes=10, image_size=32), 32),
        (
            "resnet50_v1",
            lambda: build_model("resnet50", num_classes=10, image_size=32, stride_position="v1"),
            32,
        ),
        ("wrn10_2", lambda: wide_resnet(10, 2), 16),
        ("preact_bottleneck", lambda: PreActResNet("bottleneck", 1, (32, 64, 128)), 16),
    ],
)
def test_every_conv_site_takes_the_place_of_its_conv(name: str, build, size: int) -> None:
    _all_sites_equal_the_backbone(build(), size)


def test_sites_select_convs_and_masks_apply() -> None:
    model = build_model(
        "resnet18",
        num_classes=10,
        image_size=32,
        conv={"name": "conv3x3", "sites": ["conv2", "downsample"], "stages": [3, 4]},
    )
    paths = [r.path for r in model.placed_modules]
    assert paths == [
        "layer3.0.conv2",
        "layer3.0.downsample.0",
        "layer3.1.conv2",
        "layer4.0.conv2",
        "layer4.0.downsample.0",
        "layer4.1.conv2",
    ]
    ds = next(r for r in model.placed_modules if r.site == "downsample")
    assert (ds.in_channels, ds.out_channels, ds.size, ds.out_size) == (128, 256, 4, 2)
    assert model.layer3[0].downsample[0].conv.kernel_size == (1, 1)  # filled from the site


def test_bottleneck_1x1_sites_get_kernel_size_one() -> None:
    with torch.device("meta"):
        model = build_model(
            "resnet50", num_classes=1000, conv={"name": "conv3x3", "sites": ["conv1", "conv3"]}
        )
    assert n_params(model) == 25_557_032
    assert model.layer1[0].conv1.conv.kernel_size == (1, 1)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("model", "conv", "match"),
    [
        (
            "resnet18",
            {"name": "conv3x3", "sites": ["conv3"]},
            r"conv\.sites: 'conv3' is not a conv of a BasicBlock \(resnet18\); valid sites: "
            r"conv1, conv2, downsample \(default: conv1, conv2\)",
        ),
        (
            "resnet50",
            {"name": "conv3x3", "sites": ["stem"]},
            r"'stem' is not a conv of a Bottleneck .*valid sites: conv1, conv2, conv3, "
            r"downsample \(default: conv2\)",
        ),
        (
            "resnet50",
            {"name": "sk", "sites": ["conv1"]},
            r"'sk' stands in for 3x3 convs only .*conv1 of a Bottleneck is a 1x1 conv; sites "
            r"it can replace here: conv2",
        ),
        (
            "resnet20",
            {"name": "conv3x3", "sites": ["downsample"]},
            r"no selected block .*downsample",
        ),
        ("resnet20", {"name": "conv3x3", "sites": []}, r"conv\.sites must be a non-empty list"),
        ("resnet20", {"name": "conv3x3", "sites": ["conv1", "conv1"]}, r"lists a conv twice"),
    ],
)
def test_impossible_sites_name_the_valid_ones(model: str, conv: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(model, num_classes=10, conv=conv, image_size=32)


def test_sites_only_with_position_conv() -> None:
    with pytest.raises(ConfigError, match=r"placements\[0\]\.sites .*only position 'conv'"):
        build_model(
            "resnet20",
            num_classes=10,
            placements=[{"module": "se", "position": "after_conv3", "sites": ["conv1"]}],
        )


def test_same_conv_twice_is_refused_but_other_sites_combine() -> None:
    model = build_model(
        "resnet20",
        num_classes=10,
        conv={"name": "conv3x3", "sites": ["conv1"]},
        placements=[{"module": "dynamic_conv", "position": "conv", "sites": ["conv2"]}],
    )
    assert {r.module for r in model.placed_modules if r.site == "conv2"} == {"dynamic_conv"}
    with pytest.raises(ConfigError, match=r"conv: conv2 of stage 1, block 0 is already replaced"):
        build_model(
            "resnet20",
            num_classes=10,
            conv={"name": "conv3x3"},
            placements=[{"module": "dynamic_conv", "position": "conv", "sites": ["conv2"]}],
        )


def test_piped_listing_never_splits_numbers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnexp.models.__main__ import main as cli_main

    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal setting must not matter when piped
    assert cli_main(["resnet50", "--conv", "mhsa", "--conv-stages", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if "layer4." in line]
    assert len(rows) == 3 and all("789,760" in r or "793,344" in r for r in rows)
    assert any("= 20,852,008" in line for line in lines)
    assert cli_main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert any(
        "stride_position='v1.5'" in line and "resnet50 " in line for line in listing.splitlines()
    )
