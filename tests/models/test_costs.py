"""The cost counter: published MACs/params, the counting convention, the golden file.

The golden file (tests/golden/costs.json, written by scripts/update_golden_costs.py) records
what every preset job composes to: its backbone spec and its costs. The default suite
composes every job again through Hydra and compares the spec and the parameter count (a
preset that silently changes backbone, module, placement, classes or size fails here); the
``essential`` stage recounts MACs and attention ops too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention import AttentionModule, available, get_spec
from attnexp.experiments import available_presets
from attnexp.models import build_model
from attnexp.models.costs import Costs, count_costs


def _load_updater() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "update_golden_costs.py"
    spec = importlib.util.spec_from_file_location("update_golden_costs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UPDATE = _load_updater()
GOLDEN: Path = UPDATE.GOLDEN
REGENERATE = f"if the change is intended, regenerate and commit the file: {UPDATE.REGENERATE}"


def meta_model(name: str, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes=kwargs.pop("num_classes", 1000), **kwargs)


# --------------------------------------------------------------------------- published figures
# torchvision's published GFLOPs (= GMACs) and parameter counts (REFERENCE.md section 1).
TORCHVISION = {
    "resnet18": (1.81, 11_689_512),
    "resnet34": (3.66, 21_797_672),
    "resnet50": (4.09, 25_557_032),
    "resnet101": (7.80, 44_549_160),
    "resnet152": (11.51, 60_192_808),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_resnet_macs_match_torchvision(name: str) -> None:
    gmacs, params = TORCHVISION[name]
    costs = count_costs(meta_model(name))
    assert costs.params == params
    assert costs.macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert costs.attention_ops == 0


@pytest.mark.parametrize(
    ("attention", "gmacs", "params"),
    [(None, 3.858, 25_557_032), ("se", 3.860, 28_088_024), ("cbam", 3.864, 28_089_624)],
)
def test_cbam_table4_resnet50_v1(attention: str | None, gmacs: float, params: int) -> None:
    """CBAM paper table 4 (v1 ResNet-50, conv+linear MACs at 224), to the printed precision."""
    placements = [{"module": attention}] if attention else []
    costs = count_costs(meta_model("resnet50", stride_position="v1", placements=placements))
    assert round(costs.macs / 1e9, 3) == gmacs
    assert costs.params == params


def test_resnet101_v1_matches_cbam_table() -> None:
    costs = count_costs(meta_model("resnet101", stride_position="v1"))
    assert round(costs.macs / 1e9, 3) == 7.570


def test_meta_counting_equals_real_counting() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, placements=[{"module": "cbam"}])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    meta = count_costs(model, (1, 3, 32, 32))
    real = count_costs(model, (1, 3, 32, 32), meta=False)
    assert meta == real
    assert model.training  # mode restored
    for k, v in model.state_dict().items():  # nothing touched (BN stats included)
        assert v.device.type == "cpu" and torch.equal(v, before[k])


# --------------------------------------------------------------------------- the convention
class Wrap(nn.Module):
    def __init__(self, fn: object, **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleDict(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.mods, x)


class Gate(AttentionModule):
    """A minimal attention module: sigmoid(mean) * x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x.mean((2, 3), keepdim=True))


def test_conv_macs_plain_grouped_1d_and_transposed() -> None:
    model = Wrap(
        lambda m, x: m["t"](m["g"](m["c"](x))) + 0 * m["e"](x.mean((2, 3))[:, None]).sum(),
        c=nn.Conv2d(8, 16, 3, padding=1),  # 16*8*9 per output pixel
        g=nn.Conv2d(16, 16, 3, padding=1, groups=4),  # 16*4*9
        t=nn.ConvTranspose2d(16, 4, 2, stride=2),  # each input pixel: 16 channels * 4*2*2
        e=nn.Conv1d(1, 1, 5, padding=2, bias=False),  # ECA: 8 outputs * 5
    )
    costs = count_costs(model, (1, 8, 6, 6))
    assert costs.macs == 36 * 16 * 8 * 9 + 36 * 16 * 4 * 9 + 36 * 16 * 4 * 4 + 8 * 5
    assert costs.attention_ops == 0  # mean, add, mul outside attention modules: not counted


