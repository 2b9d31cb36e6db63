"""The embedded default dataset: shapes at class-dependent places over clutter.

Nothing is downloaded or shipped: images are drawn from a seed at run time, identically on
every machine. A class is a pair (shape, half of the image): five shapes (disk, square,
plus, diamond, ring) times two horizontal halves. So a network must learn *what* is drawn
and *where*, which is exactly what channel and spatial attention claim to help with.
To keep the task from being solved in one epoch, each image also carries a random colour
for the object, two distractor strokes, a coloured background gradient and pixel noise,
and object sizes and positions vary.

Labels: ``label = 2 * shape + half`` (half 0 = left, 1 = right). Do not use horizontal
flips as augmentation on this set: a flip changes the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from attnexp.errors import ConfigError

SHAPES = ("disk", "square", "plus", "diamond", "ring")
NUM_CLASSES = 2 * len(SHAPES)
CLASS_NAMES = tuple(f"{shape}_{side}" for shape in SHAPES for side in ("left", "right"))


def _shape_masks(
    kind: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, size: torch.Tensor
) -> torch.Tensor:
    """Soft-edged masks (N, H, W) of shape ``kind[i]`` with half-size ``size[i]``."""
    s = size[:, None, None]
    adx, ady = dx.abs(), dy.abs()
    radius = torch.sqrt(dx**2 + dy**2)
    # Signed distances (negative inside) for each shape; select per image afterwards.
    dist = torch.stack(
        [
            radius - s,  # disk
            torch.maximum(adx, ady) - 0.85 * s,  # square
            torch.minimum(  # plus: union of two bars
                torch.maximum(adx - 0.33 * s, ady - s),
                torch.maximum(ady - 0.33 * s, adx - s),
            ),
            (adx + ady) - 1.2 * s,  # diamond
            (radius - 0.8 * s).abs() - 0.3 * s,  # ring
        ]
    )
    chosen = dist.gather(0, kind[None, :, None, None].expand(1, *dist.shape[1:]))[0]
    return torch.clamp(0.5 - chosen, 0.0, 1.0)  # about one pixel of anti-aliasing


def generate(num: int, seed: int, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num`` images (uint8, N x 3 x H x W) and labels (int64), deterministically."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    h = w = image_size
    labels = torch.randint(0, NUM_CLASSES, (num,), generator=g)
    kind, half = labels // 2, labels % 2
    ys = torch.arange(h, dtype=torch.float32)[None, :, None].expand(num, h, w)
    xs = torch.arange(w, dtype=torch.float32)[None, None, :].expand(num, h, w)

    # Background: a random colour gradient in a random direction.
    c0, c1 = rand(num, 3), rand(num, 3)
    angle = rand(num) * 2 * torch.pi
    t = (xs * torch.cos(angle)[:, None, None] + ys * torch.sin(angle)[:, None, None]) / max(h, w)
    t = (t - t.amin((1, 2), keepdim=True)) / (
        t.amax((1, 2), keepdim=True) - t.amin((1, 2), keepdim=True) + 1e-6
    )
    images = c0[:, :, None, None] * (1 - t[:, None]) + c1[:, :, None, None] * t[:, None]
    images = 0.35 + 0.3 * images  # muted background

    # Distractors: two thin strokes of random colour, orientation and place.
    for _ in range(2):
        cx, cy = rand(num) * w, rand(num) * h
        theta = rand(num) * torch.pi
        nx, ny = -torch.sin(theta), torch.cos(theta)
        along = (xs - cx[:, None, None]) * ny[:, None, None] - (ys - cy[:, None, None]) * nx[
            :, None, None
        ]
        across = (xs - cx[:, None, None]) * nx[:, None, None] + (ys - cy[:, None, None]) * ny[
            :, None, None
        ]
        length = (0.2 + 0.3 * rand(num)) * w
        stroke = (
            torch.clamp(1.0 - across.abs(), 0.0, 1.0)
            * (along.abs() < length[:, None, None]).float()
        )
        colour = rand(num, 3)
        images = images * (1 - stroke[:, None]) + colour[:, :, None, None] * stroke[:, None]

    # The object: its shape and its half of the image define the class.
    size = (0.12 + 0.08 * rand(num)) * w
    margin = size + 1
    left = margin + rand(num) * (w / 2 - 2 * margin).clamp(min=0)
    cx = torch.where(half == 0, left, left + w / 2)
    cy = margin + rand(num) * (h - 2 * margin)
    mask = _shape_masks(kind, xs - cx[:, None, None], ys - cy[:, None, None], size)
    colour = 0.15 + 0.85 * rand(num, 3)
    bright = rand(num) < 0.5  # half the objects darker than their surroundings
    colour = torch.where(bright[:, None], colour, colour * 0.3)
    images = images * (1 - mask[:, None]) + colour[:, :, None, None] * mask[:, None]

    images = images + 0.08 * torch.randn(images.shape, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


def generate_splits(
    num_train: int, num_val: int, num_test: int, seed: int = 0, image_size: int = 32
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train/val/test drawn from independent seeds derived from ``seed`` (no overlap)."""
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    return {
        split: generate(n, seed * 1000 + offset, image_size)
        for offset, (split, n) in enumerate(sizes.items())
    }


def build_synthetic(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """``data=synthetic``: generated splits on the in-memory path (no flips: see above)."""
    from attnexp.data.augment import augment_options
    from attnexp.data.datamodule import STORAGE_CHOICES, InMemoryDataModule
    from attnexp.data.memory import BatchAugment
    from attnexp.data.options import get_choice, get_int

    if cfg.get("flip", False):
        raise ConfigError(
            "data.flip=true is invalid for data=synthetic: a horizontal flip changes the class (left/right half)"
        )
    if (
        cfg.get("num_classes") is not None
        and get_int(cfg, "num_classes", NUM_CLASSES) != NUM_CLASSES
    ):
        raise ConfigError(
            f"data.num_classes must be {NUM_CLASSES} for data=synthetic, got {cfg.get('num_classes')}"
        )
    sizes = {
        key: get_int(cfg, key, default, minimum=1)
        for key, default in (("num_train", 5000), ("num_val", 1000), ("num_test", 1000))
    }
    batch_size = get_int(cfg, "batch_size", 128, minimum=1)
    splits = generate_splits(
        sizes["num_train"],
        sizes["num_val"],
        sizes["num_test"],
        seed=get_int(cfg, "data_seed", 0),
        image_size=get_int(cfg, "image_size", 32, minimum=8),
    )
    return InMemoryDataModule(
        splits,
        num_classes=NUM_CLASSES,
        batch_size=batch_size,
        eval_batch_size=get_int(cfg, "eval_batch_size", batch_size, minimum=1),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=BatchAugment(
            pad=get_int(cfg, "pad", 2, minimum=0),
            flip=False,
            cutout=get_int(cfg, "cutout", 0, minimum=0),
            extra=augment_options(cfg).image_augment(),
        ),
        seed=get_int(cfg, "shuffle_seed", 0),
        name="synthetic",
        class_names=CLASS_NAMES,
        storage=get_choice(cfg, "storage", "device", STORAGE_CHOICES),
    )
