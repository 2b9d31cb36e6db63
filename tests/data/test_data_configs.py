"""Every config in conf/data/ composes, builds on tiny generated data and yields batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datagen import write_cifar, write_image_folder

import attnexp
from attnexp.builders import to_dict
from attnexp.data import available_datasets, build_datamodule
from attnexp.run import train

CONF_DIR = Path(attnexp.__file__).parent / "conf" / "data"
CONFIGS = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def overrides_for(name: str, tmp: Path) -> list[str]:
    """Hydra overrides that point config ``name`` at tiny generated data."""
    if name in ("cifar10", "cifar100"):
        return [f"data.root={write_cifar(tmp, name, n_train=40, n_test=10)}", "data.download=false"]
    if name == "imagefolder":
        return [
            f"data.root={write_image_folder(tmp)}",
            "data.num_classes=3",
            f"data.cache_dir={tmp / 'cache'}",
        ]
    if name == "imagenet":
        root = write_image_folder(tmp, splits=("train", "val"), size=(50, 40))
        return [
            f"data.root={root}",
            "data.num_classes=3",
            "data.image_size=32",
            "data.num_workers=0",
        ]
    if name == "synthetic":
        return ["data.num_train=40", "data.num_val=10", "data.num_test=10"]
    raise AssertionError(
        f"conf/data/{name}.yaml has no test data here: add a case to overrides_for"
    )


def test_every_config_is_a_registered_dataset() -> None:
    assert set(CONFIGS) <= set(available_datasets())
    assert {"cifar10", "cifar100", "imagenet", "imagefolder", "synthetic"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_yields_batches(name: str, make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        f"data={name}",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        *overrides_for(name, tmp_path / "data"),
    )
    dm = build_datamodule(to_dict(cfg.data))
    size = int(cfg.data.image_size)
    assert dm.num_classes == int(cfg.data.num_classes) == len(dm.class_names)
    assert dm.image_size == size and dm.name == name
    for split in ("train", "val", "test"):
        x, y = next(iter(getattr(dm, f"{split}_dataloader")()))
        assert x.shape == (8, 3, size, size) and x.dtype == torch.float32, split
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < dm.num_classes
        assert x.abs().max() < 10  # normalised, not raw 0..255
    if hasattr(dm, "splits"):
        assert all(images.dtype == torch.uint8 for images, _ in dm.splits.values())


@pytest.mark.parametrize(
    "name,extra", [("cifar10", []), ("imagefolder", ["data.in_memory=false", "data.num_workers=0"])]
)
def test_trains_through_attnexp_run(name: str, extra: list[str], make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        f"data={name}",
        "model=resnet20",
        "trainer.accelerator=cpu",
        "+trainer.fast_dev_run=true",
        "logger=none",
        "callbacks=none",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        *overrides_for(name, tmp_path / "data"),
        *extra,
    )
    record = train(cfg)
    assert record["status"] == "completed" and record["dataset"] == name
