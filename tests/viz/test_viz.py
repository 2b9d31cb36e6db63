"""attnexp-viz, checkpoint loading, attention maps, Grad-CAM and curves on real tiny runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnexp.analysis.attention_maps import (
    GridLayout,
    capture,
    data_info,
    grid_pixel_size,
    load_images,
    normalise,
    overlay,
    spatial_columns,
    to_input,
)
from attnexp.analysis.checkpoints import find_checkpoint, load_model, load_models, model_state
from attnexp.analysis.curves import CURVES_SIZE, find_runs, read_curves
from attnexp.analysis.gradcam import default_target_layer, grad_cam
from attnexp.cli.viz import main, parse_args
from attnexp.errors import ConfigError


def png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    return np.asarray(Image.open(path).convert("RGB"))


def assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.std() > 0


# -- checkpoints ---------------------------------------------------------------------------------
def test_load_model_from_run_dir_ckpt_and_folder(runs: dict[str, Path]) -> None:
    run_dir = runs["cbam"]
    ckpt = find_checkpoint(run_dir)
    assert ckpt.name.startswith("best")
    assert find_checkpoint(run_dir, "last").name == "last.ckpt"
    assert find_checkpoint(run_dir / "checkpoints") == ckpt
    for path in (run_dir, ckpt):
        loaded = load_model(path)
        assert loaded.run_dir == run_dir.resolve()
        assert loaded.label == "resnet20 + cbam"
        assert not loaded.model.training
        for name, tensor in model_state(ckpt).items():
            assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_load_model_from_metrics_json_only(runs: dict[str, Path], tmp_path: Path) -> None:
    """Without .hydra/config.yaml the config stored in metrics.json is used."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["cbam_seed1"], copy)
    shutil.rmtree(copy / ".hydra", ignore_errors=True)
    loaded = load_model(copy)
    assert loaded.cfg.seed == 1 and loaded.run_dir == copy.resolve()


def test_missing_checkpoint_names_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"best\*\.ckpt.*last\.ckpt"):
        load_model(tmp_path / "run")
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_labels_of_several_runs_are_unique(runs: dict[str, Path]) -> None:
    loaded = load_models([runs["cbam"], runs["cbam_seed1"]])
    labels = [m.label for m in loaded]
    assert len(set(labels)) == 2 and all("seed" in lbl for lbl in labels), labels


# -- attention maps and Grad-CAM -----------------------------------------------------------------
def test_grid_png_size_and_content(runs: dict[str, Path], tmp_path: Path, viz) -> None:
    out = tmp_path / "viz"
    written = viz(
        f"checkpoint={runs['none']}",
        f"checkpoint={runs['cbam']}",
        "images=test",
        "n=5",
        f"out={out}",
        "cam=gradcam,gradcam++",
    )
    names = {p.name for p in written}
    assert names == {
        "attention_grid.png",
        "resnet20_cbam_channel.png",
    }  # 'none' has no channel weights
    grid = png(out / "attention_grid.png")
    # input | none: 2 CAMs (no attention maps) | cbam: 3 stages + 2 CAMs
    assert grid.shape[1::-1] == grid_pixel_size(5, [1, 2, 5])
    assert_not_blank(grid)
    channel = png(out / "resnet20_cbam_channel.png")
    assert_not_blank(channel)


def test_overlay_differs_between_checkpoints(runs: dict[str, Path]) -> None:
    a, b = load_models([runs["cbam"], runs["cbam_seed1"]])
    batch = load_images("test", a, n=2)
    overlays = []
    for m in (a, b):
        _, modules = capture(m.model, to_input(batch.images, data_info(m.cfg), m.image_size))
        title, raw = spatial_columns(modules, 32, "last")[-1]
        assert raw.shape == (2, 32, 32)
        overlays.append(overlay(batch.images[0], normalise(raw)[0]))
    assert overlays[0].shape == (32, 32, 3)
    assert overlays[0].min() >= 0 and overlays[0].max() <= 1
    assert np.abs(overlays[0] - overlays[1]).mean() > 1e-3


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_grad_cam_range_and_size(runs: dict[str, Path], method: str) -> None:
    m = load_model(runs["cbam"])
    batch = load_images("test", m, n=3)
    x = to_input(batch.images, data_info(m.cfg), m.image_size)
    assert default_target_layer(m.model) == "layer3"
    for layer in (None, "layer2", "layer3.2"):
        cam = grad_cam(m.model, x, method, target_layer=layer)
        assert cam.shape == (3, 32, 32)
        assert cam.min() >= 0 and cam.max() <= 1 and cam.std() > 0
    assert not m.model.training


def test_unknown_target_layer(runs: dict[str, Path], tmp_path: Path, viz) -> None:
    with pytest.raises(ConfigError, match="layer3"):
        viz(f"checkpoint={runs['cbam']}", "n=2", f"out={tmp_path}", "--target-layer", "layer9")


