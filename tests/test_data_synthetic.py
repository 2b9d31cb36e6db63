"""The embedded dataset: deterministic, balanced, with the documented class structure."""

from __future__ import annotations

import torch

from attnexp.data import build_datamodule
from attnexp.data.synthetic import CLASS_NAMES, NUM_CLASSES, generate, generate_splits
from attnexp.errors import ConfigError


def test_generation_is_deterministic_and_seed_dependent() -> None:
    a_img, a_lab = generate(64, seed=3)
    b_img, b_lab = generate(64, seed=3)
    c_img, _ = generate(64, seed=4)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert not torch.equal(a_img, c_img)
    assert a_img.dtype == torch.uint8 and a_img.shape == (64, 3, 32, 32)


def test_classes_cover_all_and_splits_differ() -> None:
    splits = generate_splits(500, 100, 100, seed=0)
    counts = torch.bincount(splits["train"][1], minlength=NUM_CLASSES)
    assert len(CLASS_NAMES) == NUM_CLASSES == 10
    assert counts.min() > 25  # roughly balanced: 50 expected per class
    assert not torch.equal(splits["val"][0][:10], splits["test"][0][:10])


def test_where_matters_left_right_halves() -> None:
    # The object (label = 2*shape + half) sits in its half: brightness difference to the
    # background gradient is concentrated on that side on average.
    images, labels = generate(2000, seed=1)
    x = images.float()
    dev = (x - x.mean((2, 3), keepdim=True)).abs().mean(1)  # (N, H, W)
    left, right = dev[:, :, :16].mean((1, 2)), dev[:, :, 16:].mean((1, 2))
    half = labels % 2
    assert (left[half == 0] > right[half == 0]).float().mean() > 0.7
    assert (right[half == 1] > left[half == 1]).float().mean() > 0.7


def test_datamodule_batches() -> None:
    dm = build_datamodule(
        {"name": "synthetic", "num_train": 70, "num_val": 20, "num_test": 20, "batch_size": 32}
    )
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and len(dm.train_dataloader()) == 3
    assert dm.num_classes == 10 and dm.image_size == 32


def test_flip_is_rejected_for_synthetic() -> None:
    import pytest

    with pytest.raises(ConfigError, match="flip"):
        build_datamodule({"name": "synthetic", "flip": True})
