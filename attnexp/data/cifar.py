"""CIFAR-10 and CIFAR-100 from torchvision's python-pickle batches, on the in-memory path.

The batches (``cifar-10-batches-py/`` or ``cifar-100-python/``, as torchvision downloads
them) are read straight into one uint8 tensor per split, which takes well under a second,
so there is no cache. torchvision is used only to download (``data.download=true``); its
dataset classes are not, because they decode to PIL images one by one.

Recipe (He et al. 2016 and most attention papers since): zero-pad 4 + random 32x32 crop,
horizontal flip, optional cutout, per-channel normalisation with the training set's
mean/std. ``val_size`` holds out a fixed random part of the training set (5000 gives the
45k/5k split of He et al.); with 0, validation uses the test set.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from attnexp.data.augment import augment_options
from attnexp.data.datamodule import STORAGE_CHOICES, InMemoryDataModule
from attnexp.data.listing import holdout, limit_splits
from attnexp.data.memory import BatchAugment
from attnexp.data.options import get_bool, get_choice, get_int, get_path, get_triple
from attnexp.errors import ConfigError

log = logging.getLogger(__name__)

# Per-channel mean and std over all training pixels, in [0, 1]. (The often copied
# std (0.2023, 0.1994, 0.2010) for CIFAR-10 is the mean of per-image stds, a different
# quantity; set data.std to it to reproduce code that uses it.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

VARIANTS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "torchvision": "CIFAR10",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "torchvision": "CIFAR100",
    },
}
STANDARD_SIZES = {"train": 50_000, "test": 10_000}


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ConfigError(
            f"cannot read CIFAR batch file {path}: {err}; delete the folder and download again "
            f"(data.download=true) or point data.root at an intact copy"
        ) from err


def find_batches(root: Path, variant: str) -> Path | None:
    """The batch folder under ``root`` (or ``root`` itself), if all its files are there."""
    spec = VARIANTS[variant]
    for folder in (root / spec["folder"], root):
        if all((folder / name).is_file() for name in spec["train"] + spec["test"]):
            return folder
    return None


def download(root: Path, variant: str, timeout_s: float = 60.0) -> None:
    """Download and extract the archive with torchvision's URL and checksum."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(tvd, VARIANTS[variant]["torchvision"])
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # offline machines otherwise hang on the connection
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    finally:
        socket.setdefaulttimeout(previous)


def load_batches(folder: Path, variant: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train': (uint8 N x 3 x 32 x 32, int64 N), 'test': ...} from the pickle batches."""
    spec = VARIANTS[variant]
    out = {}
    for split in ("train", "test"):
        data, labels = [], []
        for name in spec[split]:
            batch = _unpickle(folder / name)
            if "data" not in batch or spec["label_key"] not in batch:
                raise ConfigError(
                    f"{folder / name} is not a {variant} batch (keys {sorted(batch)[:6]}; expected "
                    f"'data' and {spec['label_key']!r}); is data.root pointing at the other CIFAR?"
                )
            array = np.asarray(batch["data"], dtype=np.uint8)
            if array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
                raise ConfigError(
                    f"{folder / name}: 'data' has shape {array.shape}, expected (N, 3072)"
                )
            data.append(array.reshape(-1, 3, 32, 32))
            labels.extend(batch[spec["label_key"]])
        images = torch.from_numpy(np.concatenate(data))
        label_t = torch.tensor(labels, dtype=torch.int64)
        if label_t.numel() != images.shape[0]:
            raise ConfigError(
                f"{folder}: {images.shape[0]} images but {label_t.numel()} labels in the {split} batches"
            )
        if label_t.numel() and (label_t.min() < 0 or label_t.max() >= spec["classes"]):
            raise ConfigError(f"{folder}: {split} labels outside 0..{spec['classes'] - 1}")
        if images.shape[0] != STANDARD_SIZES[split]:
            log.warning(
                "%s: %d %s images, not the standard %d",
                folder,
                images.shape[0],
                split,
                STANDARD_SIZES[split],
            )
        out[split] = (images, label_t)
    return out


def class_names(folder: Path, variant: str) -> list[str] | None:
    meta_file, key = VARIANTS[variant]["meta"]
    if not (folder / meta_file).is_file():
        return None
    names = _unpickle(folder / meta_file).get(key)
    return [str(n) for n in names] if names else None


def build_cifar(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    variant = str(cfg.get("name"))
    spec = VARIANTS[variant]
    root = get_path(cfg, "root")
    folder = find_batches(root, variant)
    if folder is None:
        if get_bool(cfg, "download", True):
            log.info("downloading %s to %s", variant, root)
            try:
                download(root, variant)
            except (
                Exception
            ) as err:  # offline, proxy, disk full, bad checksum: all fixable by the user
                raise ConfigError(
                    f"{variant} is not under data.root={str(root)!r} (looked for {root.resolve() / spec['folder']}) "
                    f"and downloading it failed ({type(err).__name__}: {err}). Without internet, copy an "
                    f"existing {spec['folder']}/ folder (torchvision's layout) and set data.root to the folder "
                    f"that contains it"
                ) from err
            folder = find_batches(root, variant)
        if folder is None:
            raise ConfigError(
                f"{variant} is not under data.root={str(root)!r}: looked for {root.resolve() / spec['folder']} "
                f"with files {', '.join(spec['train'] + spec['test'])}. Set data.root to the folder that "
                f"contains an existing {spec['folder']}/ (torchvision's layout), or set data.download=true"
            )
    if get_int(cfg, "image_size", 32) != 32:
        raise ConfigError(f"data.image_size must be 32 for {variant} (its images are 32x32)")
    num_classes = spec["classes"]
    if (
        cfg.get("num_classes") is not None
        and get_int(cfg, "num_classes", num_classes) != num_classes
    ):
        raise ConfigError(
            f"data.num_classes must be {num_classes} for {variant}, got {cfg.get('num_classes')}"
        )

    splits = load_batches(folder, variant)
    val_size = get_int(cfg, "val_size", 0, minimum=0)
    if val_size:
        images, labels = splits["train"]
        train_idx, val_idx = holdout(
            labels.numel(), val_size, get_int(cfg, "split_seed", 0), f"{variant} train"
        )
        splits["val"] = (images[val_idx], labels[val_idx])
        splits["train"] = (images[train_idx], labels[train_idx])
    else:
        splits["val"] = splits["test"]  # the common CIFAR practice; documented in docs/data.md
    splits = limit_splits(splits, cfg, get_int(cfg, "split_seed", 0), variant)
    batch_size = get_int(cfg, "batch_size", 128, minimum=1)
    return InMemoryDataModule(
        splits,
        num_classes=num_classes,
        batch_size=batch_size,
        eval_batch_size=get_int(cfg, "eval_batch_size", batch_size, minimum=1),
        mean=get_triple(cfg, "mean", spec["mean"]),
        std=get_triple(cfg, "std", spec["std"]),
        augment=BatchAugment(
            pad=get_int(cfg, "pad", 4, minimum=0),
            flip=get_bool(cfg, "flip", True),
            cutout=get_int(cfg, "cutout", 0, minimum=0),
            extra=augment_options(cfg).image_augment(),
        ),
        seed=get_int(cfg, "shuffle_seed", 0),
        name=variant,
        class_names=class_names(folder, variant),
        storage=get_choice(cfg, "storage", "device", STORAGE_CHOICES),
    )
