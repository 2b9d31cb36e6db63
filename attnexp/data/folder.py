"""ImageFolder-layout datasets: ``<root>/<split>/<class>/<image>``.

Two ways to feed them, chosen by ``data.in_memory`` (``auto | true | false``):

* in memory: every image of a split is decoded once, converted to RGB, resized (shorter
  side) and centre-cropped to ``image_size`` into one uint8 tensor, which is cached on disk
  under a key computed from the file list, sizes and modification times. A changed folder
  is decoded again; an unchanged one loads in about a second. Training then runs on
  :class:`~attnexp.data.datamodule.InMemoryDataModule` (batched augmentation on device).
* streaming (``attnexp.data.streaming``): files are decoded per sample in DataLoader
  workers; for folders that do not fit in memory, and for the ImageNet recipe.

``auto`` picks in memory when the decoded splits fit in ``data.memory_limit_gb``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L

from attnexp.data.listing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    channel_stats,
    check_num_classes,
    default_cache_dir,
    holdout,
    limit_splits,
    list_images,
    load_split,
)
from attnexp.data.options import get_bool, get_choice, get_float, get_int, get_path, get_triple
from attnexp.errors import ConfigError

log = logging.getLogger(__name__)


def _root(cfg: Mapping[str, Any]) -> Path:
    root = get_path(cfg, "root")
    if not root.is_dir():
        splits = ", ".join(
            f"{cfg.get(k)}/" for k in ("train_split", "val_split", "test_split") if cfg.get(k)
        )
        raise ConfigError(
            f"data.root {str(root)!r} does not exist (looked in {root.resolve()}); point data.root at the "
            f"folder holding {splits or 'train/ and test/'} each with one sub-folder per class, "
            f"e.g. data.root=/datasets/mydata"
        )
    return root


def _stats(
    cfg: Mapping[str, Any], recipe: str, estimate: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std``; null = ImageNet's (imagenet recipe) or estimated from train."""
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        return get_triple(cfg, "mean", IMAGENET_MEAN), get_triple(cfg, "std", IMAGENET_STD)
    if recipe == "imagenet":
        base_mean, base_std = IMAGENET_MEAN, IMAGENET_STD
    else:
        base_mean, base_std = estimate()
    return get_triple(cfg, "mean", base_mean), get_triple(cfg, "std", base_std)


