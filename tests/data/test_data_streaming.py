"""The streaming path: DataLoader settings, ImageNet transforms, epoch-seeded order."""

from __future__ import annotations

from pathlib import Path

import torch
from datagen import write_image_folder
from torchvision.transforms import v2

from attnexp.data import build_datamodule
from attnexp.data.memory import BatchAugment
from attnexp.data.streaming import EpochSampler, NormalizeCollate, build_transforms


def test_imagenet_loader_settings(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, splits=("train", "val"), special=False)
    dm = build_datamodule(
        {
            "name": "imagenet",
            "root": str(root),
            "num_classes": 3,
            "num_workers": 2,
            "prefetch_factor": 4,
        }
    )
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert train.num_workers == 2 and train.persistent_workers and train.prefetch_factor == 4
    assert train.pin_memory == torch.cuda.is_available()
    assert isinstance(train.sampler, EpochSampler)
    assert val.dataset is test.dataset  # val/ is also the test split, listed once
    assert dm.split_sizes == {"train": 12, "test": 12, "val": 12}
    assert dm.mean == (0.485, 0.456, 0.406) and dm.image_size == 224


def test_imagenet_transforms_sizes_and_centre_crop() -> None:
    train, evaluate = build_transforms("imagenet", 224, BatchAugment(flip=True), resize_size=256)
    img = (
        torch.arange(300 * 400, dtype=torch.int64)
        .remainder(251)
        .to(torch.uint8)
        .view(1, 300, 400)
        .expand(3, 300, 400)
    )
    assert train(img).shape == (3, 224, 224) and train(img).dtype == torch.uint8
    expected = v2.CenterCrop(224)(v2.Resize(256, antialias=True)(img))  # 256 x 341, then centre
    assert torch.equal(evaluate(img), expected)


def test_small_recipe_matches_in_memory_shapes() -> None:
    train, evaluate = build_transforms("cifar", 32, BatchAugment(pad=4, flip=True), resize_size=37)
    img = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8)
    assert train(img).shape == evaluate(img).shape == (3, 32, 32)


def test_collate_normalises_the_batch() -> None:
    collate = NormalizeCollate((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, y = collate(
        [
            (torch.full((3, 4, 4), 255, dtype=torch.uint8), 1),
            (torch.zeros(3, 4, 4, dtype=torch.uint8), 2),
        ]
    )
    assert torch.allclose(x[0], torch.full((3, 4, 4), 2.0)) and torch.allclose(
        x[1], torch.full((3, 4, 4), -2.0)
    )
    assert y.tolist() == [1, 2] and y.dtype == torch.int64


def test_epoch_sampler_depends_on_seed_and_epoch() -> None:
    a, b = EpochSampler(100, seed=1), EpochSampler(100, seed=1)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first and sorted(first) == list(range(100))
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