@pytest.mark.parametrize("contiguous", [True, False])
def test_linear_on_tokens_counts_as_macs(contiguous: bool) -> None:
    def fn(m: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), non-contiguous
        return m["fc"](tokens.contiguous() if contiguous else tokens)

    costs = count_costs(Wrap(fn, fc=nn.Linear(8, 12)), (2, 8, 4, 5))
    assert costs.macs == 2 * 20 * 8 * 12
    assert costs.attention_ops == 0


def test_activation_products_are_attention_ops_anywhere() -> None:
    def fn(m: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        q = x.flatten(2)  # (B, C, N)
        attn = torch.einsum("bci,bcj->bij", q, q).softmax(-1)  # B*N*N*C, softmax not counted
        out = torch.bmm(q, attn)  # B*C*N*N
        return out @ m["w"].weight  # product with a weight: a linear layer, MACs

    model = Wrap(fn, w=nn.Linear(6, 6, bias=False))
    costs = count_costs(model, (2, 3, 2, 3))
    b, c, n = 2, 3, 6
    assert costs.attention_ops == b * n * n * c + b * c * n * n
    assert costs.macs == b * c * n * 6


def test_sdpa_counts_qk_and_av() -> None:
    def fn(m: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(2).transpose(1, 2)[:, None]  # (B, 1, N, C)
        return F.scaled_dot_product_attention(t, t, t)

    costs = count_costs(Wrap(fn), (2, 4, 3, 3), meta=False)
    assert costs.attention_ops == 2 * (2 * 9 * 9 * 4)
    assert costs.macs == 0


def test_ops_inside_attention_modules_are_counted() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.ReLU(), Gate())
    costs = count_costs(model, (1, 4, 5, 5))
    assert costs.macs == 25 * 16
    # mean reads 100 elements, sigmoid 4, the product 100; ReLU outside the gate: nothing
    assert costs.attention_ops == 100 + 4 + 100
    assert costs.macs_with_attention == costs.macs + costs.attention_ops


def test_bias_of_a_linear_is_not_counted() -> None:
    class Tokens(AttentionModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.fc(x.flatten(2).transpose(1, 2))  # may lower to mm + add on some devices
            return t.transpose(1, 2).reshape(x.shape)

    costs = count_costs(Tokens(), (1, 4, 3, 3))
    assert costs.macs == 9 * 16
    assert costs.attention_ops == 0


def test_costs_record() -> None:
    costs = count_costs(nn.Conv2d(3, 2, 1), (1, 3, 2, 2))
    assert isinstance(costs, Costs)
    assert costs.as_dict() == {
        "params": 8,
        "macs": 24,
        "attention_ops": 0,
        "input_shape": (1, 3, 2, 2),
    }


FEW = ("se", "cbam", "eca", "sk", "nonlocal")


@pytest.mark.parametrize(
    "name", [n if n in FEW else pytest.param(n, marks=pytest.mark.slow) for n in available()]
)
def test_zoo_counts_on_meta_equal_real_counts(name: str) -> None:
    """Every module runs on the meta device and gives the same counts as a real pass."""
    kind = get_spec(name).kind
    placements = [] if name == "none" or kind == "conv" else [{"module": name}]
    model = build_model(
        "resnet20", num_classes=10, placements=placements, conv=name if kind == "conv" else None
    )
    meta = count_costs(model, (1, 3, 16, 16))
    assert meta == count_costs(model, (1, 3, 16, 16), meta=False)
    assert meta.macs > 0
    if name not in ("none", "conv3x3"):
        assert meta.attention_ops > 0, "an attention module whose ops are not counted"


# --------------------------------------------------------------------------- golden file
def _golden() -> dict:
    return UPDATE.load()["configs"]


def test_golden_file_lists_exactly_the_preset_jobs() -> None:
    """Every job of every preset (and every attention/conv config on the two module
    backbones) has an entry, and no entry is left over from a removed or renamed job."""
    want = {UPDATE.key(job) for job in UPDATE.all_jobs()}
    have = set(_golden())
    problems = [f"missing: {k}" for k in sorted(want - have)]
    problems += [f"stale:   {k}" for k in sorted(have - want)]
    assert not problems, (
        f"{GOLDEN.name} is out of date:\n" + "\n".join(problems) + f"\n{REGENERATE}"
    )


def _compare_composed(jobs: list[list[str]]) -> list[str]:
    """Compose every job as attnexp-train does; the spec and parameter count must be the
    golden ones. Returns one line per changed field, naming the job."""
    golden = _golden()
    problems: list[str] = []
    params: dict[str, int] = {}
    with UPDATE.hydra_session() as compose:
        for job in jobs:
            name = UPDATE.key(job)
            if name not in golden:
                problems.append(f"{name}: no entry in {GOLDEN.name}")
                continue
            spec = UPDATE.backbone_spec(compose(job))
            problems += [
                f"{name}: {c}" for c in UPDATE.field_changes(golden[name]["spec"], spec, "spec")
            ]
            spec_key = json.dumps(spec, sort_keys=True)
            if spec_key not in params:
                params[spec_key] = UPDATE.spec_params(spec)
            if params[spec_key] != golden[name]["params"]:
                problems.append(
                    f"{name}: params: {golden[name]['params']:,} -> {params[spec_key]:,}"
                )
    return problems


def _module_groups() -> list[tuple[str, str]]:
    return [(b, g) for b in UPDATE.MODULE_BACKBONES for g in ("attention", "conv")]


@pytest.mark.parametrize("preset", available_presets())
def test_preset_composes_to_its_golden_spec_and_params(preset: str) -> None:
    """experiment=<preset>, every job of its sweep: backbone, classes, image size, modules,
    placements, conv and the parameter count are those recorded in the golden file."""
    problems = _compare_composed(UPDATE.preset_jobs(preset))
    assert not problems, (
        f"experiment={preset} no longer composes to what {GOLDEN.name} records "
        "(golden -> composed):\n" + "\n".join(problems) + f"\n{REGENERATE}"
    )


@pytest.mark.parametrize(("backbone", "group"), _module_groups())
def test_module_configs_compose_to_their_golden_spec_and_params(backbone: str, group: str) -> None:
    """Every attention/ and conv/ config on resnet20 and resnet50: same spec and params."""
    problems = _compare_composed(UPDATE.module_jobs(backbone, group))
    assert not problems, (
        f"{group} configs on {backbone} changed (golden -> composed):\n"
        + "\n".join(problems)
        + f"\n{REGENERATE}"
    )


@pytest.mark.parametrize(
    "key", sorted(k for k in UPDATE.load()["configs"] if k.startswith("model=resnet20"))
)
def test_golden_costs_resnet20(key: str) -> None:
    """Every attention/conv config on ResNet-20, rebuilt from its stored spec: the counter
    gives the recorded params, MACs and attention ops."""
    entry = _golden()[key]
    costs = UPDATE.spec_costs(entry["spec"])
    got = {"params": costs.params, "macs": costs.macs, "attention_ops": costs.attention_ops}
    want = {k: entry[k] for k in got}
    assert got == want, f"{key}: costs changed (golden {want}, now {got}); {REGENERATE}"


@pytest.mark.essential
def test_golden_costs_recount() -> None:
    """Compose every golden job again and recount params, MACs and attention ops (minutes
    on a CPU: the essential CI stage)."""
    changes = UPDATE.diff(UPDATE.load(), UPDATE.collect(verbose=False))
    assert not changes, (
        f"{GOLDEN.name} is out of date (golden -> now):\n"
        + "\n".join(changes[:60])
        + f"\n{REGENERATE}"
    )
