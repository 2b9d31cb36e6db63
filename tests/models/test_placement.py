"""Placements: where each position is wired, selection, per-stage options, conv
replacement, every impossible request (ConfigError naming the option), paper totals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from attnexp.attention import available, get_spec
from attnexp.errors import ConfigError
from attnexp.models import (
    BLOCK_POSITIONS,
    apply_placements,
    build_model,
)
from attnexp.models.__main__ import main as cli_main
from attnexp.models.blocks import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
)
from attnexp.models.cifar import PreActResNet, wide_resnet

Zoo = Callable[[str], str]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def place(module: str | dict, position: str = "auto", **kw) -> dict:
    return {"module": module, "position": position, **kw}


def tiny_preact_bottleneck(**kw) -> PreActResNet:
    """A 1-block-per-stage ResNet-164-style net (same blocks, cheap)."""
    model = PreActResNet("bottleneck", 1, (64, 128, 256), **kw)
    model.name = "preact_bottleneck_tiny"
    return model


# --------------------------------------------------------------------------- wiring
MODELS = {
    "resnet18": (lambda: build_model("resnet18", num_classes=10, image_size=64), 64),
    "resnet50": (lambda: build_model("resnet50", num_classes=10, image_size=64), 64),
    "resnet50_v1": (
        lambda: build_model("resnet50", num_classes=10, stride_position="v1", image_size=64),
        64,
    ),
    "resnet20": (lambda: build_model("resnet20", num_classes=10), 32),
    "wrn10_2": (lambda: wide_resnet(10, 2), 32),
    "preact_bottleneck": (tiny_preact_bottleneck, 32),
}


@pytest.mark.parametrize("position", [*BLOCK_POSITIONS, "between_stages"])
@pytest.mark.parametrize("name", list(MODELS))
def test_records_match_what_each_gate_sees(test_zoo: Zoo, name: str, position: str) -> None:
    """At every position, the channels and size a record states are what the gate receives.

    Built and run on the meta device: only shapes matter here, so no compute is spent.
    """
    build, size = MODELS[name]
    with torch.device("meta"):
        model = build()
        records = apply_placements(model, [place(test_zoo("recorder"), position)], image_size=size)
        model(torch.zeros(2, 3, size, size))
    assert records and records == model.placed_modules
    for r in records:
        gate = model.get_submodule(r.path)
        assert gate.seen[-1] == (2, r.in_channels, r.size, r.size), r
        assert r.params == r.in_channels == r.out_channels
    n = model.num_stages
    expected_stages = n - 1 if position == "between_stages" else n
    assert {r.stage for r in records} == set(range(1, expected_stages + 1))
    if position != "between_stages":
        assert len(records) == sum(len(s) for s in model.stages)


@pytest.mark.parametrize(
    ("stride_position", "expected"),
    [
        (
            "v1.5",
            {
                "before_block": (256, 16),
                "after_conv1": (128, 16),
                "after_conv2": (128, 8),
                "after_conv3": (512, 8),
                "identity": (512, 8),
                "after_add": (512, 8),
            },
        ),
        (
            "v1",
            {
                "before_block": (256, 16),
                "after_conv1": (128, 8),
                "after_conv2": (128, 8),
                "after_conv3": (512, 8),
                "identity": (512, 8),
                "after_add": (512, 8),
            },
        ),
    ],
)
def test_resnet50_positions_channels_and_sizes(
    test_zoo: Zoo, stride_position: str, expected: dict
) -> None:
    """layer2.0 of ResNet-50 at 64x64: in 256 @16x16, width 128, out 512 @8x8."""
    with torch.device("meta"):
        for position, (channels, size) in expected.items():
            model = build_model(
                "resnet50",
                num_classes=10,
                stride_position=stride_position,
                image_size=64,
                placements=[place(test_zoo("recorder"), position, stages=[2], blocks="first")],
            )
            (r,) = model.placed_modules
            assert (r.stage, r.block, r.in_channels, r.size) == (2, 0, channels, size), position
            assert r.path == f"layer2.0.attn.{position}.0"
        model = build_model(
            "resnet50",
            num_classes=10,
            placements=[place(test_zoo("recorder"), "between_stages")],
        )
    assert [(r.stage, r.in_channels, r.size) for r in model.placed_modules] == [
        (1, 256, 56),
        (2, 512, 28),
        (3, 1024, 14),
    ]
    assert [r.path for r in model.placed_modules] == [f"stage_attn.layer{i}.0" for i in (1, 2, 3)]


# --------------------------------------------------------------------------- semantics
def _branch_end(block: nn.Module) -> nn.Module:
    """The module whose output is the residual branch before any after_conv3 gate."""
    if isinstance(block, Bottleneck):
        return block.bn3
    if isinstance(block, BasicBlock):
        return block.bn2
    if isinstance(block, PreActBottleneck):
        return block.conv3
    return block.conv2


def _shortcut(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if block.downsample is None:
        return x
    if block.preact and isinstance(block.downsample, nn.Conv2d):
        return block.downsample(F.relu(block.bn1(x)))
    return block.downsample(x)


BLOCKS = {
    "basic_B": lambda: BasicBlock(8, 16, 2, shortcut="B"),
    "basic_A": lambda: BasicBlock(8, 16, 2, shortcut="A"),
    "basic_same": lambda: BasicBlock(16, 16, 1),
    "bottleneck_v15": lambda: Bottleneck(8, 4, 16, 2),
    "bottleneck_v1": lambda: Bottleneck(8, 4, 16, 2, stride_on="conv1"),
    "preact_basic": lambda: PreActBasicBlock(8, 16, 2),
    "preact_basic_same": lambda: PreActBasicBlock(16, 16, 1),
    "preact_bottleneck": lambda: PreActBottleneck(8, 4, 16, 2),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_position_semantics(kind: str) -> None:
    """A gate that zeroes its input shows which signal each position acts on."""
    torch.manual_seed(0)
    x = torch.randn(2, 16 if "same" in kind else 8, 8, 8)
    finish = (lambda t: t) if "preact" in kind else F.relu

    def run(position: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        block = BLOCKS[kind]().eval()
        if position:
            block.add_gate(position, ZeroLike())
        branch: list[torch.Tensor] = []
        _branch_end(block).register_forward_hook(lambda m, i, o: branch.append(o.clone()))
        with torch.no_grad():
            return block(x), branch[0], _shortcut(block, x)

    plain, branch, shortcut = run("")
    torch.testing.assert_close(plain, finish(branch + shortcut))
    out, _, shortcut = run("after_conv3")
    torch.testing.assert_close(out, finish(shortcut))  # the residual branch is zeroed
    out, branch, _ = run("identity")
    torch.testing.assert_close(out, finish(branch))  # the shortcut is zeroed
    out, _, _ = run("after_add")
    assert not out.any()
    out, branch0, shortcut = run("before_block")
    # SE-PRE: the branch sees the gated (zero) input, the shortcut still carries x
    torch.testing.assert_close(out, finish(branch0 + shortcut))
    assert not torch.allclose(branch0, branch)
    out, _, shortcut = run("after_conv2")
    if isinstance(BLOCKS[kind](), (BasicBlock, PreActBasicBlock)):
        torch.testing.assert_close(out, finish(shortcut))  # == after_conv3 on basic blocks


class ZeroLike(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_gates_at_one_place_run_in_placement_order(test_zoo: Zoo) -> None:
    model = build_model(
        "resnet20",
        num_classes=10,
        placements=[
            place(test_zoo("recorder"), "after_conv3", stages=[1], blocks="first"),
            place({"name": test_zoo("recorder"), "tag": 7}, "after_conv3", stages=[1], blocks=[0]),
        ],
    )
    seq = model.layer1[0].attn["after_conv3"]
    assert [m.tag for m in seq] == [0, 7]
    assert [r.path for r in model.placed_modules] == [
        "layer1.0.attn.after_conv3.0",
        "layer1.0.attn.after_conv3.1",
    ]


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("stages", "blocks", "expected"),
    [
        ([2, 3], "first", [(2, 0), (3, 0)]),
        ([2, 3], "last", [(2, 3), (3, 5)]),
        (
            "all",
            "every_2",
            [(1, 0), (1, 2), (2, 0), (2, 2), (3, 0), (3, 2), (3, 4), (4, 0), (4, 2)],
        ),
        ([4], [0, -1], [(4, 0), (4, 2)]),
        (3, 1, [(3, 1)]),
        ([4, 1], "first", [(4, 0), (1, 0)]),
    ],
)
def test_stage_and_block_selection(test_zoo: Zoo, stages, blocks, expected) -> None:
    with torch.device("meta"):
        model = build_model(
            "resnet50",
            num_classes=10,
            image_size=64,
            placements=[place(test_zoo("recorder"), stages=stages, blocks=blocks)],
        )
    assert [(r.stage, r.block) for r in model.placed_modules] == expected


def test_stage_options_give_one_value_per_stage(test_zoo: Zoo) -> None:
    with torch.device("meta"):
        model = build_model(
            "resnet50",
            num_classes=10,
            image_size=64,
            placements=[place(test_zoo("recorder"), stage_options={"tag": [3, 5, 5, 7]})],
        )
    tags = {r.stage: model.get_submodule(r.path).tag for r in model.placed_modules}
    assert tags == {1: 3, 2: 5, 3: 5, 4: 7}


def test_feature_size_option_is_filled_from_the_position(test_zoo: Zoo) -> None:
    model = build_model(
        "resnet18",
        num_classes=10,
        image_size=64,
        placements=[
            place(test_zoo("sized"), "before_block"),
            place(test_zoo("sized"), "between_stages"),
        ],
    )
    sizes = [
        (r.stage, r.block, model.get_submodule(r.path).feature_size) for r in model.placed_modules
    ]
    assert sizes[:3] == [(1, 0, 16), (1, 1, 16), (2, 0, 16)]  # layer2.0's input is 16x16
    assert sizes[-3:] == [(1, None, 16), (2, None, 8), (3, None, 4)]
    model(torch.randn(1, 3, 64, 64))  # SizedGate asserts it sees its feature_size


def test_stage_module_defaults_to_between_stages(test_zoo: Zoo) -> None:
    model = build_model("resnet20", num_classes=10, placements=[place(test_zoo("stage"))])
    assert [(r.position, r.stage) for r in model.placed_modules] == [
        ("between_stages", 1),
        ("between_stages", 2),
    ]
    # and a stage module may also sit inside blocks
    model = build_model(
        "resnet20",
        num_classes=10,
        placements=[place(test_zoo("stage"), "after_conv3", blocks="last")],
    )
    assert len(model.placed_modules) == 3


def test_omegaconf_placements_are_accepted(test_zoo: Zoo) -> None:
    cfg = OmegaConf.create(
        [{"module": {"name": test_zoo("recorder"), "tag": 2}, "stages": [1, 2], "blocks": "first"}]
    )
    model = build_model("resnet20", num_classes=10, placements=cfg)
    assert [(r.stage, r.block) for r in model.placed_modules] == [(1, 0), (2, 0)]


# --------------------------------------------------------------------------- conv
def test_conv_replaces_the_3x3_convs_by_default(test_zoo: Zoo) -> None:
    conv = test_zoo("conv")
    with torch.device("meta"):
        v15 = build_model("resnet50", num_classes=1000, conv={"name": conv})
        v1 = build_model("resnet50", num_classes=1000, conv=conv, stride_position="v1")
        basic = build_model("resnet18", num_classes=1000, placements=[place(conv, "conv")])
    # the plain test conv has exactly the 3x3's parameters
    assert n_params(v15) == n_params(v1) == 25_557_032 and n_params(basic) == 11_689_512
    assert v15.layer2[0].conv2.stride == 2 and v1.layer2[0].conv2.stride == 1
    assert isinstance(v15.layer2[0].conv1, nn.Conv2d)  # the bottleneck's 1x1 convs stay
    # a basic block: both 3x3 convs (the default sites), the stride stays on conv1
    assert basic.layer2[0].conv1.stride == 2 and basic.layer2[0].conv2.stride == 1
    assert len(basic.placed_modules) == 2 * 8 and len(v15.placed_modules) == 16
    r = next(r for r in v15.placed_modules if (r.stage, r.block) == (2, 0))
    assert (r.path, r.in_channels, r.out_channels, r.size, r.out_size) == (
        "layer2.0.conv2",
        128,
        128,
        56,
        28,
    )
    r = next(r for r in v1.placed_modules if (r.stage, r.block) == (2, 0))
    assert (r.size, r.out_size) == (28, 28)
    r = next(r for r in basic.placed_modules if (r.stage, r.block) == (2, 0))
    assert (r.path, r.in_channels, r.out_channels) == ("layer2.0.conv1", 64, 128)
    assert r.site == "conv1"


def test_conv_with_norm_act_drops_the_blocks_bn(test_zoo: Zoo) -> None:
    model = build_model(
        "resnet20",
        num_classes=10,
        conv=test_zoo("normact_conv"),
        placements=[place(test_zoo("recorder"), "after_conv3")],
    )
    block = model.layer2[0]
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.bn2, nn.Identity)
    assert block.sites_with_norm_act == {"conv1", "conv2"}
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    bottleneck = build_model(
        "resnet50", num_classes=10, conv=test_zoo("normact_conv"), image_size=64
    )
    assert isinstance(bottleneck.layer1[0].bn2, nn.Identity)
    assert isinstance(bottleneck.layer1[0].bn3, nn.BatchNorm2d)


def test_zoo_plain_conv_keeps_the_backbone_counts() -> None:
    with torch.device("meta"):
        assert n_params(build_model("resnet50", num_classes=1000, conv="conv3x3")) == 25_557_032
        resnext = build_model(
            "resnext50_32x4d", num_classes=1000, conv={"name": "conv3x3", "groups": 32}
        )
        assert n_params(resnext) == 25_028_904
        assert n_params(build_model("resnet20", num_classes=10, conv="conv3x3")) == 269_722


def test_sk_conv_combines_with_se() -> None:
    model = build_model(
        "resnet20",
        num_classes=10,
        image_size=16,
        conv={"name": "sk"},
        placements=[place({"name": "se", "reduction": 4})],
    )
    kinds = {(r.module, r.position) for r in model.placed_modules}
    assert kinds == {("sk", "conv"), ("se", "after_conv3")}
    assert isinstance(model.layer1[0].bn1, nn.Identity)  # SK includes its BN + ReLU
    model(torch.randn(2, 3, 16, 16)).sum().backward()


def test_residual_modules_are_flagged() -> None:
    residual = [n for n in available("gate") if get_spec(n).residual]
    assert residual, "the zoo has residual modules (GC, non-local): none is flagged"
    name = residual[0]
    model = build_model(
        "resnet20", num_classes=10, placements=[place(name, "after_add", blocks="last")]
    )
    assert all(r.residual for r in model.placed_modules)


# --------------------------------------------------------------------------- errors
ERRORS = [
    (lambda z: [place(z("recorder"), "after_conv4")], "resnet50", r"placements\[0\]\.position"),
    (lambda z: [place(z("recorder"), "conv")], "resnet50", r"position.*conv-kind"),
    (lambda z: [place(z("conv"), "after_conv3")], "resnet50", r"position.*only valid position"),
    (lambda z: [place(z("recorder"), stages=[5])], "resnet50", r"stages: stage 5.*1, 2, 3, 4"),
    (lambda z: [place(z("recorder"), stages=[4])], "resnet20", r"stages: stage 4.*1, 2, 3\b"),
    (lambda z: [place(z("recorder"), stages=[0])], "resnet20", r"stages"),
    (lambda z: [place(z("recorder"), "between_stages", stages=[4])], "resnet50", r"stages.*last stage"),
    (lambda z: [place(z("stage"), stages=[3])], "resnet20", r"stages.*last stage"),
    (lambda z: [place(z("recorder"), blocks=[3])], "resnet50", r"blocks: block 3.*stage 1.*0\.\.2"),
    (lambda z: [place(z("recorder"), stages=[2], blocks=[-5])], "resnet50", r"blocks"),
    (lambda z: [place(z("recorder"), blocks="every_0")], "resnet20", r"blocks"),
    (lambda z: [place(z("recorder"), blocks="most")], "resnet20", r"blocks.*every_K"),
    (lambda z: [place(z("recorder"), blocks=[0, 0])], "resnet20", r"blocks"),
    (lambda z: [place(z("recorder"), "between_stages", blocks="last")], "resnet20", r"blocks"),
    (lambda z: [place(z("recorder"), stages=[])], "resnet20", r"stages"),
    (lambda z: [place(z("recorder"), stages="some")], "resnet20", r"stages"),
    (lambda z: [place(z("recorder"), stages=[1, 1])], "resnet20", r"stages"),
    (lambda z: [place(z("recorder"), stage_options={"tag": [1, 2, 3]})], "resnet50", r"stage_options\.tag.*4 values"),
    (lambda z: [place(z("recorder"), stage_options={"tag": 3})], "resnet50", r"stage_options\.tag"),
    (lambda z: [place(z("recorder"), stage_options={"tga": [1, 2, 3]})], "resnet20", r"module.*tga.*valid options: tag"),
    (lambda z: [place({"name": z("recorder"), "tga": 1})], "resnet20", r"module.*tga.*valid options: tag"),
    (lambda z: [place({"name": z("recorder"), "channels": 8})], "resnet20", r"channels"),
    (lambda z: [place("no_such_module")], "resnet20", r"module.*no_such_module.*valid choices"),
    (lambda z: [{"module": z("recorder"), "postion": "after_add"}], "resnet20", r"postion.*valid keys"),
    (lambda z: [{"position": "after_add"}], "resnet20", r"module"),
    (lambda z: [place(z("min16"))], "resnet20", r"min_size.*stage 3.*8x8.*image_size=32.*\(1, 2\)"),
    (lambda z: [place(z("small_maps"))], "resnet20", r"placements\[0\].*max_size"),
    (lambda z: [place(z("shape_changer"))], "resnet20", r"returns shape"),
    (lambda z: [place(z("conv"), "conv", stages=[2]), place(z("conv"), "conv", stages=[2], blocks="last")], "resnet20", r"placements\[1\].*already replaced"),
    (lambda z: {"module": z("recorder")}, "resnet20", r"placements must be a list"),
]  # fmt: skip


@pytest.mark.parametrize(("placements", "model", "match"), ERRORS)
def test_impossible_requests_fail_at_build(test_zoo: Zoo, placements, model, match) -> None:
    with pytest.raises(ConfigError, match=match), torch.device("meta"):
        build_model(model, num_classes=10, image_size=64 if model == "resnet50" else 32,
                    placements=placements(test_zoo))  # fmt: skip


def test_min_size_fits_where_the_maps_are_large_enough(test_zoo: Zoo) -> None:
    model = build_model(
        "resnet20", num_classes=10, placements=[place(test_zoo("min16"), stages=[1, 2])]
    )
    assert {r.size for r in model.placed_modules} == {32, 16}
    with pytest.raises(ConfigError, match="min_size"):
        build_model(
            "resnet20",
            num_classes=10,
            image_size=16,
            placements=[place(test_zoo("min16"), stages=[2])],
        )
    with pytest.raises(ConfigError, match=r"min_size.*between_stages, stage 2.*8x8.*\(1\)"):
        build_model("resnet20", num_classes=10, image_size=16,
                    placements=[place(test_zoo("min16"), "between_stages")])  # fmt: skip


def test_stage_options_win_over_the_module_option(test_zoo: Zoo) -> None:
    """A config node of a module carries every option's default (attention=eca has
    kernel_size), so a stage option replaces the module option of the same name."""
    model = build_model(
        "resnet20",
        num_classes=10,
        placements=[
            place({"name": test_zoo("recorder"), "tag": 1}, stage_options={"tag": [1, 2, 3]})
        ],
    )
    tags = {r.stage: model.get_submodule(r.path).tag for r in model.placed_modules}
    assert tags == {1: 1, 2: 2, 3: 3}


def test_top_level_conv_and_conv_placement_conflict(test_zoo: Zoo) -> None:
    with pytest.raises(
        ConfigError,
        match=r"conv: conv1 of stage 1, block 0 is already replaced by placements\[0\]",
    ):
        build_model("resnet20", num_classes=10, conv=test_zoo("conv"),
                    placements=[place(test_zoo("conv"), stages=[1], blocks="first")])  # fmt: skip


def test_failed_apply_leaves_the_model_unchanged(test_zoo: Zoo) -> None:
    model = build_model("resnet20", num_classes=10)
    keys = list(model.state_dict())
    placements = [
        place(test_zoo("recorder")),
        place(test_zoo("conv")),
        place(test_zoo("small_maps")),
    ]
    with pytest.raises(ConfigError, match=r"placements\[2\]"):
        apply_placements(model, placements, image_size=32)
    assert list(model.state_dict()) == keys and model.placed_modules == []
    with pytest.raises(ConfigError, match="image_size"):
        apply_placements(model, placements[:1], image_size=0)


def test_unknown_position_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("resnet20", num_classes=10, placements=[place("none", "middle")])
    for position in (
        "before_block",
        "after_conv3",
        "after_add",
        "identity",
        "between_stages",
        "conv",
    ):
        assert position in str(err.value)


# --------------------------------------------------------------------------- paper totals
PAPER_TOTALS = [
    ("se", [place({"name": "se", "reduction": 16}, "after_conv3")], 28_088_024),
    ("cbam", [place({"name": "cbam", "reduction": 16, "kernel_size": 7})], 28_089_624),
    ("eca", [place("eca", stage_options={"kernel_size": [3, 5, 5, 7]})], 25_557_112),
    (
        "bam",
        [
            place(
                {"name": "bam", "reduction": 16, "dilation": 4}, "between_stages", stages=[1, 2, 3]
            )
        ],
        25_915_099,
    ),
]


@pytest.mark.parametrize(
    ("module", "placements", "total"), PAPER_TOTALS, ids=[p[0] for p in PAPER_TOTALS]
)
def test_paper_placement_totals_on_resnet50(module: str, placements: list, total: int) -> None:
    """Paper-placement totals on ResNet-50, 1000 classes (CBAM table 4, ECA table 3, BAM code)."""
    with torch.device("meta"):
        model = build_model("resnet50", num_classes=1000, placements=placements)
    assert n_params(model) == total


# --------------------------------------------------------------------------- CLI
def test_cli_prints_placements(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    assert cli_main(["resnet50", "--attention", "se", "--position", "after_conv3"]) == 0
    out = capsys.readouterr().out
    assert "layer4.2.attn.after_conv3.0" in out and "28,088,024" in out and "2,530,992" in out


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["resnet20", "--attention", "none", "--stages", "4"]) == 2
    assert "stages" in capsys.readouterr().err
    assert cli_main(["--list"]) == 0
    assert "wrn28_10" in capsys.readouterr().out
