"""Every zoo module's maps are drawable with no per-module code (untrained ResNet-20s)."""

from __future__ import annotations

import pytest
import torch

from attnexp.analysis.attention_maps import (
    ImageBatch,
    ModuleMaps,
    attention_grid,
    branch_figure,
    capture,
    channel_figure,
    figure_to_array,
    group_by_stage,
    panel_for,
    spatial_columns,
)
from attnexp.attention import available, get_spec
from attnexp.models import build_model

MODULES = [n for n in available() if n != "none" and not n.startswith("_")]


def _model(name: str) -> torch.nn.Module:
    spec = get_spec(name)
    if spec.kind == "conv":
        return build_model("resnet20", num_classes=10, conv={"name": name})
    return build_model("resnet20", num_classes=10, placements=[{"module": {"name": name}}])


@pytest.mark.parametrize("name", MODULES)
def test_every_module_is_drawable(name: str) -> None:
    torch.manual_seed(0)
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    _, modules = capture(model, x)
    for stage, _ in group_by_stage(modules):
        assert stage.startswith(("layer", "after layer")), stage
    columns = spatial_columns(modules, 32, "last")
    for _, raw in columns:
        assert raw.shape == (2, 32, 32) and torch.isfinite(raw).all()
    channel = channel_figure(modules)
    branch = branch_figure(modules)
    kinds = {k for m in modules for k in m.maps}
    assert (channel is not None) == ("channel" in kinds)
    assert (branch is not None) == ("branch" in kinds)
    if name != "conv3x3":  # the plain conv baseline exposes nothing
        assert columns or channel is not None or branch is not None, (
            f"{name} exposes nothing drawable: {kinds}"
        )


@pytest.mark.parametrize("name", ["cbam", "bam", "sk", "nonlocal"])
def test_grid_for_module_kinds(name: str) -> None:
    """Gate, between-stage, conv and position attention through the whole grid + Grad-CAM."""
    torch.manual_seed(0)
    model = _model(name).eval()
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    batch = ImageBatch(images, [0, 1], ["a", "b"], "random")
    x = images.float() / 255
    panel = panel_for(model, x, batch, [str(i) for i in range(10)], name)
    assert panel.cams["gradcam"].shape == (2, 32, 32)
    fig = attention_grid(batch, [panel])
    pixels = figure_to_array(fig)
    assert pixels.std() > 0
    if name == "bam":
        assert any(c.title.startswith("after layer") for c in panel.columns)
    if name == "sk":
        assert branch_figure(panel.modules) is not None


def test_stage_grouping_from_names() -> None:
    names = [
        "layer2.1.attn.after_conv3.0",
        "stage_attn.layer1.0",
        "layer1.0.conv1",
        "layer1.2.attn.after_add.0",
    ]
    groups = group_by_stage([ModuleMaps(n, {}) for n in names])
    assert [(g, [m.name for m in ms]) for g, ms in groups] == [
        ("layer1", ["layer1.0.conv1", "layer1.2.attn.after_add.0"]),
        ("after layer1", ["stage_attn.layer1.0"]),
        ("layer2", ["layer2.1.attn.after_conv3.0"]),
    ]
