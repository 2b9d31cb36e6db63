"""The in-memory loader: augmentation equal in law to torchvision's, exact per-epoch replay."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchvision.transforms import v2

from attnexp.data.datamodule import InMemoryDataModule
from attnexp.data.memory import BatchAugment, InMemoryLoader, cutout, random_crop_flip

MARK = (10, 5)  # marker pixel (row, col): in view after any 4-pixel shift, flips separable


def marker_image() -> torch.Tensor:
    """A uint8 image whose values are below 250 except one marker pixel of 255."""
    img = torch.randint(
        20, 250, (3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    img[:, MARK[0], MARK[1]] = 255
    return img


def recover(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(oy, ox, flipped) of each crop (N, 3, 32, 32), from where the marker landed."""
    hit = (out[:, 0] == 255).flatten(1)
    assert bool((hit.sum(1) == 1).all()), "marker lost or duplicated"
    pos = hit.float().argmax(1)
    r, c = pos // 32, pos % 32
    flipped = c > 15  # unflipped the marker lands in cols 1..9, flipped in 22..30
    col = torch.where(flipped, 31 - c, c)
    return MARK[0] + 4 - r, MARK[1] + 4 - col, flipped


def test_crop_flip_matches_torchvision_in_distribution() -> None:
    img = marker_image()
    n = 20_000
    ours = random_crop_flip(img.expand(n, -1, -1, -1), 4, True, torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    reference = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    theirs = torch.stack([reference(img) for _ in range(4000)])
    for label, batch, count in (("attnexp", ours, n), ("torchvision", theirs, 4000)):
        oy, ox, flipped = recover(batch)
        for axis in (oy, ox):
            freq = torch.bincount(axis, minlength=9).float() / count
            assert axis.min() >= 0 and axis.max() <= 8, label
            # uniform over 0..8: each bin 1/9 within ~5 standard errors
            assert (freq - 1 / 9).abs().max() < 5 * (1 / 9 * 8 / 9 / count) ** 0.5, (label, freq)
        assert abs(flipped.float().mean() - 0.5) < 5 * (0.25 / count) ** 0.5, label
    # joint law of ours: all 81 offset pairs x 2 flips occur, roughly equally often
    oy, ox, flipped = recover(ours)
    cells = torch.bincount((oy * 9 + ox) * 2 + flipped.long(), minlength=162)
    assert cells.min() > 0.5 * n / 162 and cells.max() < 1.5 * n / 162


def test_crop_flip_content_is_the_shifted_image() -> None:
    img = marker_image()
    out = random_crop_flip(img.expand(500, -1, -1, -1), 4, True, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    oy, ox, flipped = recover(out)
    for k in range(out.shape[0]):
        crop = padded[:, oy[k] : oy[k] + 32, ox[k] : ox[k] + 32]
        expected = crop.flip(-1) if flipped[k] else crop
        assert torch.equal(out[k], expected)


def test_no_pad_no_flip_is_identity_and_flip_only_mirrors() -> None:
    x = torch.randint(0, 255, (8, 3, 6, 7), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, False), x)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(-1)) for o, i in zip(out, x))


