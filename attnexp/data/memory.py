"""The fast in-memory path: whole dataset as one uint8 tensor on the training device.

Small-image ablations spend most of their time in per-image Python (PIL decode, per-sample
transforms, collation) in typical research code. Here the data is decoded once, held on
the device, and augmented a batch at a time with tensor ops: random crop after zero
padding, horizontal flip and cutout, then per-channel normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchAugment:
    """Batched augmentation settings (all done on the data's device)."""

    pad: int = 0  # random-crop padding in pixels (4 for the CIFAR recipe)
    flip: bool = False  # horizontal flip with probability 0.5
    cutout: int = 0  # side of the square zeroed after normalisation (0 = off)

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip or self.cutout > 0


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image.

    One gather over a padded batch: offsets are drawn per image uniformly in [0, 2*pad],
    as torchvision's ``RandomCrop(size, padding=pad)``.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    idx_rows = rows[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, idx_rows)
    idx_cols = cols[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, idx_cols)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image horizontally with probability 0.5."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square (clipped at borders) centred at a random pixel."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n,), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = ((ys - cy[:, None]).abs() <= size // 2) if size % 2 else ((ys - cy[:, None]) >= -(size // 2)) & ((ys - cy[:, None]) < size // 2)
    in_x = ((xs - cx[:, None]).abs() <= size // 2) if size % 2 else ((xs - cx[:, None]) >= -(size // 2)) & ((xs - cx[:, None]) < size // 2)
    mask = in_y[:, :, None] & in_x[:, None, :]
    return x.masked_fill(mask[:, None], 0.0)


class InMemoryLoader:
    """Iterable of normalised float batches from uint8 images held in memory.

    Lightning accepts any iterable with ``__len__`` as a dataloader. The tensors move to
    ``device`` on first iteration (the trainer's device is only known then).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        augment: BatchAugment | None = None,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment or BatchAugment()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.seed = seed
        self.epoch = 0
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> InMemoryLoader:
        """Move the stored data (once) to ``device``."""
        device = torch.device(device)
        if device != self.images.device:
            self.images = self.images.to(device)
            self.labels = self.labels.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.device = device
        return self

    def __len__(self) -> int:
        n = self.labels.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make shuffling and augmentation depend on (seed, epoch) only: resumable runs."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.labels.numel()
        gen = torch.Generator(device=self.images.device).manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(n, device=self.images.device, generator=gen) if self.shuffle else None
        self.epoch += 1
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            sel = order[idx] if order is not None else idx
            x = self.images[sel].float().div_(255.0)
            y = self.labels[sel]
            if self.augment.pad:
                x = random_crop(x, self.augment.pad, gen)
            if self.augment.flip:
                x = random_flip(x, gen)
            x = (x - self.mean) / self.std
            if self.augment.cutout:
                x = cutout(x, self.augment.cutout, gen)
            yield x, y
