"""Images to explain: a split of a run's own data, or a folder, at the run's input size.

Listing and decoding go through the data package (:mod:`attnexp.data.listing`,
:mod:`attnexp.data.decode`), so a picture shows exactly the pixels the model was evaluated
on; the images are picked per class so that a class-sorted split does not give eight
airplanes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from attnexp.analysis.checkpoints import LoadedModel
from attnexp.data.decode import IMAGE_EXTENSIONS, CorruptImageError, decode_rgb, resize_center_crop
from attnexp.data.listing import list_images
from attnexp.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class ImageBatch:
    """Images to explain: uint8 (N, 3, H, W), labels (or None) and their names."""

    images: torch.Tensor
    labels: list[int | None]
    names: list[str]
    source: str


@dataclass
class DataInfo:
    """What a run's data config implies for inputs: normalisation, class names and splits
    (uint8 tensors of in-memory datamodules, or file lists of streaming ones)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)


_DATA_CACHE: dict[str, DataInfo] = {}


def data_info(cfg: DictConfig, split: str | None = None) -> DataInfo:
    """Build the run's datamodule (cached per data config) for its stats and a split.

    For ``synthetic`` data only ``split`` is generated (the splits come from independent
    seeds, so the others can shrink to one image without changing it).
    """
    from attnexp.data import build_datamodule

    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    if data.get("name") == "synthetic":
        for s in SPLITS:
            if s != split:
                data[f"num_{s}"] = 1
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        dm = build_datamodule(data)
        _DATA_CACHE[key] = DataInfo(
            tuple(float(v) for v in dm.mean),
            tuple(float(v) for v in dm.std),
            tuple(dm.class_names),
            dict(getattr(dm, "splits", None) or {}),
            dict(getattr(dm, "files", None) or {}),
        )
    return _DATA_CACHE[key]


def decode_image(path: str | Path, size: int, resize: int | None = None) -> torch.Tensor:
    """uint8 (3, size, size): the data pipeline's evaluation view of one file (decoded by
    :mod:`attnexp.data.decode`, shorter side resized to ``resize``, centre ``size`` crop)."""
    try:
        img = resize_center_crop(decode_rgb(path), resize or size)
    except CorruptImageError as err:
        raise ConfigError(str(err)) from err
    top = (img.shape[-2] - size) // 2
    left = (img.shape[-1] - size) // 2
    return img[:, top : top + size, left : left + size]


def _eval_resize(cfg: DictConfig, size: int) -> int:
    data = cfg.data
    if data.get("resize_size"):
        return int(data.resize_size)
    return round(size / 0.875) if data.get("recipe") == "imagenet" else size


def _list_folder(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """Images of ``<folder>/<class>/...`` (the data package's listing; labels = sorted class
    index) or, without class folders, the images directly in ``folder`` (labels -1)."""
    if any(d.is_dir() and not d.name.startswith(".") for d in folder.iterdir()):
        files = list_images(folder)
        return list(files.paths), list(files.labels), list(files.classes)
    paths = sorted(
        str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise ConfigError(f"no images in {folder} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths, [-1] * len(paths), []


def pick_indices(labels: torch.Tensor, n: int, pick: str = "balanced", seed: int = 0) -> list[int]:
    """``n`` indices: ``first``, ``random`` (seeded) or ``balanced`` (round-robin over classes)."""
    total = int(labels.numel())
    n = min(n, total)
    if pick == "first":
        return list(range(n))
    if pick == "random":
        g = torch.Generator().manual_seed(seed)
        return sorted(torch.randperm(total, generator=g)[:n].tolist())
    if pick != "balanced":
        raise ConfigError(f"pick={pick!r}: expected balanced, first or random")
    per_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        per_class.setdefault(int(y), []).append(i)
    queues = [per_class[c] for c in sorted(per_class)]
    out: list[int] = []
    depth = 0
    while len(out) < n:
        for q in queues:
            if depth < len(q) and len(out) < n:
                out.append(q[depth])
        depth += 1
    return out


def load_images(
    spec: str | Path, run: LoadedModel, n: int = 16, pick: str = "balanced", seed: int = 0
) -> ImageBatch:
    """Images from a split of the run's own data config (``train``/``val``/``test``) or a
    folder (``<class>/<image>`` layout, or images directly in it), at the run's image size."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    spec_s = str(spec)
    size = run.image_size
    if spec_s in SPLITS:
        info = data_info(run.cfg, spec_s)
        source = f"{run.cfg.data.name}:{spec_s}"
        if spec_s in info.splits:
            images, labels = info.splits[spec_s]
            idx = pick_indices(labels.cpu(), n, pick, seed)
            ys = [int(labels[i]) for i in idx]
            return ImageBatch(images[idx].cpu(), ys, [info.class_names[y] for y in ys], source)
        files = info.files.get(spec_s) or (info.files.get("test") if spec_s == "val" else None)
        if files is None:
            raise ConfigError(
                f"the data of {run.run_dir} has no {spec_s!r} split; it has {sorted(info.splits or info.files)}"
            )
        idx = pick_indices(torch.tensor(list(files.labels)), n, pick, seed)
        resize = _eval_resize(run.cfg, size)
        images = torch.stack([decode_image(files.paths[i], size, resize) for i in idx])
        ys = [int(files.labels[i]) for i in idx]
        return ImageBatch(
            images,
            ys,
            [info.class_names[y] for y in ys],
            source,
        )

    folder = Path(spec_s).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"images={spec_s!r} is neither a split ({', '.join(SPLITS)}) of the run's data nor a folder"
        )
    paths, labels, classes = _list_folder(folder)
    idx = (
        pick_indices(torch.tensor(labels), n, pick, seed)
        if classes
        else list(range(min(n, len(paths))))
    )
    resize = _eval_resize(run.cfg, size)
    images = torch.stack([decode_image(paths[i], size, resize) for i in idx])
    names = [classes[labels[i]] if classes else Path(paths[i]).name for i in idx]
    run_classes = data_info(run.cfg).class_names if classes else ()
    ys = [run_classes.index(nm) if nm in run_classes else None for nm in names]
    return ImageBatch(images, ys, names, str(folder))


def to_input(images: torch.Tensor, info: DataInfo, size: int | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> normalised float input, resized to ``size`` when given."""
    x = images.float() / 255.0
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std
