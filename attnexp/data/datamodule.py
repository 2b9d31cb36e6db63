"""A LightningDataModule over in-memory uint8 splits (synthetic, CIFAR, small folders)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from attnexp.data.memory import BatchAugment, InMemoryLoader


class InMemoryDataModule(L.LightningDataModule):
    """Holds train/val/test as uint8 tensors; loaders move them to the trainer's device."""

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
    ) -> None:
        super().__init__()
        self.splits = splits
        self.num_classes = num_classes
        self.image_size = int(splits["train"][0].shape[-1])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = augment
        self.seed = seed
        self.name = name
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        self._loaders: dict[str, InMemoryLoader] = {}

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str) -> InMemoryLoader:
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no {split!r} split; it has {sorted(self.splits)}")
        if split not in self._loaders:
            images, labels = self.splits[split]
            train = split == "train"
            self._loaders[split] = InMemoryLoader(
                images,
                labels,
                batch_size=self.batch_size if train else self.eval_batch_size,
                mean=self.mean,
                std=self.std,
                shuffle=train,
                drop_last=False,
                augment=self.augment if train else BatchAugment(),
                seed=self.seed,
            )
        return self._loaders[split].to(self._device())

    def train_dataloader(self) -> InMemoryLoader:
        loader = self._loader("train")
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            loader.set_epoch(trainer.current_epoch)
        return loader

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val")

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test")

    def state_dict(self) -> dict:
        return {}
