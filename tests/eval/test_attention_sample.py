"""The attention-map callback's images: a fixed class-balanced sample of the whole val split,
the same for every epoch and every run with the same seed, on both data paths."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from attnexp.analysis.samples import balanced_indices, validation_sample
from attnexp.analysis.wandb_viz import AttentionMapLogger
from attnexp.data import build_datamodule
from attnexp.models import build_model

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from datagen import write_image_folder  # noqa: E402


def test_balanced_indices_cover_classes_in_turn() -> None:
    labels = torch.arange(10).repeat_interleave(50)  # class-sorted, like a folder split
    picked = balanced_indices(labels, 25, seed=3)
    counts = torch.bincount(labels[picked], minlength=10)
    assert counts.max() - counts.min() <= 1 and len(set(picked)) == 25
    assert picked == balanced_indices(labels, 25, seed=3)  # same seed, same images
    assert picked != balanced_indices(labels, 25, seed=4)
    assert not all(i < 50 for i in picked)  # not the first batch


def test_in_memory_and_streaming_samples(tmp_path: Path) -> None:
    synthetic = build_datamodule(
        {"name": "synthetic", "num_train": 64, "num_val": 100, "num_test": 32}
    )
    x, y = validation_sample(synthetic, 10, seed=0)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert sorted(y.tolist()) == list(range(10))  # one image per class
    images, labels = synthetic.splits["val"]
    index = balanced_indices(labels, 10, 0)
    mean = torch.tensor(synthetic.mean).view(1, -1, 1, 1)
    std = torch.tensor(synthetic.std).view(1, -1, 1, 1)
    torch.testing.assert_close(x, (images[index].float() / 255 - mean) / std)

    root = write_image_folder(tmp_path / "folder", per_class=3, special=False)
    streaming = build_datamodule(
        {"name": "imagefolder", "root": str(root), "in_memory": False, "num_workers": 0}
    )
    xs, ys = validation_sample(streaming, 4, seed=0)
    assert xs.shape[0] == 4 and len(set(ys.tolist())) == min(4, streaming.num_classes)


def test_callback_draws_the_fixed_sample(tmp_path: Path) -> None:
    dm = build_datamodule({"name": "synthetic", "num_train": 64, "num_val": 100, "num_test": 32})
    trainer = SimpleNamespace(
        loggers=[], is_global_zero=True, datamodule=dm, global_step=0, current_epoch=0
    )
    callback = AttentionMapLogger(n=5, cams=[], seed=2, save_path=str(tmp_path / "maps.png"))
    seen = []
    for seed_model in (0, 1):  # two different models (runs of a sweep): the same images
        torch.manual_seed(seed_model)
        model = build_model("resnet20", num_classes=10, placements=[{"module": "se"}]).eval()
        callback.render(trainer, SimpleNamespace(model=model))
        seen.append(validation_sample(dm, 5, 2)[1].tolist())
    assert seen[0] == seen[1] and len(set(seen[0])) == 5
    assert (tmp_path / "maps.png").exists()
