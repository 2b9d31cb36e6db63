"""Pretrained backbones by config and identity-initialised inserted modules.

The state dicts are torchvision's own ResNets with their random init (no download), saved
to a file: what ``model.pretrained=<file>`` reads. The reference output is torchvision's
network with those weights; with ``placement.init=identity`` our network with a module
inserted must compute the same logits at step 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from attnexp import builders
from attnexp.attention import available, get_spec
from attnexp.errors import ConfigError
from attnexp.models import build_model
from attnexp.models.pretrained import (
    initialise_placed,
    load_pretrained,
    torchvision_cache_file,
)

IMAGE = 64  # small input: resnet50 x every module stays fast on a CPU
GATES = [n for n in available("gate") if n != "none"]
#: A resnet50 subset in the default run (one per family / residual form); all in `slow`.
RESNET50_DEFAULT = {"se", "cbam", "gc", "bam", "nonlocal", "eca"}


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    torch.manual_seed(0)
    out = {}
    folder = tmp_path_factory.mktemp("weights")
    for arch in ("resnet18", "resnet50"):
        net = getattr(torchvision.models, arch)().eval()
        # BN statistics away from (0, 1), so a wrong BN load shows in the logits.
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        path = folder / f"{arch}.pth"
        torch.save(net.state_dict(), path)
        out[arch] = (path, net)
    return out


def _cfg(arch: str, attention: str, path: Path, num_classes: int = 1000, init: str = "identity"):
    return OmegaConf.create(
        {
            "model": {
                "name": arch,
                "num_classes": num_classes,
                "image_size": IMAGE,
                "pretrained": str(path),
            },
            "attention": {"name": attention},
            "placement": {"position": "auto", "init": init},
            "extra_placements": [],
            "conv": None,
        }
    )


def _params(arch: str) -> list:
    marks = []
    for name in GATES:
        slow = arch == "resnet50" and name not in RESNET50_DEFAULT
        marks.append(
            pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=f"{arch}-{name}")
        )
    return marks


def _check_identity(arch: str, name: str, tv_weights: dict) -> None:
    path, reference = tv_weights[arch]
    model = builders.build_backbone(_cfg(arch, name, path)).eval()
    report = model.pretrained_report
    placed = sorted(r.path for r in model.placed_modules)
    assert placed, f"{name} was not placed"
    assert report.new_modules == placed  # only the inserted modules are new (same 1000 classes)
    assert all(any(k.startswith(p + ".") for p in placed) for k in report.newly_initialised)
    x = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-5, f"{arch} + {name} (identity init): logits differ by {diff:.3g}"


@pytest.mark.parametrize("name", _params("resnet18"))
def test_identity_init_keeps_resnet18_logits(name: str, tv_weights: dict) -> None:
    _check_identity("resnet18", name, tv_weights)


@pytest.mark.parametrize("name", _params("resnet50"))
def test_identity_init_keeps_resnet50_logits(name: str, tv_weights: dict) -> None:
    _check_identity("resnet50", name, tv_weights)


def test_plain_backbone_loads_every_weight(tv_weights: dict) -> None:
    path, reference = tv_weights["resnet18"]
    model = builders.build_backbone(_cfg("resnet18", "none", path, init="default")).eval()
    assert model.pretrained_report.newly_initialised == []
    assert model.pretrained_report.new_modules == []
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_new_class_count_reports_the_classifier(tv_weights: dict) -> None:
    path, reference = tv_weights["resnet18"]
    model = builders.build_backbone(_cfg("resnet18", "se", path, num_classes=10)).eval()
    placed = sorted(r.path for r in model.placed_modules)
    report = model.pretrained_report
    assert report.new_modules == sorted([*placed, "fc"])
    assert {"fc.weight", "fc.bias"} <= set(report.newly_initialised)
    assert "fc.weight" in model.newly_initialised
    assert not any(n.startswith("layer1.0.conv1") for n in model.newly_initialised)
    # the features (everything before the classifier) are the pretrained network's
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = model.forward_features(x).mean((2, 3))
        trunk = torch.nn.Sequential(*list(reference.children())[:-1])
        assert (ours - trunk(x).flatten(1)).abs().max() < 1e-5
    assert "fc" in report.summary() and "newly initialised" in report.summary()


def test_missing_backbone_weights_are_an_error(tv_weights: dict, tmp_path: Path) -> None:
    path, _ = tv_weights["resnet18"]
    state = torch.load(path, weights_only=True)
    del state["layer2.0.conv1.weight"], state["bn1.running_var"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(ConfigError, match=r"missing.*(bn1.running_var|layer2.0.conv1.weight)"):
        builders.build_backbone(_cfg("resnet18", "se", broken, init="default"))


def test_wrong_architecture_is_an_error(tv_weights: dict) -> None:
    path, _ = tv_weights["resnet50"]
    with pytest.raises(ConfigError, match="shapes do not match"):
        builders.build_backbone(_cfg("resnet18", "none", path, init="default"))


def test_bad_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        builders.build_backbone(_cfg("resnet18", "none", tmp_path / "nope.pth", init="default"))
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(ConfigError, match="cannot read"):
        builders.build_backbone(_cfg("resnet18", "none", tmp_path / "junk.pth", init="default"))
    with pytest.raises(ConfigError, match="placement.init"):
        builders.build_backbone(_cfg("resnet18", "se", tmp_path / "nope.pth", init="zero"))


def test_torchvision_offline_names_the_cache_file(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    try:
        target = torchvision_cache_file("resnet18")
        assert target.parent == tmp_path / "torch" / "hub" / "checkpoints"
        assert target.name == "resnet18-f37072fd.pth"
        # Put torchvision's expected file there (random weights): it is read from the cache.
        target.parent.mkdir(parents=True)
        torch.save(torchvision.models.resnet18().state_dict(), target)
        model = build_model("resnet18", num_classes=1000)
        report = load_pretrained(model, "torchvision")
        assert "IMAGENET1K_V1" in report.source and report.newly_initialised == []
        # A CIFAR ResNet has no torchvision weights: a ConfigError saying what to do.
        with pytest.raises(ConfigError, match="no pretrained weights for 'resnet20'"):
            load_pretrained(build_model("resnet20", num_classes=10), "torchvision")
    finally:
        torch.hub.set_dir(str(Path(torch.hub.get_dir()).parent / "hub"))


def test_lightning_checkpoint_is_a_source(tmp_path: Path) -> None:
    """A CIFAR ResNet trained here (attnexp .ckpt: ``model.*`` keys) fine-tunes with SE."""
    source = build_model("resnet20", num_classes=10)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    model = build_model(
        "resnet20", num_classes=10, placements=[{"module": "se", "position": "auto"}]
    )
    report = load_pretrained(model, ckpt)
    assert report.new_modules == sorted(r.path for r in model.placed_modules)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_conv_kind_modules_cannot_start_as_identity() -> None:
    model = build_model(
        "resnet20", num_classes=10, placements=[{"module": "sk", "position": "auto"}]
    )
    assert get_spec("sk").kind == "conv"
    with pytest.raises(ConfigError, match="conv-kind"):
        initialise_placed(model, "identity")