def build_imagefolder(
    cfg: Mapping[str, Any], recipe_default: str = "cifar", in_memory_default: str = "auto"
) -> L.LightningDataModule:
    """``data=imagefolder`` (and ``data=imagenet``, which fixes the recipe and streams)."""
    from attnexp.data.augment import augment_options
    from attnexp.data.datamodule import STORAGE_CHOICES, InMemoryDataModule
    from attnexp.data.memory import BatchAugment

    root = _root(cfg)
    name = str(cfg.get("name", "imagefolder"))
    size = get_int(cfg, "image_size", 32, minimum=1)
    recipe = get_choice(cfg, "recipe", recipe_default, RECIPES)
    mode = get_choice(cfg, "in_memory", in_memory_default, ("auto", "true", "false"))
    limit_gb = get_float(cfg, "memory_limit_gb", 4.0, minimum=0.0)
    skip = get_bool(cfg, "skip_corrupt", False)
    val_size = get_int(cfg, "val_size", 0, minimum=0)
    split_seed = get_int(cfg, "split_seed", 0)
    batch_size = get_int(cfg, "batch_size", 128, minimum=1)
    eval_batch_size = get_int(cfg, "eval_batch_size", batch_size, minimum=1)
    shuffle_seed = get_int(cfg, "shuffle_seed", 0)
    if recipe == "imagenet" and mode == "true":
        raise ConfigError(
            "data.in_memory=true needs data.recipe=cifar (pad + crop + flip at a fixed size); the imagenet "
            "recipe crops a random-size region of each full image and streams from disk (in_memory=false)"
        )

    train_dir = str(cfg.get("train_split") or "train")
    test_dir = str(cfg.get("test_split") or "test")
    val_dir = cfg.get("val_split")
    if val_dir and val_size:
        raise ConfigError(
            f"set either data.val_split ({val_dir}) or data.val_size ({val_size}), not both"
        )
    files = {"train": list_images(root / train_dir)}
    classes = files["train"].classes
    num_classes = check_num_classes(cfg, len(classes), root / train_dir)
    files["test"] = list_images(root / test_dir, classes)
    if val_dir:  # ImageNet: val_split == test_split, listed (and decoded) once
        files["val"] = (
            files["test"] if str(val_dir) == test_dir else list_images(root / str(val_dir), classes)
        )

    if val_size:  # on the file lists, so both feeding paths hold out the same images
        train_idx, val_idx = holdout(
            len(files["train"]), val_size, split_seed, str(root / train_dir)
        )
        files["val"] = files["train"].subset(val_idx.tolist())
        files["train"] = files["train"].subset(train_idx.tolist())
    files = limit_splits(files, cfg, split_seed, name)

    count = sum(len(f) for f in {id(f): f for f in files.values()}.values())
    decoded_gb = count * 3 * size * size / 1e9
    in_memory = mode == "true" or (mode == "auto" and recipe == "cifar" and decoded_gb <= limit_gb)
    log.info(
        "%s: %d images, %.2f GB decoded at %dpx -> %s (in_memory=%s, memory_limit_gb=%g, recipe=%s)",
        name,
        count,
        decoded_gb,
        size,
        "in memory" if in_memory else "streaming",
        mode,
        limit_gb,
        recipe,
    )
    augment = BatchAugment(
        pad=get_int(cfg, "pad", 4, minimum=0),
        flip=get_bool(cfg, "flip", True),
        cutout=get_int(cfg, "cutout", 0, minimum=0),
        extra=augment_options(cfg).image_augment(),
    )

    if not in_memory:
        from attnexp.data.streaming import StreamingDataModule, estimate_stats

        mean, std = _stats(
            cfg, recipe, lambda: estimate_stats(files["train"], size, seed=split_seed)
        )
        return StreamingDataModule(
            files,
            num_classes=num_classes,
            image_size=size,
            recipe=recipe,
            augment=augment,
            mean=mean,
            std=std,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=_workers(cfg),
            prefetch_factor=get_int(cfg, "prefetch_factor", 2, minimum=1),
            resize_size=get_int(cfg, "resize_size", round(size / 0.875), minimum=size),
            rrc_scale=_pair(cfg, "rrc_scale", (0.08, 1.0)),
            skip_corrupt=skip,
            seed=shuffle_seed,
            name=name,
        )

    cache = cfg.get("cache_dir")
    cache_dir = (
        Path(os.path.expandvars(str(cache))).expanduser() if cache else default_cache_dir(root)
    )
    unique = {id(f): load_split(f, size, cache_dir, skip) for f in files.values()}
    decoded = {split: unique[id(f)] for split, f in files.items()}
    splits = {split: (d.images, d.labels) for split, d in decoded.items()}
    splits.setdefault(
        "val", splits["test"]
    )  # no val folder or hold-out: validate on test (documented)
    mean, std = _stats(cfg, recipe, lambda: channel_stats(splits["train"][0]))
    dm = InMemoryDataModule(
        splits,
        num_classes=num_classes,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        mean=mean,
        std=std,
        augment=augment,
        seed=shuffle_seed,
        name=name,
        class_names=classes,
        storage=get_choice(cfg, "storage", "device", STORAGE_CHOICES),
    )
    dm.skipped_files = [path for d in unique.values() for path in d.skipped]
    return dm


def _workers(cfg: Mapping[str, Any]) -> int:
    from attnexp.data.options import get_num_workers

    return get_num_workers(cfg)


def _pair(cfg: Mapping[str, Any], key: str, default: tuple[float, float]) -> tuple[float, float]:
    value = cfg.get(key)
    if value is None:
        return default
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(f"data.{key} must be a list of two numbers [low, high], got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high:
        raise ConfigError(f"data.{key} must satisfy 0 < low <= high, got {list(value)}")
    return low, high


def build_imagenet(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """``data=imagenet``: ILSVRC-2012 in the ImageFolder layout, streamed, ResNet recipe."""
    from attnexp.data.options import get_path

    root = get_path(cfg, "root")
    if not root.is_dir():
        raise ConfigError(
            f"ImageNet not found: data.root {str(root)!r} does not exist (looked in {root.resolve()}). "
            f"ImageNet cannot be downloaded automatically (it needs an image-net.org account): extract "
            f"ILSVRC2012 so that <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG exist (sort the "
            f"val images into class folders first) and set data.root=/path/to/imagenet"
        )
    defaults = {
        "train_split": "train",
        "val_split": "val",
        "test_split": "val",
        "num_classes": 1000,
    }
    defaults.update(
        {"image_size": 224, "resize_size": 256, "batch_size": 256, "prefetch_factor": 4}
    )
    merged = {**defaults, **cfg}  # the config's keys (even null ones) win over these defaults
    return build_imagefolder(merged, recipe_default="imagenet", in_memory_default="false")
