"""The streaming path: decode per sample in DataLoader workers (ImageNet, large folders).

Each worker decodes a file (torchvision.io, PIL fallback; see ``attnexp.data.decode``),
converts it to RGB and applies the per-sample geometric transforms on uint8 tensors; the
collate function then normalises the whole batch at once (and applies cutout), so workers
hand over ready float batches and no per-image float work is done.

Recipes (``data.recipe``):

* ``imagenet`` (the standard ResNet recipe): train = RandomResizedCrop(image_size, scale
  ``rrc_scale``) + horizontal flip; eval = resize the shorter side to ``resize_size``
  (256 for 224) + centre crop ``image_size``.
* ``cifar`` (small images, same as the in-memory path): every image resized (shorter side)
  and centre-cropped to ``image_size``, then for training zero-pad by ``pad`` + random crop
  + flip (+ cutout).

Corrupt files are found lazily, when a worker first reads them (scanning all of ImageNet
up front would take longer than an epoch): without ``skip_corrupt`` the loader raises a
ConfigError naming the file; with it, the next readable file of the split is used instead,
and the file is recorded in a flag tensor in shared memory, so the main process can report
``skipped_files`` whichever worker found it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from attnexp.data.augment import erasing_transform, policy_transforms
from attnexp.data.decode import CorruptImageError, decode_rgb, resize_center_crop
from attnexp.data.listing import FileList
from attnexp.data.memory import BatchAugment, cutout, mix_seed
from attnexp.errors import ConfigError

log = logging.getLogger(__name__)


class ResizeCenterCrop:
    """Shorter side to ``size``, centre square: how small images are brought to one size."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return resize_center_crop(img, self.size)


def build_transforms(
    recipe: str,
    image_size: int,
    augment: BatchAugment,
    resize_size: int,
    rrc_scale: tuple[float, float] = (0.08, 1.0),
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """Per-sample (train, eval) transforms on uint8 (3, H, W) tensors."""
    flip = [v2.RandomHorizontalFlip()] if augment.flip else []
    flip += policy_transforms(augment.extra)  # RandAugment / TrivialAugmentWide (uint8)
    if recipe == "imagenet":
        train = v2.Compose(
            [v2.RandomResizedCrop(image_size, scale=rrc_scale, antialias=True), *flip]
        )
        evaluate = v2.Compose([v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)])
        return train, evaluate
    crop = [v2.RandomCrop(image_size, padding=augment.pad)] if augment.pad else []
    return v2.Compose([ResizeCenterCrop(image_size), *crop, *flip]), ResizeCenterCrop(image_size)


class FolderDataset(Dataset):
    """Files of one split, decoded on access; corrupt files raise or are substituted."""

    def __init__(
        self,
        files: FileList,
        transform: Callable[[torch.Tensor], torch.Tensor],
        skip_corrupt: bool = False,
    ) -> None:
        self.files = files
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.labels = torch.tensor(files.labels, dtype=torch.int64)
        # One byte per file, in shared memory: workers mark the corrupt ones they meet.
        self.corrupt = torch.zeros(len(files), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        for step in range(n):
            j = (index + step) % n
            if self.corrupt[j]:  # already known bad (only ever set with skip_corrupt)
                continue
            try:
                img = decode_rgb(self.files.paths[j])
            except CorruptImageError as err:
                if not self.skip_corrupt:
                    raise ConfigError(
                        f"{err}. Remove or replace the file, or set data.skip_corrupt=true to skip "
                        f"unreadable images (they are counted and reported)"
                    ) from err
                self.corrupt[j] = 1
                continue
            return self.transform(img), int(self.files.labels[j])
        raise ConfigError(f"no readable images in {self.files.root}")

    @property
    def skipped_files(self) -> list[str]:
        return [self.files.paths[i] for i in self.corrupt.nonzero().flatten().tolist()]


class NormalizeCollate:
    """Stack uint8 samples and normalise the batch in one op (and cut out, if asked)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        cutout_size: int = 0,
        erasing: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.erasing = erasing  # v2.RandomErasing, per image after normalising
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.offset = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self.cutout_size = cutout_size

    def __call__(
        self, samples: list[tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([img for img, _ in samples])
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        out = torch.addcmul(self.offset, images.to(torch.float32), self.scale)
        if self.cutout_size:
            cutout(out, self.cutout_size)
        if self.erasing is not None:
            out = torch.stack([self.erasing(img) for img in out])
        return out, labels


class EpochSampler(Sampler[int]):
    """Shuffled order from (seed, epoch) only, so a resumed run sees the same epochs.

    Lightning calls ``set_epoch`` before every epoch (and wraps this sampler for DDP).
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=gen).tolist())


