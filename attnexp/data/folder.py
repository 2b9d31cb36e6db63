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

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from attnexp.data.decode import IMAGE_EXTENSIONS, CorruptImageError, decode_rgb, resize_center_crop
from attnexp.data.options import get_bool, get_choice, get_float, get_int, get_path, get_triple
from attnexp.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_VERSION = "v2"  # bump when decoding or resizing changes the stored pixels
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RECIPES = ("cifar", "imagenet")


@dataclass
class FileList:
    """The images of one split folder, in a stable order (sorted classes, sorted paths)."""

    root: Path
    paths: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> FileList:
        return FileList(
            self.root,
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.classes,
        )


@dataclass
class FolderSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # files skipped as corrupt (skip_corrupt)


def _walk_images(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def list_images(split_dir: Path, classes: Sequence[str] | None = None) -> FileList:
    """List ``split_dir/<class>/**/<image>`` without opening any image.

    ``classes`` (the training split's) fixes the label of each class name, so a val/test
    folder may hold a subset of the classes; unknown class folders are an error.
    """
    if not split_dir.is_dir():
        raise ConfigError(
            f"dataset folder {split_dir} does not exist; expected <data.root>/<split>/<class>/<image> "
            f"(set data.root to the folder that holds the split folders, or the data.*_split names)"
        )
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        loose = _walk_images(split_dir)
        hint = (
            f" It holds {len(loose)} images directly: sort them into one folder per class "
            f"(for ImageNet's val set, e.g. with the usual valprep.sh script)."
            if loose
            else ""
        )
        raise ConfigError(
            f"dataset folder {split_dir} has no class sub-folders (<class>/<image> expected).{hint}"
        )
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ConfigError(
            f"{split_dir} has class folders that the training split lacks: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}; the splits must use the same class names"
        )
    index = {name: i for i, name in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    for name in found:
        images = _walk_images(split_dir / name)
        if not images:
            raise ConfigError(
                f"class folder {split_dir / name} contains no images "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images"
            )
        paths.extend(images)
        labels.extend([index[name]] * len(images))
    return FileList(split_dir, paths, labels, names)


def cache_key(files: FileList, image_size: int) -> str:
    """Changes when any file is added, removed, renamed, rewritten or touched."""
    h = hashlib.sha1(
        f"{CACHE_VERSION}:{image_size}:{files.root.resolve()}:{files.classes}".encode()
    )
    for path, label in zip(files.paths, files.labels):
        st = os.stat(path)
        h.update(f"{path}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_files(files: FileList, image_size: int, skip_corrupt: bool = False) -> FolderSplit:
    """Decode every file to RGB at ``image_size`` x ``image_size`` into one uint8 tensor."""
    images = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    keep: list[int] = []
    skipped: list[str] = []
    for i, path in enumerate(files.paths):
        try:
            images[len(keep)] = resize_center_crop(decode_rgb(path), image_size)
        except CorruptImageError as err:
            if not skip_corrupt:
                raise ConfigError(
                    f"{err}. Remove or replace the file, or set data.skip_corrupt=true to skip "
                    f"unreadable images (their count is reported)"
                ) from err
            skipped.append(path)
            continue
        keep.append(i)
    if not keep:
        raise ConfigError(
            f"no readable images in {files.root} ({len(skipped)} corrupt files skipped)"
        )
    if skipped:
        log.warning(
            "skipped %d corrupt images in %s (data.skip_corrupt=true): %s",
            len(skipped),
            files.root,
            skipped[:5],
        )
    labels = torch.tensor([files.labels[i] for i in keep], dtype=torch.int64)
    return FolderSplit(
        images[: len(keep)].clone() if skipped else images, labels, files.classes, skipped
    )


def default_cache_dir(root: Path) -> Path:
    """``<root>/.attnexp-cache`` when writable, else a per-user cache (shared, read-only data)."""
    local = root / ".attnexp-cache"
    if os.access(local if local.exists() else root, os.W_OK):
        return local
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnexp" / "folders"


def load_split(
    files: FileList | Path, image_size: int, cache_dir: Path | None, skip_corrupt: bool = False
) -> FolderSplit:
    """Decode a split, or load it from the cache when its files have not changed."""
    if isinstance(files, Path):
        files = list_images(files)
    if cache_dir is None:
        return decode_files(files, image_size, skip_corrupt)
    key = cache_key(files, image_size)
    cache_file = (
        cache_dir / f"{files.root.name}-{image_size}px-{key}{'-skip' if skip_corrupt else ''}.pt"
    )
    if cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=True)
            return FolderSplit(
                blob["images"], blob["labels"], list(blob["classes"]), list(blob["skipped"])
            )
        except Exception as err:  # a partial or foreign file: decode again and overwrite it
            log.warning("ignoring unreadable cache file %s (%s)", cache_file, err)
    log.info("decoding %d images from %s (cached in %s)", len(files), files.root, cache_dir)
    split = decode_files(files, image_size, skip_corrupt)
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        os.close(fd)
        blob = {
            "images": split.images,
            "labels": split.labels,
            "classes": split.classes,
            "skipped": split.skipped,
        }
        torch.save(blob, tmp)
        os.replace(tmp, cache_file)  # atomic: concurrent runs never read a half-written cache
    except (OSError, RuntimeError) as err:  # read-only or full disk: the run goes on uncached
        log.warning(
            "could not write the decode cache %s (%s); continuing without it", cache_file, err
        )
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return split


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] of uint8 images, exactly, from value histograms.

    A histogram of the 256 values per channel gives both moments without a float copy of
    the data (a float64 pass over CIFAR-10 takes ~10 s on a small CPU; this takes ~1 s).
    """
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        m = float((hist * values).sum() / hist.sum())
        var = float((hist * (values - m) ** 2).sum() / hist.sum())
        mean.append(m / 255)
        std.append(max(var**0.5 / 255, 1e-3))
    return mean, std


def holdout(n: int, val_size: int, seed: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a fixed random hold-out of ``val_size`` from ``n`` samples."""
    if not 0 < val_size < n:
        raise ConfigError(
            f"data.val_size={val_size} must be between 1 and {n - 1} ({what} has {n} images)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def check_num_classes(cfg: Mapping[str, Any], found: int, where: Path) -> int:
    declared = cfg.get("num_classes")
    if declared is not None and get_int(cfg, "num_classes", None, minimum=1) != found:
        raise ConfigError(
            f"data.num_classes={declared} but {where} has {found} class folders; "
            f"set data.num_classes={found}"
        )
    return found


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
    )

    if not in_memory:
        from attnexp.data.streaming import StreamingDataModule, estimate_stats

        if val_size:
            train_idx, val_idx = holdout(
                len(files["train"]), val_size, split_seed, str(root / train_dir)
            )
            files["val"] = files["train"].subset(val_idx.tolist())
            files["train"] = files["train"].subset(train_idx.tolist())
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
    if val_size:
        train_images, train_labels = splits["train"]
        train_idx, val_idx = holdout(len(train_labels), val_size, split_seed, str(root / train_dir))
        splits["val"] = (train_images[val_idx], train_labels[val_idx])
        splits["train"] = (train_images[train_idx], train_labels[train_idx])
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
