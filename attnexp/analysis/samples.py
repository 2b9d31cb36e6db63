"""A fixed, class-balanced image sample of the validation split, for attention-map pictures.

"The first validation batch" of a class-sorted folder split is eight airplanes; and a sample
that depends on the loader (batch size, shuffling, the module being trained) cannot be
compared across runs. This sample is drawn from the *whole* validation split with the run's
seed only: classes in turn (round-robin over the sorted class ids), images within a class in
a seeded random order. The same seed gives the same images every epoch and in every run of a
sweep, whatever the module, so two runs' pictures can be laid side by side.
"""

from __future__ import annotations

from typing import Any

import torch


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """``n`` indices into ``labels``: one class after another, random within a class."""
    labels = labels.detach().cpu().flatten()
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(int(seed)))
    by_class: dict[int, list[int]] = {}
    for i in order.tolist():
        by_class.setdefault(int(labels[i]), []).append(i)
    classes = sorted(by_class)
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(by_class[c]) for c in classes):
        for c in classes:
            if depth < len(by_class[c]) and len(picked) < n:
                picked.append(by_class[c][depth])
        depth += 1
    return picked


def _normalise(images: torch.Tensor, datamodule: Any) -> torch.Tensor:
    mean = torch.tensor(datamodule.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(datamodule.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float().cpu() / 255.0 - mean) / std


def validation_sample(datamodule: Any, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images (n, C, H, W) and labels of the fixed sample (CPU tensors).

    Works with the in-memory datamodules (``splits``) and the streaming one (``datasets``,
    decoded with the eval transform); raises ``TypeError`` for anything else.
    """
    splits = getattr(datamodule, "splits", None)
    if splits is not None and "val" in splits:
        images, labels = splits["val"]
        index = torch.tensor(balanced_indices(labels, n, seed), dtype=torch.long)
        return _normalise(images[index.to(images.device)], datamodule), labels.cpu()[index]
    datasets = getattr(datamodule, "datasets", None)
    if datasets is not None and "val" in datasets:
        dataset = datasets["val"]
        picked = [dataset[i] for i in balanced_indices(dataset.labels, n, seed)]
        images = torch.stack([img for img, _ in picked])
        return _normalise(images, datamodule), torch.tensor([y for _, y in picked])
    raise TypeError(f"{type(datamodule).__name__} has no validation split to sample from")
