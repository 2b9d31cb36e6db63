"""The fast in-memory path: a whole split as one uint8 tensor, augmented a batch at a time.

Small-image ablations spend most of their time in per-image Python (PIL decode, per-sample
transforms, collation) in typical research code. Here the data is decoded once, held on
the training device, and each batch is built with a handful of tensor ops and no Python
loop over images: one gather does the padded random crop *and* the horizontal flip on
uint8 data, one fused multiply-subtract converts to normalised float, and cutout is a
broadcast mask.

Randomness comes only from (seed, epoch, batch index): the shuffle from (seed, epoch), the
augmentation of batch b from (seed, epoch, b, rank). So an epoch is the same whether or not the
run was interrupted, each rank of a DDP run has its own augmentation stream fixed by the seed, and the loader resumes mid-epoch exactly from its ``state_dict``
(Lightning saves it in checkpoints because the loader implements the ``state_dict`` /
``load_state_dict`` protocol). Streams differ between CPU and CUDA generators: a run is
reproducible on the same kind of device.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnexp.data.augment import ImageAugment
from attnexp.runtime import torch_threads


@dataclass(frozen=True)
class BatchAugment:
    """Batched augmentation settings (all done on the data's device)."""

    pad: int = 0  # random-crop padding in pixels (4 for the CIFAR recipe); 0 = no crop
    flip: bool = False  # horizontal flip with probability 0.5
    cutout: int = 0  # side of the square zeroed after normalisation (0 = off)
    #: RandAugment / TrivialAugmentWide / random erasing, batched (attnexp.data.augment).
    extra: ImageAugment | None = None

    def __post_init__(self) -> None:
        if self.pad < 0 or self.cutout < 0:
            raise ValueError(
                f"pad and cutout must be >= 0, got pad={self.pad}, cutout={self.cutout}"
            )

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip or self.cutout > 0 or self.extra is not None


def random_crop_flip(
    x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back at a random offset and flip with probability 0.5.

    Matches torchvision's ``RandomCrop(size, padding=pad)`` followed by
    ``RandomHorizontalFlip()``: offsets uniform in [0, 2*pad] on each axis, independently
    per image, padding with zeros (black). Works on any dtype; one gather for both ops.
    """
    n, c, h, w = x.shape
    if n == 0 or (pad == 0 and not flip):
        return x
    dev = x.device
    src = F.pad(x, (pad, pad, pad, pad)) if pad else x
    width = w + 2 * pad
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if pad:
        rows = rows + torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
        cols = cols + torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return src.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square centred at a uniformly random pixel, in place.

    As DeVries & Taylor (2017): the centre may lie anywhere in the image and the square is
    clipped at the borders; applied after normalisation, so zero is the dataset mean.
    Rows covered: [cy - size//2, cy - size//2 + size).
    """
    n, _, h, w = x.shape
    if n == 0 or size <= 0:
        return x
    dev = x.device
    cy = torch.randint(0, h, (n, 1), device=dev, generator=generator)
    cx = torch.randint(0, w, (n, 1), device=dev, generator=generator)
    dy = torch.arange(h, device=dev)[None, :] - (cy - size // 2)
    dx = torch.arange(w, device=dev)[None, :] - (cx - size // 2)
    in_y = (dy >= 0) & (dy < size)
    in_x = (dx >= 0) & (dx < size)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]
    return x.masked_fill_(mask, 0.0)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Build CPU batches on one intra-op thread, then restore the model's thread count.

    The ops are small (a few MB); on a CPU shared with other processes two OpenMP threads
    made them ~40x slower (barrier waits on a descheduled thread: 2,300 vs 90,000 img/s on
    the 2-core dev machine), while one thread costs ~1 ms per batch of 128.
    """
    if device.type != "cpu":
        yield
        return
    with torch_threads(1):
        yield


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (seed, epoch, batch): no nearby collisions."""
    words = [int(p) & 0xFFFFFFFF for p in parts]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return int(state) >> 1


#: How an epoch is split over DDP ranks (see :class:`InMemoryLoader`).
SHARD_MODES = ("even", "exact")


def shard_slice(n: int, replicas: int, rank: int, mode: str = "exact") -> slice:
    """The positions of an epoch's order of ``n`` items that ``rank`` of ``replicas`` takes:
    every ``replicas``-th from ``rank`` on, never padded; ``even`` first cuts the order to
    a multiple of ``replicas`` so all ranks get the same count."""
    end = (n // replicas) * replicas if mode == "even" else n
    return slice(rank, end, replicas)


def shard_size(n: int, replicas: int, rank: int, mode: str = "exact") -> int:
    """How many of ``n`` items ``rank`` gets under :func:`shard_slice`."""
    return len(range(n)[shard_slice(n, replicas, rank, mode)])


class _EpochSetter:
    """Found by Lightning as ``loader.sampler``: its fit loop calls ``set_epoch`` on it."""

    def __init__(self, loader: InMemoryLoader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class InMemoryLoader:
    """Iterable of ``(float images normalised, int64 labels)`` batches from uint8 tensors.

    Lightning accepts any iterable with ``__len__`` as a dataloader. ``images`` may live on
    the CPU while ``device`` is a GPU (each uint8 batch is copied before augmentation), or
    on ``device`` itself (the default of :class:`InMemoryDataModule`: no copies at all).
    With ``num_replicas > 1`` (DDP) each rank takes every ``num_replicas``-th index of the
    epoch's shared permutation, never padding (a padded shard repeats images):

    * ``shard="even"`` (training): the epoch is cut to a multiple of ``num_replicas`` first,
      so every rank runs the same number of steps (DDP needs that); the < N images left
      over differ from epoch to epoch because the order is reshuffled.
    * ``shard="exact"`` (evaluation): every image exactly once over all ranks; the shards
      differ by at most one image, so an error computed from the summed counts is the
      error over exactly the split, as in one process.
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
        device: torch.device | str | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        shard: str = "even",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if shard not in SHARD_MODES:
            raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard!r}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment or BatchAugment()
        self.seed = int(seed)
        self.num_replicas, self.rank, self.shard = num_replicas, rank, shard
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std == x * scale - shift, fused into one pass over the batch.
        self._scale = 1.0 / (255.0 * std_t)
        self._offset = -mean_t / std_t
        self.device = torch.device(device) if device is not None else images.device
        self._move_stats()
        self.epoch = 0
        self._current_epoch = 0
        self._yielded = 0
        self._resume: tuple[int, int] | None = None
        if shuffle:  # only then: Lightning reads a `sampler` of eval loaders as "shuffled"
            self.sampler = _EpochSetter(self)

    def _move_stats(self) -> None:
        self._scale, self._offset = self._scale.to(self.device), self._offset.to(self.device)

    def to(self, device: torch.device | str) -> InMemoryLoader:
        """Hold the data on ``device`` and produce batches there."""
        self.device = torch.device(device)
        self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        self._move_stats()
        return self

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return shard_size(self.labels.numel(), self.num_replicas, self.rank, self.shard)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration is epoch ``epoch``: order and augmentation follow (seed, epoch)."""
        self.epoch = int(epoch)

    def detached(self, epoch: int) -> InMemoryLoader:
        """A loader over the same (shared) tensors whose next iteration is ``epoch`` and whose
        position is its own: iterating it leaves this loader's epoch and resume state intact
        (precise BN draws extra training batches this way)."""
        other = copy.copy(self)
        other._resume = None
        other.set_epoch(epoch)
        return other

    def state_dict(self) -> dict[str, int]:
        """Where this epoch stands; saved by Lightning in checkpoints for mid-epoch resume."""
        return {"epoch": self._current_epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue epoch ``state['epoch']`` after its first ``state['batches']`` batches."""
        self.epoch = int(state["epoch"])
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def _order(self, epoch: int) -> torch.Tensor:
        n, store = self.labels.numel(), self.labels.device
        if self.shuffle:
            gen = torch.Generator(device=store).manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(n, device=store, generator=gen)
        else:
            order = torch.arange(n, device=store)
        return order[shard_slice(n, self.num_replicas, self.rank, self.shard)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: nothing runs until the first next(), i.e. after Lightning's set_epoch.
        epoch = self.epoch
        self.epoch += 1  # plain `for epoch ...: for batch in loader` loops advance by themselves
        start = 0
        if self._resume is not None:
            resume_epoch, done = self._resume
            self._resume = None
            if resume_epoch == epoch:
                start = done
        self._current_epoch, self._yielded = epoch, start
        order = self._order(epoch)
        gen = torch.Generator(device=self.device) if self.augment.active else None
        for b in range(start, len(self)):
            with _one_cpu_thread(self.device):
                out, y = self._batch(
                    order[b * self.batch_size : (b + 1) * self.batch_size], gen, epoch, b
                )
            self._yielded = b + 1
            yield out, y

    def _batch(
        self, index: torch.Tensor, gen: torch.Generator | None, epoch: int, b: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.images[index], self.labels[index]
        if self.images.device != self.device:
            pin = self.device.type == "cuda"
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=pin), y.to(self.device, non_blocking=pin)
        aug = self.augment
        if gen is not None:
            gen.manual_seed(mix_seed(self.seed, epoch, b, self.rank))
            x = random_crop_flip(x, aug.pad, aug.flip, gen)
        host = None
        if gen is not None and aug.extra is not None:  # ops drawn on the host: no device sync
            host = torch.Generator().manual_seed(mix_seed(self.seed, epoch, b, self.rank, 1))
            x = aug.extra.on_uint8(x, host)
        out = torch.addcmul(self._offset, x.to(torch.float32), self._scale)
        if gen is not None and aug.cutout:
            cutout(out, aug.cutout, gen)
        if host is not None:
            out = aug.extra.on_float(out, host)
        return out, y
