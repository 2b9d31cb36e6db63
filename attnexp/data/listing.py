"""Image folders on disk: list ``<split>/<class>/<image>``, decode and cache whole splits.

The one listing and decoding path of attnexp: the in-memory loader, the streaming loader,
attention-map pictures and evaluation all list folders and decode files through here
(pixels through :mod:`attnexp.data.decode`). A decoded split is cached on disk under a key
computed from the file list, sizes and modification times, so a changed folder is decoded
again and an unchanged one loads in about a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from attnexp.data.decode import IMAGE_EXTENSIONS, CorruptImageError, decode_rgb, resize_center_crop
from attnexp.data.options import get_int
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


#: One split before decoding (a file list) or after ((uint8 images, int64 labels)).
Split = TypeVar("Split", FileList, tuple[torch.Tensor, torch.Tensor])


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


def nested_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded order of the samples in which every prefix is class-balanced (to within one
    image per class, as far as the classes are large enough) and each prefix contains the
    shorter ones, so ``num_train=1000`` holds the images of ``num_train=500``."""
    n = labels.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    by_class = torch.argsort(shuffled, stable=True)  # grouped by class, shuffled order within
    counts = torch.bincount(shuffled)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts  # position of each sample within its class
    return perm[torch.argsort(rank * n + torch.arange(n))]


def limit_split(
    labels: torch.Tensor | Sequence[int], limit: int | None, seed: int, what: str
) -> torch.Tensor | None:
    """Sorted indices of a class-balanced subset of ``limit`` samples (``data.num_train`` /
    ``num_val`` / ``num_test`` on a real dataset), or None to keep every sample. A limit
    above the split's size keeps the whole split, with a warning."""
    if limit is None:
        return None
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if limit >= labels.numel():
        if limit > labels.numel():
            log.warning("%s: asked for %d images, it has %d: using all", what, limit, len(labels))
        return None
    return nested_order(labels, seed)[:limit].sort().values


#: The keys that cap each split of a real dataset (on data=synthetic: how many to generate).
LIMIT_KEYS = {"train": "num_train", "val": "num_val", "test": "num_test"}


def limit_splits(
    splits: dict[str, Split], cfg: Mapping[str, Any], seed: int, name: str
) -> dict[str, Split]:
    """Apply ``data.num_train`` / ``num_val`` / ``num_test`` to ``(images, labels)`` pairs or
    :class:`FileList` s (before decoding, so a small subset of a big folder decodes fast)."""
    from attnexp.data.options import get_optional_int

    out = dict(splits)
    for split, key in LIMIT_KEYS.items():
        limit = get_optional_int(cfg, key, minimum=1)
        if split not in out or limit is None:
            continue
        part = out[split]
        labels = part.labels if isinstance(part, FileList) else part[1]
        keep = limit_split(labels, limit, seed, f"data.{key}={limit}: {name} {split} split")
        if keep is None:
            continue
        if isinstance(part, FileList):
            out[split] = part.subset(keep.tolist())
        else:
            out[split] = (part[0][keep], part[1][keep])
    return out


def check_num_classes(cfg: Mapping[str, Any], found: int, where: Path) -> int:
    declared = cfg.get("num_classes")
    if declared is not None and get_int(cfg, "num_classes", None, minimum=1) != found:
        raise ConfigError(
            f"data.num_classes={declared} but {where} has {found} class folders; "
            f"set data.num_classes={found}"
        )
    return found