@pytest.mark.parametrize("size", [1, 4, 5, 16])
def test_cutout_square_size_and_clipping(size: int) -> None:
    x = torch.ones(4000, 1, 32, 32)
    cutout(x, size, torch.Generator().manual_seed(0))
    zeros = (x == 0).sum((1, 2, 3))
    assert zeros.max() == size * size  # centres far from the border cut a full square
    assert zeros.min() >= ((size + 1) // 2) ** 2  # a corner centre keeps at least a quarter
    rows = (x[:, 0] == 0).any(2)
    assert rows.any(0).all()  # every row is covered by some square: centres uniform


def test_normalisation_matches_reference() -> None:
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    x, y = next(iter(InMemoryLoader(images, torch.arange(10), 10, mean, std)))
    expected = v2.Normalize(mean, std)(images.float() / 255)
    assert torch.allclose(x, expected, atol=1e-5) and torch.equal(y, torch.arange(10))


def _epoch(loader: InMemoryLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


def make_loader(**kw) -> InMemoryLoader:
    images = torch.randint(
        0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    options = {
        "shuffle": True,
        "augment": BatchAugment(pad=2, flip=True, cutout=3),
        "seed": 7,
        **kw,
    }
    return InMemoryLoader(images, torch.arange(50), 16, (0.5,) * 3, (0.25,) * 3, **options)


def test_epochs_depend_on_seed_and_epoch_only() -> None:
    a, b = make_loader(), make_loader()
    a0, a1 = _epoch(a), _epoch(a)  # a bare loop advances the epoch by itself
    b.set_epoch(1)  # Lightning's way: set_epoch before each epoch
    b1 = _epoch(b)
    assert torch.equal(a1[0], b1[0]) and torch.equal(a1[1], b1[1])
    assert not torch.equal(a0[1], a1[1])  # a new order each epoch
    assert sorted(a0[1].tolist()) == list(range(50))  # each sample exactly once
    assert not torch.equal(_epoch(make_loader(seed=8))[1], a0[1])


def test_lightning_finds_set_epoch() -> None:
    loader = make_loader()
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls before every epoch
    assert loader.epoch == 5


def test_mid_epoch_resume_is_exact() -> None:
    full = make_loader()
    full.set_epoch(3)
    expected = list(full)
    first = make_loader()
    first.set_epoch(3)
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    assert state == {"epoch": 3, "batches": 2}
    resumed = make_loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    rest = list(resumed)
    assert len(rest) == len(expected) - 2
    for (x, y), (ex, ey) in zip(rest, expected[2:]):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    # a stale state (checkpoint at the end of epoch 3, resumed in epoch 4) skips nothing
    stale = make_loader()
    stale.load_state_dict(state)
    stale.set_epoch(4)
    assert len(list(stale)) == len(stale)


def test_replicas_partition_an_epoch() -> None:
    """Training shards: equal length, disjoint (the 50 % 3 = 2 left over are dropped, other
    ones each epoch); evaluation shards: every image exactly once, no padding."""
    shards = [make_loader(num_replicas=3, rank=r, augment=None) for r in range(3)]
    labels = [_epoch(s)[1] for s in shards]
    assert {len(lab) for lab in labels} == {16}
    assert len(set(torch.cat(labels).tolist())) == 48  # disjoint
    exact = [make_loader(num_replicas=3, rank=r, shard="exact", shuffle=False) for r in range(3)]
    got = [_epoch(s)[1] for s in exact]
    assert [len(g) for g in got] == [17, 17, 16]
    assert sorted(torch.cat(got).tolist()) == list(range(50))


def test_cpu_storage_gives_the_same_batches() -> None:
    ref = make_loader()
    other = make_loader(device="cpu")
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, other))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        InMemoryLoader(torch.zeros(2, 3, 4, 4), torch.zeros(2), 1, (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError, match="labels"):
        InMemoryLoader(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), 1, (0,) * 3, (1,) * 3
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_placement_and_cpu_storage() -> None:
    on_gpu = make_loader().to("cuda")
    x, y = next(iter(on_gpu))
    assert x.is_cuda and y.is_cuda and on_gpu.images.is_cuda
    staged = make_loader(device="cuda")  # data on the host, batches on the GPU
    x2, y2 = next(iter(staged))
    assert x2.is_cuda and not staged.images.is_cuda and torch.equal(y, y2)


class _Recorder(L.LightningModule):
    """A linear classifier that records a fingerprint of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        self.seen: list[float] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        self.seen.append(
            round(float(x.sum()) + 1000 * float(y.float() @ torch.arange(len(y)).float()), 2)
        )
        return torch.nn.functional.cross_entropy(self.fc(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _datamodule() -> InMemoryDataModule:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (50,), generator=gen)
    splits = {split: (images, labels) for split in ("train", "val", "test")}
    augment = BatchAugment(pad=2, flip=True, cutout=3)
    return InMemoryDataModule(splits, 10, 16, (0.5,) * 3, (0.25,) * 3, augment, seed=3)


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **kw,
    )


def test_lightning_resume_mid_epoch_replays_the_same_batches(tmp_path: Path) -> None:
    full = _Recorder()
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    _trainer(tmp_path, callbacks=[ckpt]).fit(full, datamodule=_datamodule())
    assert len(full.seen) == 8 and len(set(full.seen)) == 8  # 2 epochs x 4 batches, all different
    resumed = _Recorder()
    _trainer(tmp_path).fit(
        resumed, datamodule=_datamodule(), ckpt_path=tmp_path / "ckpt" / "step=3.ckpt"
    )
    assert resumed.seen == full.seen[3:]  # the rest of epoch 0 exactly, then epoch 1
