"""A LightningDataModule over in-memory uint8 splits (synthetic, CIFAR, small folders), and
the evaluation sampler that shards a split over DDP ranks without padding.

Under DDP each rank reads its own shard: training shards are cut to equal length (every rank
runs the same number of steps), evaluation shards cover every image exactly once (a
``DistributedSampler`` would pad the last batch with repeated images and bias the error).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DistributedSampler

from attnexp.data.memory import BatchAugment, InMemoryLoader, shard_size, shard_slice


class ExactShardSampler(DistributedSampler):
    """Evaluation sampler for DDP: rank r reads indices r, r+N, r+2N, ... of the split, so the
    ranks together read every index exactly once (no padding, no dropped tail).

    A ``DistributedSampler`` subclass so Lightning leaves it in place instead of inserting its
    own (padding) one. Shards differ in length by at most one: fine for evaluation, where no
    collective runs per batch and the metrics sum their counts over ranks at the end.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.size = size
        self.num_samples = shard_size(size, num_replicas, rank)
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size)[shard_slice(self.size, self.num_replicas, self.rank)])

    def __len__(self) -> int:
        return self.num_samples


#: Where the uint8 splits live while training: on the trainer's device (no host-to-device
#: copies at all) or in host memory (each batch copied; for data larger than GPU memory).
STORAGE_CHOICES = ("device", "cpu")


class InMemoryDataModule(L.LightningDataModule):
    """Holds train/val/test as uint8 tensors (``splits``); loaders yield normalised floats.

    With ``storage="device"`` the splits are copied once to the trainer's root device when
    a loader is first requested (splits that share tensors, e.g. val = test, share the
    copy). Under DDP every rank holds the data and reads its own shard of each epoch.
    """

    def __init__(
        self,
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
        num_classes: int,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchAugment,
        eval_batch_size: int | None = None,
        seed: int = 0,
        name: str = "in_memory",
        class_names: Sequence[str] | None = None,
        storage: str = "device",
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if storage not in STORAGE_CHOICES:
            raise ValueError(f"storage must be one of {STORAGE_CHOICES}, got {storage!r}")
        self.splits = splits
        self.num_classes = num_classes
        self.image_size = int(splits["train"][0].shape[-1])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.seed = seed
        self.name = name
        self.class_names = (
            tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        )
        self.storage = storage
        self.drop_last = drop_last
        self.skipped_files: list[str] = []
        self._loaders: dict[str, InMemoryLoader] = {}
        self._stored: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def split_sizes(self) -> dict[str, int]:
        return {split: int(labels.numel()) for split, (_, labels) in self.splits.items()}

    def _placement(self) -> tuple[torch.device, int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.device("cpu"), 1, 0
        return trainer.strategy.root_device, int(trainer.world_size), int(trainer.global_rank)

    def _store(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        target = device if self.storage == "device" else torch.device("cpu")
        if tensor.device == target:
            return tensor
        key = (id(tensor), str(target))
        if key not in self._stored:
            self._stored[key] = tensor.to(target)
        return self._stored[key]

    def _loader(self, split: str) -> InMemoryLoader:
        if split not in self.splits:
            raise KeyError(
                f"dataset {self.name!r} has no {split!r} split; it has {sorted(self.splits)}"
            )
        device, world, rank = self._placement()
        current = self._loaders.get(split)
        if current is None or current.device != device or current.num_replicas != world:
            images, labels = self.splits[split]
            train = split == "train"
            self._loaders[split] = InMemoryLoader(
                self._store(images, device),
                self._store(labels, device),
                batch_size=self.batch_size if train else self.eval_batch_size,
                mean=self.mean,
                std=self.std,
                shuffle=train,
                drop_last=self.drop_last and train,
                augment=self.augment if train else BatchAugment(),
                seed=self.seed,
                device=device,
                num_replicas=world,
                rank=rank,
                shard="even" if train else "exact",
            )
        return self._loaders[split]

    def train_dataloader(self) -> InMemoryLoader:
        loader = self._loader("train")
        trainer = getattr(self, "trainer", None)
        if trainer is not None:  # Lightning also calls loader.sampler.set_epoch per epoch
            loader.set_epoch(trainer.current_epoch)
        return loader

    def train_batches(
        self, epoch: int, count: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``count`` training batches of ``epoch`` (this rank's shard), drawn from a
        private copy of the loader: the training loader's epoch and position stay untouched
        (precise BN reads extra training batches this way)."""
        batches = self._loader("train").detached(epoch)
        return itertools.islice(batches, count) if count is not None else iter(batches)

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val")

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test")

    def teardown(self, stage: str) -> None:
        """Free device copies once a fit/test is over (a later stage copies again)."""
        self._loaders.clear()
        self._stored.clear()