def estimate_stats(
    files: FileList, image_size: int, seed: int = 0, count: int = 1000
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] from a fixed random sample of ``count`` images."""
    from attnexp.data.listing import channel_stats

    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[
        :count
    ].tolist()
    images = []
    for i in pick:
        try:
            images.append(resize_center_crop(decode_rgb(files.paths[i]), image_size))
        except CorruptImageError:
            continue
    if not images:
        raise ConfigError(f"no readable images among {len(pick)} sampled from {files.root}")
    return channel_stats(torch.stack(images))


def eval_sampler(datamodule: L.LightningDataModule, size: int) -> Sampler[int] | None:
    """None (sequential) in one process; an :class:`ExactShardSampler` under DDP."""
    from attnexp.data.datamodule import ExactShardSampler

    trainer = getattr(datamodule, "trainer", None)
    if trainer is None or trainer.world_size <= 1:
        return None
    return ExactShardSampler(size, trainer.world_size, trainer.global_rank)


class StreamingDataModule(L.LightningDataModule):
    """Train/val/test file lists read by DataLoader workers (pinned memory, persistent)."""

    def __init__(
        self,
        files: dict[str, FileList],
        num_classes: int,
        image_size: int,
        recipe: str,
        augment: BatchAugment,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        prefetch_factor: int = 2,
        resize_size: int | None = None,
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        skip_corrupt: bool = False,
        seed: int = 0,
        name: str = "imagefolder",
    ) -> None:
        super().__init__()
        files = dict(files)
        files.setdefault("val", files["test"])  # validate on test unless given (documented)
        self.files = files
        self.num_classes = num_classes
        self.image_size = image_size
        self.recipe = recipe
        self.name = name
        self.class_names = tuple(files["train"].classes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.seed = seed
        self.skip_corrupt = skip_corrupt
        train_tf, eval_tf = build_transforms(
            recipe, image_size, augment, resize_size or round(image_size / 0.875), rrc_scale
        )
        self.datasets: dict[str, FolderDataset] = {}
        for split, split_files in files.items():
            if split == "val" and split_files is files["test"]:
                continue
            self.datasets[split] = FolderDataset(
                split_files, train_tf if split == "train" else eval_tf, skip_corrupt
            )
        if "val" not in self.datasets:
            self.datasets["val"] = self.datasets["test"]
        self.train_collate = NormalizeCollate(
            self.mean, self.std, augment.cutout, erasing_transform(augment.extra)
        )
        self.eval_collate = NormalizeCollate(self.mean, self.std)
        self._loaders: dict[str, DataLoader] = {}

    @property
    def split_sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.datasets.items()}

    @property
    def skipped_files(self) -> list[str]:
        """Corrupt files met so far (with skip_corrupt); found lazily while iterating."""
        seen: dict[int, FolderDataset] = {id(ds): ds for ds in self.datasets.values()}
        return [path for ds in seen.values() for path in ds.skipped_files]

    def _pin(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def _loader(self, split: str) -> DataLoader:
        if split not in self._loaders:
            train = split == "train"
            dataset = self.datasets[split]
            workers = self.num_workers
            self._loaders[split] = DataLoader(
                dataset,
                batch_size=self.batch_size if train else self.eval_batch_size,
                # eval: sequential; under DDP each image on exactly one rank (no padding)
                sampler=EpochSampler(len(dataset), self.seed)
                if train
                else eval_sampler(self, len(dataset)),
                num_workers=workers,
                collate_fn=self.train_collate if train else self.eval_collate,
                pin_memory=self._pin(),
                persistent_workers=workers > 0,
                prefetch_factor=self.prefetch_factor if workers > 0 else None,
                drop_last=False,
            )
        return self._loaders[split]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def teardown(self, stage: str) -> None:
        skipped = self.skipped_files
        if skipped:
            log.warning(
                "%s: skipped %d corrupt images so far (data.skip_corrupt=true), e.g. %s",
                self.name,
                len(skipped),
                skipped[:5],
            )
