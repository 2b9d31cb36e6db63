"""ImageFolder-layout datasets (``<root>/<split>/<class>/<image>``), decoded once into memory.

For folders of small images (CIFAR as JPEG, small benchmarks) the whole split is decoded
into one uint8 tensor and cached on disk next to a key computed from the file list, sizes
and modification times, so a changed folder is decoded again and an unchanged one loads
in a second. Every image is converted to RGB (grayscale, palette, CMYK, RGBA) and, when
its size differs from ``image_size``, resized (shorter side) and centre-cropped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from attnexp.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class FolderSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    skipped: list[str]  # files skipped as corrupt (only with skip_corrupt)


def list_images(split_dir: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, class index) pairs in a stable order, and the sorted class names."""
    if not split_dir.is_dir():
        raise ConfigError(
            f"dataset folder {split_dir} does not exist; expected <data.root>/<split>/<class>/<image> "
            f"(set data.root to the folder that holds the split folders)"
        )
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ConfigError(f"dataset folder {split_dir} has no class sub-folders (<class>/<image> expected)")
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        found = sorted(
            p for p in (split_dir / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise ConfigError(
                f"class folder {split_dir / name} contains no images "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
        files.extend((p, index) for p in found)
    return files, classes


def cache_key(files: list[tuple[Path, int]], image_size: int) -> str:
    """Changes when any file is added, removed, renamed, resized or touched."""
    h = hashlib.sha1(f"v1:{image_size}".encode())
    for path, label in files:
        st = path.stat()
        h.update(f"{path}:{label}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_rgb(path: Path, image_size: int) -> np.ndarray:
    """Decode one image to an (image_size, image_size, 3) uint8 array (RGB)."""
    with Image.open(path) as im:
        im.load()
        if im.mode != "RGB":
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(background, im)
            im = im.convert("RGB")
        if im.size != (image_size, image_size):
            scale = image_size / min(im.size)
            new = (max(image_size, round(im.width * scale)), max(image_size, round(im.height * scale)))
            im = im.resize(new, Image.BILINEAR)
            left, top = (im.width - image_size) // 2, (im.height - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
        return np.asarray(im, dtype=np.uint8)


def decode_split(split_dir: Path, image_size: int, skip_corrupt: bool = False) -> FolderSplit:
    files, classes = list_images(split_dir)
    arrays, labels, skipped = [], [], []
    for path, label in files:
        try:
            arrays.append(load_rgb(path, image_size))
            labels.append(label)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            if not skip_corrupt:
                raise ConfigError(
                    f"cannot decode image {path}: {err}. Remove or replace the file, or set "
                    f"data.skip_corrupt=true to skip unreadable images (their count is reported)"
                ) from err
            skipped.append(str(path))
    if not arrays:
        raise ConfigError(f"no readable images in {split_dir}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return FolderSplit(images, torch.tensor(labels, dtype=torch.int64), classes, skipped)


def load_split(split_dir: Path, image_size: int, cache_dir: Path | None, skip_corrupt: bool = False) -> FolderSplit:
    """Decode ``split_dir`` or load it from the cache when the folder has not changed."""
    files, _ = list_images(split_dir)
    key = cache_key(files, image_size)
    cache_file = cache_dir / f"{split_dir.name}-{key}{'-skip' if skip_corrupt else ''}.pt" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        blob = torch.load(cache_file, weights_only=True)
        return FolderSplit(blob["images"], blob["labels"], list(blob["classes"]), list(blob["skipped"]))
    split = decode_split(split_dir, image_size, skip_corrupt)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(
            {"images": split.images, "labels": split.labels, "classes": split.classes, "skipped": split.skipped},
            tmp,
        )
        os.replace(tmp, cache_file)
    return split
