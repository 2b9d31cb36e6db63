"""Datasets by name: ``build_datamodule(cfg.data, seed)``.

Each builder takes the ``data`` config mapping and returns a LightningDataModule that has
``num_classes``, ``image_size``, ``name`` and ``class_names`` attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L

from attnexp.data.datamodule import InMemoryDataModule
from attnexp.data.memory import BatchAugment
from attnexp.errors import ConfigError, choices_error

Builder = Callable[[Mapping[str, Any]], L.LightningDataModule]
_BUILDERS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a datamodule builder under ``data.name``."""

    def decorator(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn

    return decorator


def available_datasets() -> list[str]:
    return sorted(_BUILDERS)


def build_datamodule(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """Build the datamodule named by ``cfg['name']``."""
    name = cfg.get("name")
    if name not in _BUILDERS:
        raise choices_error("dataset (data.name)", name, available_datasets())
    return _BUILDERS[name](cfg)


@register_dataset("synthetic")
def _synthetic(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    from attnexp.data import synthetic

    for key in ("num_train", "num_val", "num_test", "batch_size"):
        if int(cfg.get(key, 1)) < 1:
            raise ConfigError(f"data.{key} must be >= 1, got {cfg.get(key)}")
    splits = synthetic.generate_splits(
        int(cfg.get("num_train", 5000)),
        int(cfg.get("num_val", 1000)),
        int(cfg.get("num_test", 1000)),
        seed=int(cfg.get("data_seed", 0)),
        image_size=int(cfg.get("image_size", 32)),
    )
    if cfg.get("flip", False):
        raise ConfigError("data.flip=true is invalid for data=synthetic: a horizontal flip changes the class (left/right half)")
    return InMemoryDataModule(
        splits,
        num_classes=synthetic.NUM_CLASSES,
        batch_size=int(cfg.get("batch_size", 128)),
        eval_batch_size=cfg.get("eval_batch_size"),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=BatchAugment(pad=int(cfg.get("pad", 2)), flip=False, cutout=int(cfg.get("cutout", 0))),
        seed=int(cfg.get("shuffle_seed", 0)),
        name="synthetic",
        class_names=synthetic.CLASS_NAMES,
    )


def _folder_in_memory(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """``imagefolder`` on the in-memory path: decode once (cached), augment on device."""
    from pathlib import Path

    from attnexp.data.folder import load_split

    root = Path(str(cfg.get("root", ""))).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data.root {str(root)!r} does not exist (looked in {root.resolve()}); point data.root at the "
            f"folder holding {cfg.get('train_split', 'train')}/ and {cfg.get('test_split', 'test')}/"
        )
    size = int(cfg.get("image_size", 32))
    cache = cfg.get("cache_dir")
    cache_dir = Path(str(cache)).expanduser() if cache else root / ".attnexp-cache"
    skip = bool(cfg.get("skip_corrupt", False))
    train = load_split(root / cfg.get("train_split", "train"), size, cache_dir, skip)
    test = load_split(root / cfg.get("test_split", "test"), size, cache_dir, skip)
    if test.classes != train.classes:
        raise ConfigError(f"train and test class folders differ: {train.classes} vs {test.classes}")
    declared = cfg.get("num_classes")
    if declared is not None and int(declared) != len(train.classes):
        raise ConfigError(
            f"data.num_classes={declared} but {root / cfg.get('train_split', 'train')} has "
            f"{len(train.classes)} class folders; set data.num_classes={len(train.classes)}"
        )
    splits = {"train": (train.images, train.labels), "test": (test.images, test.labels)}
    val_split = cfg.get("val_split")
    if val_split:
        val = load_split(root / val_split, size, cache_dir, skip)
        splits["val"] = (val.images, val.labels)
    else:
        splits["val"] = splits["test"]  # no separate val folder: validate on test (documented)
    mean = cfg.get("mean") or (train.images.float().mean((0, 2, 3)) / 255).tolist()
    std = cfg.get("std") or (train.images.float().std((0, 2, 3)) / 255).tolist()
    dm = InMemoryDataModule(
        splits,
        num_classes=len(train.classes),
        batch_size=int(cfg.get("batch_size", 128)),
        eval_batch_size=cfg.get("eval_batch_size"),
        mean=mean,
        std=std,
        augment=BatchAugment(pad=int(cfg.get("pad", 4)), flip=bool(cfg.get("flip", True)), cutout=int(cfg.get("cutout", 0))),
        seed=int(cfg.get("shuffle_seed", 0)),
        name=str(cfg.get("name")),
        class_names=train.classes,
    )
    dm.skipped_files = train.skipped + test.skipped
    return dm


register_dataset("imagefolder")(_folder_in_memory)
