"""Faults users hit: a disk that fills up during training, and files colleagues must read.

The full disk is real, not mocked: from the second epoch on, the checkpoint writer's
temporary file (``.<name>.<pid>.tmp``, see attnexp/training/checkpoint_io.py) is a symlink
to ``/dev/full``, so the kernel answers the write with ENOSPC exactly as a full filesystem
does.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from attnexp.results import RunDir
from attnexp.results.atomic import default_file_mode

FULL = Path("/dev/full")
TINY = [
    "+debug=smoke",
    "callbacks.progress=null",
    "logger=none",
    "trainer.max_epochs=3",
    "scheduler=cosine",
]


class DiskFullFrom(L.Callback):
    """From epoch ``epoch`` on, every checkpoint write of this process hits a full disk."""

    def __init__(self, checkpoints: Path, epoch: int = 1) -> None:
        self.checkpoints, self.epoch = checkpoints, epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch < self.epoch:
            return
        names = ["last.ckpt", *(f"best-epoch{e:03d}.ckpt" for e in range(10))]
        for name in names:
            link = self.checkpoints / f".{name}.{os.getpid()}.tmp"
            if not link.is_symlink():
                link.symlink_to(FULL)


@pytest.mark.skipif(not FULL.exists(), reason="/dev/full is Linux-only")
def test_disk_full_names_path_and_cause_and_keeps_checkpoints(make_cfg, monkeypatch) -> None:
    from attnexp import builders
    from attnexp.run import train

    cfg = make_cfg(*TINY)
    run_dir = RunDir(cfg.paths.output_dir)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    original = builders.build_callbacks
    monkeypatch.setattr(
        builders, "build_callbacks", lambda c: [*original(c), DiskFullFrom(ckpts, epoch=1)]
    )
    with pytest.raises(OSError) as info:
        train(cfg)
    err = info.value
    assert err.errno == errno.ENOSPC
    assert err.filename and Path(err.filename).parent == ckpts
    assert "No space left on device" in str(err) and err.filename in str(err)

    record = run_dir.read_record_dict()
    assert record["status"] == "failed"
    message = record["error"]["message"]
    assert "No space left on device" in message and str(ckpts) in message

    # every checkpoint written before the disk filled up is complete and loadable
    saved = sorted(p for p in ckpts.glob("*.ckpt"))
    assert saved, "the first epoch's checkpoints must exist"
    for path in saved:
        state = torch.load(path, map_location="cpu", weights_only=False)
        assert state["epoch"] == 0 and "state_dict" in state
    partial = [p for p in ckpts.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert not partial, "no half-written temporary file is left"  # (our unused links stay)


def test_written_files_get_the_umask_mode(tmp_path: Path) -> None:
    """metrics.json and tables are readable by colleagues as checkpoints are (0666 - umask)."""
    from attnexp.results.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "metrics.json", "{}\n")
        ckpt = tmp_path / "plain.bin"
        with open(ckpt, "w") as fh:  # what torch.save / open() give a checkpoint
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(ckpt.stat().st_mode) == 0o644
    assert default_file_mode() == 0o666 & ~old