def test_target_layer_option_and_folder_images(runs: dict[str, Path], tmp_path: Path, viz) -> None:
    """Images from an ImageFolder-layout folder and from a flat folder; --target-layer."""
    info = data_info(load_model(runs["cbam"]).cfg, "test")
    images, labels = info.splits["test"]
    folder = tmp_path / "imgs"
    for i in range(6):
        cls = info.class_names[int(labels[i])]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / cls / f"{i}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).resize((64, 48)).save(
            tmp_path / "flat" / f"{i}.jpg"
        )
    m = load_model(runs["cbam"])
    batch = load_images(folder, m, n=4)
    assert batch.images.shape == (4, 3, 32, 32)
    assert all(lbl is not None for lbl in batch.labels)
    written = viz(
        f"checkpoint={runs['cbam']}",
        f"images={tmp_path / 'flat'}",
        "n=3",
        f"out={tmp_path / 'o' / 'flat.png'}",
        "--target-layer",
        "layer2",
        "maps=all",
    )
    assert [p.name for p in written] == ["flat.png", "flat_resnet20_cbam_channel.png"]
    grid = png(written[0])
    assert grid.shape[1::-1] == grid_pixel_size(3, [1, 9 + 1])  # 9 CBAM modules + Grad-CAM


def test_no_overwrite_without_force(runs: dict[str, Path], tmp_path: Path, viz, capsys) -> None:
    args = [f"checkpoint={runs['none']}", "n=2", f"out={tmp_path}"]
    first = viz(*args)
    stamp = first[0].stat().st_mtime_ns
    with pytest.raises(ConfigError, match="force"):
        viz(*args)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2 and "force" in capsys.readouterr().err
    assert first[0].stat().st_mtime_ns == stamp
    viz(*args, "force=true")
    viz(*args, "--force")
    curve_args = [f"curves={runs['cbam']}", f"out={tmp_path}"]
    viz(*curve_args)
    with pytest.raises(ConfigError, match="force"):
        viz(*curve_args)
    viz(*curve_args, "--force")


def test_parse_args() -> None:
    a = parse_args(["checkpoint=a", "--checkpoint", "b", "--target-layer=layer2", "--force", "n=4"])
    assert a.checkpoint == ["a", "b"] and a.get("target_layer") == "layer2" and a.as_bool("force")
    assert a.as_int("n") == 4
    with pytest.raises(ConfigError, match="unknown option"):
        parse_args(["checkpoint=a", "colour=red"])
    with pytest.raises(ConfigError, match="nothing to draw"):
        parse_args(["n=3"])


def test_layout_size_formula() -> None:
    lay = GridLayout(cell=64, caption=10, gap=2, group_gap=8, header=30, margin=4)
    assert lay.size(2, [1, 3]) == (4 * 2 + 64 + 3 * 64 + 2 * 2 + 8, 4 * 2 + 30 + 2 * (64 + 10) + 2)


# -- curves --------------------------------------------------------------------------------------
def test_curves_from_real_csv(runs: dict[str, Path], tmp_path: Path, viz) -> None:
    curves = read_curves(runs["cbam"] / "csv" / "metrics.csv")
    for key in ("train/loss", "val/loss", "train/top1_err", "val/top1_err"):
        assert set(curves[key]) == {0}, key
    assert not any(k.startswith("test/") for k in curves)
    assert set(find_runs([runs["cbam"].parent])) == {runs["cbam"], runs["cbam_seed1"]}
    (path,) = viz(f"curves={runs['cbam'].parent}", f"out={tmp_path / 'c.png'}")
    pixels = png(path)
    assert pixels.shape[1::-1] == CURVES_SIZE
    assert_not_blank(pixels)
    with pytest.raises(ConfigError, match="no CSV logs"):
        viz(f"curves={tmp_path / 'c.png'}", f"out={tmp_path / 'd.png'}")


def test_imagefolder_run_uses_its_own_data_config(tmp_path: Path, viz, untrained) -> None:
    """A run on data=imagefolder (as the real CIFAR-10 JPEGs): images=test rebuilds its data
    config (class folders, mean/std computed from its training images)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, count in (("train", 4), ("test", 3)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")
    run_dir = untrained(
        tmp_path / "run",
        "data=imagefolder",
        f"data.root={root}",
        "data.num_classes=2",
        "attention=cbam",
    )
    m = load_model(run_dir)
    batch = load_images("test", m, n=4)
    assert batch.names == ["cat", "dog", "cat", "dog"] and batch.labels == [0, 1, 0, 1]
    assert batch.images.shape == (4, 3, 32, 32)
    info = data_info(m.cfg)
    assert info.class_names == ("cat", "dog") and 0.3 < info.mean[0] < 0.7
    (grid,) = [
        p
        for p in viz(f"checkpoint={run_dir}", "images=test", "n=4", f"out={tmp_path / 'o'}")
        if "grid" in p.name
    ]
    assert png(grid).shape[1::-1] == grid_pixel_size(4, [1, 3 + 1])
    folder_batch = load_images(root / "test", m, n=2)
    assert folder_batch.labels == [0, 1]
