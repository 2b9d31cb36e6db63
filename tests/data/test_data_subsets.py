"""``data.num_train`` / ``num_val`` / ``num_test`` on real datasets, and ``+debug=smoke`` on
every dataset: class-balanced, nested, seeded subsets that both feeding paths agree on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from datagen import CLASSES, write_cifar, write_image_folder

from attnexp.data import build_datamodule
from attnexp.data.listing import limit_split, nested_order
from attnexp.errors import ConfigError
from attnexp.run import train

LABELS = {
    "balanced": torch.arange(60) % 3,
    "skewed": torch.tensor([0] * 40 + [1] * 15 + [2] * 5),
    "one class": torch.zeros(9, dtype=torch.int64),
    "gaps in ids": torch.tensor([0, 4, 4, 7, 0, 7, 4, 0, 7, 7]),
}


@pytest.mark.parametrize("labels", LABELS.values(), ids=LABELS.keys())
@pytest.mark.parametrize("seed", [0, 5])
def test_every_prefix_is_balanced_and_nested(labels: torch.Tensor, seed: int) -> None:
    order = nested_order(labels, seed)
    assert sorted(order.tolist()) == list(range(labels.numel()))  # a permutation
    sizes = torch.bincount(labels)
    for k in range(1, labels.numel() + 1):
        counts = torch.bincount(labels[order[:k]], minlength=sizes.numel())
        # as balanced as the class sizes allow: only full classes may fall behind
        short = counts < counts.max() - 1
        assert torch.equal(counts[short], sizes[short]), (k, counts, sizes)
        keep = limit_split(labels, k, seed, "t")
        expected = None if k == labels.numel() else order[:k].sort().values
        assert (keep is None and expected is None) or torch.equal(keep, expected)


def test_seeded_and_capped(caplog: pytest.LogCaptureFixture) -> None:
    labels = LABELS["balanced"]
    assert torch.equal(limit_split(labels, 7, 1, "t"), limit_split(labels, 7, 1, "t"))
    assert not torch.equal(limit_split(labels, 7, 1, "t"), limit_split(labels, 7, 2, "t"))
    assert limit_split(labels, None, 0, "t") is None
    with caplog.at_level(logging.WARNING):
        assert limit_split(labels, 1000, 0, "data.num_test=1000: x test split") is None
    assert "asked for 1000 images, it has 60" in caplog.text


def _folder_cfg(root: Path, tmp_path: Path, **kw) -> dict:
    return {
        "name": "imagefolder",
        "root": str(root),
        "num_classes": 3,
        "batch_size": 4,
        "num_workers": 0,
        "cache_dir": str(tmp_path / "cache"),
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        **kw,
    }


def _eval_data(dm, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_folder_subsets_agree_between_memory_and_streaming(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", per_class=8, special=False)
    kw = {"val_size": 6, "num_train": 7, "num_val": 5, "num_test": 4}
    mem = build_datamodule(_folder_cfg(root, tmp_path, in_memory="true", **kw))
    stream = build_datamodule(_folder_cfg(root, tmp_path, in_memory="false", **kw))
    assert mem.split_sizes == stream.split_sizes == {"train": 7, "val": 5, "test": 4}
    for split in ("val", "test"):
        (xm, ym), (xs, ys) = _eval_data(mem, split), _eval_data(stream, split)
        assert torch.equal(ym, ys) and torch.allclose(xm, xs, atol=1e-5)
    counts = torch.bincount(mem.splits["train"][1], minlength=3)
    assert counts.max() - counts.min() <= 1  # 7 of 3 classes: 3/2/2


def test_subsets_keep_the_holdout_and_nest(tmp_path: Path) -> None:
    """The validation hold-out is taken from the whole training split first, so a sweep over
    num_train validates every run on the same images; smaller subsets lie inside larger."""
    root = write_cifar(tmp_path / "c", n_train=60, n_test=20)
    base = {"name": "cifar10", "root": str(root), "download": False, "val_size": 10}
    full = build_datamodule(base)
    small = build_datamodule({**base, "num_train": 12})
    large = build_datamodule({**base, "num_train": 30})
    assert torch.equal(small.splits["val"][0], full.splits["val"][0])

    def rows(dm) -> set[bytes]:
        return {img.numpy().tobytes() for img in dm.splits["train"][0]}

    assert len(rows(small)) == 12 and rows(small) <= rows(large) <= rows(full)
    with pytest.raises(ConfigError, match="data.num_train must be >= 1"):
        build_datamodule({**base, "num_train": 0})


SMOKE_DATASETS = {
    "imagefolder": lambda root: (
        write_image_folder(root, per_class=6, special=False),
        ["data=imagefolder", f"data.num_classes={len(CLASSES)}", "data.num_workers=0"],
    ),
    "imagenet": lambda root: (
        write_image_folder(root, splits=("train", "val"), per_class=6, special=False),
        ["data=imagenet", f"data.num_classes={len(CLASSES)}", "data.num_workers=0"],
    ),
    "cifar10": lambda root: (write_cifar(root, n_train=80, n_test=40), ["data=cifar10"]),
    "cifar100": lambda root: (
        write_cifar(root, "cifar100", n_train=80, n_test=40),
        ["data=cifar100"],
    ),
}


@pytest.mark.parametrize("dataset", SMOKE_DATASETS)
def test_smoke_runs_on_every_dataset(dataset: str, make_cfg, tmp_path: Path) -> None:
    """``+debug=smoke data=<real dataset>``: the preset's split sizes become subsets."""
    root, overrides = SMOKE_DATASETS[dataset](tmp_path / "data")
    cfg = make_cfg(
        "+debug=smoke",
        "model=resnet18" if dataset == "imagenet" else "model=resnet20",
        "logger=csv",
        *overrides,
        f"data.root={root}",
    )
    record = train(cfg)
    assert record["status"] == "completed" and record["dataset"] == dataset
    assert record["training"]["compile"]["compiled"] is False
