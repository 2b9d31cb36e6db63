"""Helpers for the training tests: tiny configs, traced fits, subprocess runs, wandb files."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

# Tiny synthetic data on the CPU, deterministic kernels, no progress bar.
TINY = ["+debug=smoke", "callbacks.progress=null", "trainer.deterministic=true"]
# Three epochs of four batches: long enough to interrupt mid-epoch, short enough for CI.
THREE_EPOCHS = [
    *TINY,
    "data.num_train=128",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=4",
    "scheduler=cosine",
]
REPO = Path(__file__).resolve().parents[2]


class StepTrace(L.Callback):
    """Records (epoch, global step, lr, batch checksum) at every train batch; optionally
    raises Lightning's SIGTERM flag after optimizer step ``sigterm_at`` (as the signal does)."""

    def __init__(self, sigterm_at: int | None = None) -> None:
        self.rows: list[tuple[int, int, float, float]] = []
        self.sigterm_at = sigterm_at

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows.append((trainer.current_epoch, trainer.global_step, lr, float(batch[0].sum())))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.sigterm_at is not None and trainer.global_step == self.sigterm_at:
            trainer._signal_connector.received_sigterm = True


def train_with(cfg: Any, *extra: L.Callback, monkeypatch: Any) -> dict[str, Any]:
    """``attnexp.run.train(cfg)`` with ``extra`` callbacks added to the configured ones."""
    from attnexp import builders
    from attnexp.run import train

    original = builders.build_callbacks
    monkeypatch.setattr(builders, "build_callbacks", lambda c: [*original(c), *extra])
    try:
        return train(cfg)
    finally:
        monkeypatch.setattr(builders, "build_callbacks", original)


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m attnexp.cli.train *args`` (output captured)."""
    return subprocess.Popen(
        [sys.executable, "-m", "attnexp.cli.train", *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before writing {path}:\n{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout}s")
        time.sleep(0.05)


def kill(proc: subprocess.Popen, sig: signal.Signals) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=600)
    return out


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def same_result(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys of the run record whose values differ between two runs of the same config."""
    keys = ("status", "epochs", "global_step", "final", "best", "test")
    return [k for k in keys if a[k] != b[k]]


def state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def wandb_records(run_file: Path) -> Iterator[Any]:
    """Records of a wandb transaction log (``run-<id>.wandb``): LevelDB-style blocks of
    32 KiB, each record a 7-byte header (crc32c, length, type) and a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    block, pos, pending = 32768, 7, b""  # 7 bytes of file header (":W&B" + version)
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            payload, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(payload)
        yield record
