"""The configured augmentation reaches the training loader, through the config.

For each data path (CIFAR batches: in memory; an image folder in memory; an image folder
streamed by a DataLoader) the config is composed as attnexp-train composes it, the
datamodule is built as ``attnexp.run`` builds it, and one epoch of the training loader is
compared with the images on disk:

* ``pad=0 flip=false cutout=0``: every training image is its normalised original;
* ``flip=true``: every image is its original or its mirror, and both occur;
* ``pad=4``: every image is its original shifted by at most 4 pixels with zero (black)
  padding, and some are shifted;
* ``cutout=8``: every image is its original except one square of at most 8 x 8 pixels,
  the same in all channels, set to exactly 0 *after* normalisation (0 is the dataset mean,
  as documented in conf/data and DeVries & Taylor); before normalisation the square would
  read ``-mean/std``.

Evaluation loaders never augment.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnexp.compose import compose_config
from attnexp.run import builders_datamodule

N, SIZE = 40, 32


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # values in 1..255: a zero-padded or cut-out pixel cannot be mistaken for image content
    return rng.integers(1, 256, (N, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 3, N)


def _write_cifar(root: Path) -> Path:
    images, labels = _images()
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = images.transpose(0, 3, 1, 2).reshape(N, -1)  # CIFAR rows: R plane, G, B
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)]):
        part = slice(i * N // 5, (i + 1) * N // 5)
        batch = {"data": data[part], "labels": labels[part].tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    test = {"data": data[:10], "labels": labels[:10].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def _write_folder(root: Path) -> Path:
    images, labels = _images()
    for split, idx in (("train", range(N)), ("test", range(10))):
        for i in idx:
            d = root / split / f"class{labels[i]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(d / f"{i:03d}.png")  # PNG: lossless
    return root


SOURCES = {
    "cifar10-in-memory": (
        _write_cifar,
        lambda root: ["data=cifar10", f"data.root={root}", "data.download=false"],
    ),
    "folder-in-memory": (
        _write_folder,
        lambda root: [
            "data=imagefolder",
            f"data.root={root}",
            "data.num_classes=3",
            "data.in_memory=true",
        ],  # fmt: skip
    ),
    "folder-streaming": (
        _write_folder,
        lambda root: [
            "data=imagefolder",
            f"data.root={root}",
            "data.num_classes=3",
            "data.in_memory=false",
            "data.num_workers=0",
        ],
    ),
}


def _epoch(overrides: list[str], tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor, object]:
    cfg = compose_config(
        [*overrides, "data.batch_size=16", "trainer.accelerator=cpu"], tmp_path / "run"
    )
    dm = builders_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    x = torch.cat([b[0] for b in batches])
    # every eval image is its normalised original: no augmentation outside training
    ev = torch.cat([b[0] for b in dm.val_dataloader()])
    return x, ev, dm


def _originals(dm: object) -> torch.Tensor:
    """The training images as stored (uint8, N x 3 x H x W), in file/batch order."""
    images, _ = _images()
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _normalise(u8: torch.Tensor, dm: object) -> torch.Tensor:
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    return (u8.float() / 255 - mean) / std


def _match(x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each image of x: index of an exactly (float tolerance) equal candidate, or -1."""
    flat = candidates.flatten(1)
    out = []
    for img in x.flatten(1):  # one image at a time: candidates may be thousands
        best = (flat - img).abs().amax(-1).min(0)
        out.append(int(best.indices) if best.values < 1e-4 else -1)
    return torch.tensor(out)


@pytest.fixture(params=list(SOURCES))
def source(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    write, overrides = SOURCES[request.param]
    return overrides(write(tmp_path / "data"))


def test_no_augmentation_gives_the_originals(source: list[str], tmp_path: Path) -> None:
    x, ev, dm = _epoch([*source, "data.pad=0", "data.flip=false", "data.cutout=0"], tmp_path)
    originals = _normalise(_originals(dm), dm)
    assert x.shape == (N, 3, SIZE, SIZE)
    matched = _match(x, originals)
    assert (matched >= 0).all() and len(set(matched.tolist())) == N  # each image once


def test_flip_reaches_the_training_loader(source: list[str], tmp_path: Path) -> None:
    x, ev, dm = _epoch([*source, "data.pad=0", "data.flip=true", "data.cutout=0"], tmp_path)
    originals = _normalise(_originals(dm), dm)
    plain, mirrored = _match(x, originals), _match(x, originals.flip(-1))
    assert ((plain >= 0) | (mirrored >= 0)).all(), "an image is neither original nor mirrored"
    n_flipped = int((mirrored >= 0).sum())
    assert 0 < n_flipped < N, f"{n_flipped}/{N} mirrored: flip p=0.5 is not applied"
    assert (_match(ev, originals) >= 0).all()  # evaluation: never flipped


def test_pad_crop_reaches_the_training_loader(source: list[str], tmp_path: Path) -> None:
    x, _, dm = _epoch([*source, "data.pad=4", "data.flip=false", "data.cutout=0"], tmp_path)
    u8 = _originals(dm)
    padded = torch.nn.functional.pad(u8, (4, 4, 4, 4))  # zeros: black
    shifts = [(dy, dx) for dy in range(9) for dx in range(9)]
    crops = torch.stack([padded[:, :, dy : dy + SIZE, dx : dx + SIZE] for dy, dx in shifts], 1)
    candidates = _normalise(crops.flatten(0, 1), dm)  # (N * 81, 3, H, W)
    matched = _match(x, candidates)
    assert (matched >= 0).all(), "an image is not a pad-4 crop of an original"
    offsets = [shifts[int(i) % len(shifts)] for i in matched]
    assert sum(o != (4, 4) for o in offsets) > N // 2, "crops are (almost) never shifted"


def test_cutout_reaches_the_training_loader_after_normalisation(
    source: list[str], tmp_path: Path
) -> None:
    x, ev, dm = _epoch([*source, "data.pad=0", "data.flip=false", "data.cutout=8"], tmp_path)
    originals = _normalise(_originals(dm), dm)
    # the original of each image: the one that agrees with it outside any 8x8 square
    dist = (x.flatten(1)[:, None, :] - originals.flatten(1)[None, :, :]).abs() > 1e-4
    idx = dist.sum(-1).argmin(1)
    cut = 0
    for img, i in zip(x, idx):
        changed = (img - originals[i]).abs() > 1e-4  # (3, H, W)
        if not changed.any():
            continue  # the square may cover pixels that already were 0 (rare) - or none
        assert torch.equal(changed[0], changed[1]) and torch.equal(changed[0], changed[2])
        rows, cols = changed[0].any(1).nonzero(), changed[0].any(0).nonzero()
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert height <= 8 and width <= 8, f"changed region {height}x{width} > cutout 8"
        # zero after normalisation (the dataset mean), not the normalised black pixel
        assert (img[changed] == 0).all(), "cutout pixels are not 0 after normalisation"
        cut += 1
    assert cut > N // 2, f"only {cut}/{N} training images have a cutout square"
    assert (_match(ev, originals) >= 0).all()  # evaluation: no cutout
