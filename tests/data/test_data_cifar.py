"""CIFAR from generated pickle batches: loading, hold-out split, offline errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import write_cifar

from attnexp.data import build_datamodule
from attnexp.data import cifar as cifar_module
from attnexp.errors import ConfigError


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "cifar")


def cfg(root: Path, name: str = "cifar10", **kw) -> dict:
    return {"name": name, "root": str(root), "download": False, "batch_size": 16, **kw}


@pytest.mark.parametrize("variant,classes", [("cifar10", 10), ("cifar100", 100)])
def test_loads_pickles_exactly(tmp_path: Path, variant: str, classes: int) -> None:
    root = write_cifar(tmp_path, variant, n_train=40, n_test=12)
    dm = build_datamodule(cfg(root, variant))
    images, labels = dm.splits["train"]
    folder = cifar_module.find_batches(root, variant)
    with open(folder / cifar_module.VARIANTS[variant]["train"][0], "rb") as f:
        first = pickle.load(f)
    k = len(first["data"])
    assert images.dtype == torch.uint8 and images.shape == (40, 3, 32, 32)
    assert np.array_equal(
        images[:k].reshape(k, -1).numpy(), first["data"]
    )  # CHW, row-major, as torchvision
    assert labels[:k].tolist() == first[cifar_module.VARIANTS[variant]["label_key"]]
    assert dm.num_classes == classes and dm.image_size == 32 and len(dm.class_names) == classes
    assert dm.splits["val"] is dm.splits["test"]  # val_size 0: validate on test
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_root_may_be_the_batch_folder_itself(cifar_root: Path) -> None:
    dm = build_datamodule(cfg(cifar_root / "cifar-10-batches-py"))
    assert dm.split_sizes["train"] == 60


def test_val_size_is_a_fixed_disjoint_holdout(cifar_root: Path) -> None:
    a = build_datamodule(cfg(cifar_root, val_size=15, split_seed=3))
    b = build_datamodule(cfg(cifar_root, val_size=15, split_seed=3, shuffle_seed=9))
    c = build_datamodule(cfg(cifar_root, val_size=15, split_seed=4))
    assert a.split_sizes == {"train": 45, "test": 20, "val": 15}
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])  # same split whatever the run seed
    assert not torch.equal(a.splits["val"][0], c.splits["val"][0])
    full = build_datamodule(cfg(cifar_root)).splits["train"][0].flatten(1)
    together = torch.cat([a.splits["train"][0], a.splits["val"][0]]).flatten(1)
    assert sorted(map(tuple, together.tolist())) == sorted(map(tuple, full.tolist()))  # a partition
    with pytest.raises(ConfigError, match="val_size=60"):
        build_datamodule(cfg(cifar_root, val_size=60))


def test_default_normalisation_is_cifar_statistics(cifar_root: Path) -> None:
    dm = build_datamodule(cfg(cifar_root))
    assert dm.mean == cifar_module.CIFAR10_MEAN and dm.std == cifar_module.CIFAR10_STD
    custom = build_datamodule(cfg(cifar_root, std=[0.2023, 0.1994, 0.2010]))
    assert custom.std == (0.2023, 0.1994, 0.2010)


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"looked for .*cifar-10-batches-py.*data.download=true"):
        build_datamodule(cfg(tmp_path))


def test_failed_download_says_where_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(cifar_module, "download", offline)
    with pytest.raises(
        ConfigError, match=r"cifar-100-python.*downloading it failed.*name resolution.*data.root"
    ):
        build_datamodule(cfg(tmp_path, "cifar100", download=True))


def test_wrong_or_broken_files(tmp_path: Path) -> None:
    root = write_cifar(tmp_path, "cifar10")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80garbage")
    with pytest.raises(ConfigError, match="test_batch"):
        build_datamodule(cfg(root))
    with pytest.raises(ConfigError, match="image_size must be 32"):
        build_datamodule(cfg(write_cifar(tmp_path / "ok"), image_size=64))
