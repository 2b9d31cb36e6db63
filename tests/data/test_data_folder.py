"""ImageFolder datasets: RGB conversion, decode cache, errors that name the path, both paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import CLASSES, write_image_folder
from PIL import Image

from attnexp.data import build_datamodule
from attnexp.data.datamodule import InMemoryDataModule
from attnexp.data.decode import decode_rgb
from attnexp.data.listing import cache_key, channel_stats, list_images, load_split
from attnexp.data.streaming import StreamingDataModule
from attnexp.errors import ConfigError


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")


def folder_cfg(root: Path, **kw) -> dict:
    return {
        "name": "imagefolder",
        "root": str(root),
        "num_classes": 3,
        "batch_size": 8,
        "num_workers": 0,
        **kw,
    }


def test_modes_are_converted_to_rgb(folder_root: Path) -> None:
    folder = folder_root / "train" / CLASSES[0]
    for name in ("gray.jpg", "palette.png", "cmyk.jpg", "rgba.png"):
        img = decode_rgb(folder / name)
        with Image.open(folder / name) as im:
            reference = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32), name
        assert torch.equal(img, reference), name  # as torchvision's ImageFolder (PIL) loader
    gray = decode_rgb(folder / "gray.jpg")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_sixteen_bit_and_pil_only_formats(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 8, dtype=np.uint16).reshape(8, 64) * 128).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = decode_rgb(tmp_path / "deep.png")
    assert deep.dtype == torch.uint8 and deep.max() > 200  # scaled, not clipped at 255
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "x.bmp")
    assert decode_rgb(tmp_path / "x.bmp").shape == (3, 5, 6)


def test_cache_reused_and_invalidated(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", splits=("train",), special=False)
    cache = tmp_path / "cache"
    files = list_images(root / "train")
    key = cache_key(files, 32)
    first = load_split(files, 32, cache)
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and key in cached[0].name
    # unchanged folder: loaded from the cache (proved by editing the cache file)
    blob = torch.load(cached[0], weights_only=True)
    blob["labels"] = blob["labels"] + 100
    torch.save(blob, cached[0])
    again = load_split(list_images(root / "train"), 32, cache)
    assert torch.equal(again.labels, first.labels + 100)
    assert cache_key(list_images(root / "train"), 32) == key
    assert cache_key(files, 16) != key  # another size is another cache
    # rewriting one file changes the key and the data is decoded again
    target = Path(files.paths[0])
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(
        target, format="PNG" if target.suffix == ".png" else "JPEG"
    )
    os.utime(target, ns=(1, 1))
    new_files = list_images(root / "train")
    assert cache_key(new_files, 32) != key
    fresh = load_split(new_files, 32, cache)
    assert torch.equal(fresh.labels, first.labels)  # decoded, not the edited cache
    assert len(list(cache.glob("*.pt"))) == 2
    # adding a file changes the key too
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / CLASSES[1] / "new.png")
    assert cache_key(list_images(root / "train"), 32) not in {key, cache_key(new_files, 32)}


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere.*data.root"):
        build_datamodule(folder_cfg(missing))
    with pytest.raises(ConfigError, match="ImageNet not found.*nowhere"):
        build_datamodule({"name": "imagenet", "root": str(missing)})


def test_missing_split_and_flat_folder(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", splits=("train",), special=False)
    with pytest.raises(ConfigError, match=r"d/test does not exist"):
        build_datamodule(folder_cfg(root))
    flat = root / "test"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "a.jpg")
    with pytest.raises(ConfigError, match="no class sub-folders.*1 images directly"):
        build_datamodule(folder_cfg(root))


def test_empty_class_folder_names_it(folder_root: Path) -> None:
    (folder_root / "test" / "yak").mkdir()
    with pytest.raises(ConfigError, match="class folders that the training split lacks"):
        build_datamodule(folder_cfg(folder_root))
    (folder_root / "train" / "yak").mkdir()
    with pytest.raises(ConfigError, match=r"train/yak contains no images"):
        build_datamodule(folder_cfg(folder_root))


def test_class_count_is_checked(folder_root: Path) -> None:
    with pytest.raises(
        ConfigError, match="num_classes=10 but .* has 3 class folders; set data.num_classes=3"
    ):
        build_datamodule(folder_cfg(folder_root, num_classes=10))


def _break(folder_root: Path) -> tuple[Path, Path]:
    truncated = sorted((folder_root / "train" / CLASSES[1]).glob("*.jpg"))[0]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    junk = folder_root / "test" / CLASSES[2] / "junk.png"
    junk.write_bytes(b"this is not a PNG file")
    return truncated, junk


@pytest.mark.parametrize("in_memory", ["true", "false"])
def test_corrupt_images_raise_or_are_skipped(folder_root: Path, in_memory: str) -> None:
    truncated, junk = _break(folder_root)
    cfg = folder_cfg(folder_root, in_memory=in_memory, cache_dir=str(folder_root / "cache"))
    with pytest.raises(ConfigError, match=f"{truncated}.*skip_corrupt"):
        dm = build_datamodule(cfg)
        list(dm.train_dataloader())  # streaming finds it on read
    dm = build_datamodule({**cfg, "skip_corrupt": True})
    sizes = {
        split: sum(len(y) for _, y in getattr(dm, f"{split}_dataloader")())
        for split in ("train", "test")
    }
    assert sorted(dm.skipped_files) == sorted([str(truncated), str(junk)])
    if in_memory == "true":
        assert sizes == {"train": 15, "test": 12}  # dropped (16 and 13 files)
    else:
        assert sizes == {"train": 16, "test": 13}  # substituted by the next readable file


def test_corrupt_image_error_crosses_worker_processes(folder_root: Path) -> None:
    truncated, _ = _break(folder_root)
    dm = build_datamodule(folder_cfg(folder_root, in_memory="false", num_workers=1, batch_size=32))
    with pytest.raises(ConfigError, match=str(truncated)):
        next(iter(dm.train_dataloader()))


def test_auto_picks_memory_or_streaming_by_budget(folder_root: Path) -> None:
    small = build_datamodule(folder_cfg(folder_root, cache_dir=str(folder_root / "c")))
    assert isinstance(small, InMemoryDataModule) and small.splits["train"][0].dtype == torch.uint8
    big = build_datamodule(folder_cfg(folder_root, memory_limit_gb=1e-6))
    assert isinstance(big, StreamingDataModule)
    with pytest.raises(ConfigError, match="in_memory=true needs data.recipe=cifar"):
        build_datamodule(folder_cfg(folder_root, in_memory="true", recipe="imagenet"))


def test_any_image_size_and_both_paths_agree_on_eval(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "d", size=(45, 30), special=False)
    kw = {"image_size": 24, "cache_dir": str(tmp_path / "c"), "mean": [0.5] * 3, "std": [0.5] * 3}
    mem = build_datamodule(folder_cfg(root, in_memory="true", **kw))
    stream = build_datamodule(folder_cfg(root, in_memory="false", **kw))
    assert mem.image_size == stream.image_size == 24
    for (xm, ym), (xs, ys) in zip(mem.test_dataloader(), stream.test_dataloader()):
        assert xm.shape == (8, 3, 24, 24) or xm.shape[0] < 8
        assert torch.equal(ym, ys) and torch.allclose(xm, xs, atol=1e-5)
    xs, _ = next(iter(stream.train_dataloader()))
    assert xs.shape == (8, 3, 24, 24)


def test_val_size_holds_out_part_of_train(folder_root: Path) -> None:
    dm = build_datamodule(folder_cfg(folder_root, val_size=4, cache_dir=str(folder_root / "c")))
    assert dm.split_sizes == {"train": 12, "test": 12, "val": 4}
    with pytest.raises(ConfigError, match="either data.val_split"):
        build_datamodule(folder_cfg(folder_root, val_size=4, val_split="test"))


def test_channel_stats_are_exact() -> None:
    images = torch.randint(0, 256, (200, 3, 6, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean((0, 2, 3)))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std((0, 2, 3), unbiased=False))
