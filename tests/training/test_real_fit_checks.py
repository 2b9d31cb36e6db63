"""Schedules and resumes in real fits (tiny data on the CPU).

* Dynamic convolution's softmax temperature is annealed as configured: after 2 epochs of
  ``conv=dynamic_conv`` with ``temperature=30 final_temperature=2 anneal_epochs=4`` every
  DynamicConv holds epoch 1's value, 30 + (2 - 30) * 1/4 = 23, in the model, in last.ckpt
  and in the epoch log.
* ``resume=<run dir>`` with the overrides resume.py allows: the dataset moved to another
  root and twice the processes (DDP, gloo on the CPU); the run finishes in its own run dir.
"""

from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from train_support import TINY, cli, metrics, train_with

from attnexp.run import train


class Temperatures(L.Callback):
    """The temperature of every DynamicConv at the end of each training epoch."""

    def __init__(self) -> None:
        self.per_epoch: list[list[float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from attnexp.attention.branch import DynamicConv

        temps = [float(m.temperature) for m in pl_module.modules() if isinstance(m, DynamicConv)]
        self.per_epoch.append(temps)


def test_dynamic_conv_temperature_annealed_in_a_real_fit(make_cfg, tmp_path, monkeypatch):
    seen = Temperatures()
    cfg = make_cfg(
        *TINY,
        "model=resnet20",
        "conv=dynamic_conv",
        "conv.temperature=30",
        "conv.final_temperature=2",
        "conv.anneal_epochs=4",
        "trainer.max_epochs=2",
        "data.image_size=16",
    )
    record = train_with(cfg, seen, monkeypatch=monkeypatch)
    assert record["status"] == "completed"
    # closed form of the linear schedule: epoch e -> 30 + (2 - 30) * min(e, 4) / 4
    n = 18  # ResNet-20: 9 basic blocks, both 3x3 convs replaced
    assert seen.per_epoch == [[30.0] * n, [23.0] * n]
    state = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    saved = [float(v) for k, v in state.items() if k.endswith(".temperature")]
    assert saved == [23.0] * n
    with open(tmp_path / "run/csv/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("dyconv_temperature")]
    assert [float(r["dyconv_temperature"]) for r in rows] == [30.0, 23.0]


def _write_cifar(root: Path, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    for i in range(5):
        part = slice(i * n // 5, (i + 1) * n // 5)
        (folder / f"data_batch_{i + 1}").write_bytes(
            pickle.dumps({"data": data[part], "labels": labels[part]})
        )
    (folder / "test_batch").write_bytes(pickle.dumps({"data": data[:20], "labels": labels[:20]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    return root


@pytest.mark.essential  # two DDP processes: ~25 s of CPU
def test_resume_with_a_moved_data_root_and_two_processes(make_cfg, tmp_path: Path) -> None:
    """Epoch 0 in one process from data root A; the data then moves to B and the run is
    resumed with ``data.root=B trainer.devices=2 trainer.strategy=ddp trainer.max_epochs=2``
    (all allowed by resume.py). The same global batch, split over two processes."""
    old_root, new_root = tmp_path / "A", tmp_path / "B"
    _write_cifar(old_root)
    run_dir = tmp_path / "run"
    first = train(
        make_cfg(
            # Not +debug=smoke: it switches to synthetic data and adds its keys to data.
            "callbacks.progress=null",
            "trainer.deterministic=true",
            "trainer.accelerator=cpu",
            "data=cifar10",
            f"data.root={old_root}",
            "data.download=false",
            "+data.global_batch=32",
            "data.eval_batch_size=20",
            "trainer.max_epochs=1",
            run_dir=run_dir,
        )
    )
    assert first["status"] == "completed" and first["epochs"] == 1
    shutil.move(old_root, new_root)
    config_before = (run_dir / ".hydra/config.yaml").read_text()

    proc = cli(
        f"resume={run_dir}",
        f"data.root={new_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=2",
        cwd=tmp_path,
    )
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    record = metrics(run_dir)
    assert record["status"] == "completed" and record["epochs"] == 2, out[-3000:]
    training = record["training"]
    assert training["world_size"] == 2 and training["global_batch"] == 32
    assert training["per_device_batch"] == 16
    assert [r["reason"] for r in training["resumes"]] == ["resume"]
    assert training["resumed_at"]["global_step"] == first["global_step"]
    assert record["global_step"] == 2 * first["global_step"]  # the same steps per epoch
    assert (run_dir / ".hydra/config.yaml").read_text() == config_before  # the record stays
    assert not old_root.exists()  # so the data came from B
