"""Tiny generated datasets on disk: CIFAR pickle batches and ImageFolder trees.

Nothing is downloaded: every file is written here from a seeded RNG.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "emu")


def write_cifar(
    root: Path, variant: str = "cifar10", n_train: int = 60, n_test: int = 20, seed: int = 0
) -> Path:
    """Write a CIFAR-format folder (torchvision's layout) under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, label_key, classes = root / "cifar-10-batches-py", "labels", 10
        train_names, test_names = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]
        meta = ("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        folder, label_key, classes = root / "cifar-100-python", "fine_labels", 100
        train_names, test_names = ["train"], ["test"]
        meta = ("meta", {"fine_label_names": [f"fine{i}" for i in range(100)]})
    folder.mkdir(parents=True, exist_ok=True)
    for names, total in ((train_names, n_train), (test_names, n_test)):
        for chunk, name in zip(np.array_split(np.arange(total), len(names)), names):
            batch = {
                "data": rng.integers(0, 256, (len(chunk), 3072), dtype=np.uint8),
                label_key: rng.integers(0, classes, len(chunk)).tolist(),
                "filenames": [f"img{i}.png" for i in chunk],
            }
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f)
    with open(folder / meta[0], "wb") as f:
        pickle.dump(meta[1], f)
    return root


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_image_folder(
    root: Path,
    splits: tuple[str, ...] = ("train", "test"),
    per_class: int = 4,
    size: tuple[int, int] = (32, 32),
    special: bool = True,
    seed: int = 0,
) -> Path:
    """ImageFolder tree of JPEG/PNG files; with ``special`` the train split also holds a
    grayscale JPEG, a palette PNG, a CMYK JPEG and an RGBA PNG."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                ext = "png" if (i + c) % 2 else "jpg"
                _image(rng, size).save(folder / f"{i:03d}.{ext}")
    if special and "train" in splits:
        folder = root / "train" / CLASSES[0]
        _image(rng, size).convert("L").save(folder / "gray.jpg")
        _image(rng, size).convert("P").save(folder / "palette.png")
        _image(rng, size).convert("CMYK").save(folder / "cmyk.jpg")
        rgba = np.concatenate(
            [
                rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8),
                rng.integers(0, 256, (size[1], size[0], 1), dtype=np.uint8),
            ],
            2,
        )
        Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    return root
