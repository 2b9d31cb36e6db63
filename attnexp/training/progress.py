"""Progress a person can follow, in a terminal and in a SLURM output file.

A rich progress bar redraws one line in place: in a file (SLURM's ``slurm-<id>.out``, a
``nohup`` log) that is minutes of nothing and then the final frame. :func:`progress_bar`
(``callbacks.progress`` in conf/callbacks/default.yaml) therefore picks the bar by where
stdout goes: a terminal gets Lightning's ``RichProgressBar``; anything else gets
:class:`PlainProgress`, which prints one plain line every ``every_seconds`` seconds (or
every ``every_n_steps`` optimizer steps), plus one line per finished validation::

    [attnexp 14:02:31] epoch 3/90 step 1200/35190 batch 80/391 loss 1.2345 lr 0.1 1830 img/s ETA 5:09:12
    [attnexp 14:02:44] epoch 3/90 validated: val/loss 1.302 val/top1_err 41.2 (12.3 s)
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

MODES = ("auto", "rich", "plain")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(
    mode: str = "auto",
    every_seconds: float = 30.0,
    every_n_steps: int | None = None,
    leave: bool = False,
) -> ProgressBar:
    """The progress callback for where stdout goes (``mode``: auto | rich | plain)."""
    if mode not in MODES:
        raise ValueError(f"callbacks.progress.mode must be one of {MODES}, got {mode!r}")
    if mode == "rich" or (mode == "auto" and _is_terminal(sys.stdout)):
        return RichProgressBar(leave=leave)
    return PlainProgress(every_seconds=every_seconds, every_n_steps=every_n_steps)


def _batch_size(batch: Any) -> int:
    """Images in a batch (first tensor's leading dimension)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 0


def _loss(outputs: Any) -> float | None:
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return float(outputs.detach())  # waits for the device: only on a progress line
    return None


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class PlainProgress(ProgressBar):
    """One plain line per interval (see the module docstring); rank 0 only.

    Args:
        every_seconds: at most this long between two lines (0: off).
        every_n_steps: also a line every this many optimizer steps (None: off).
        stream: where the lines go (default: stdout, flushed per line).
    """

    def __init__(
        self,
        every_seconds: float = 30.0,
        every_n_steps: int | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        super().__init__()
        if every_seconds < 0 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError("every_seconds must be >= 0 and every_n_steps >= 1 (or None)")
        self.every_seconds = float(every_seconds)
        self.every_n_steps = every_n_steps
        self._stream = stream
        self._enabled = True
        self._last_time = 0.0
        self._last_step = 0
        self._images = 0
        self._started = 0.0
        self._start_step = 0
        self._val_started = 0.0
        #: Every line printed (tests and notebooks read them).
        self.lines: list[str] = []

    # -- ProgressBar interface ---------------------------------------------------------------
    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        self._write(sep.join(map(str, args)))

    # -- lines --------------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        if not self._enabled:
            return
        # a wall-clock stamp: log files have none, and it shows stalls between lines
        line = line.replace("[attnexp]", f"[attnexp {time.strftime('%H:%M:%S')}]", 1)
        stream = self._stream or sys.stdout
        print(line, file=stream, flush=True)
        self.lines.append(line)

    def _epochs(self, trainer: L.Trainer) -> str:
        max_epochs = trainer.max_epochs
        total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def _eta(self, trainer: L.Trainer, now: float) -> str:
        total = trainer.estimated_stepping_batches
        done = trainer.global_step - self._start_step
        if not done or total in (None, float("inf")) or total <= 0:
            return "ETA ?"
        per_step = (now - self._started) / done
        return f"ETA {_duration(per_step * max(total - trainer.global_step, 0))}"

    def step_line(self, trainer: L.Trainer, batch_idx: int, loss: float | None, now: float) -> str:
        total = trainer.estimated_stepping_batches
        steps = f"step {trainer.global_step}" + (
            f"/{int(total)}" if total not in (None, float("inf")) else ""
        )
        batches = trainer.num_training_batches
        batch = f"batch {batch_idx + 1}" + (
            f"/{int(batches)}" if batches not in (None, float("inf")) else ""
        )
        elapsed = max(now - self._last_time, 1e-9)
        parts = [f"[attnexp] {self._epochs(trainer)}", steps, batch]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.4g}")
        parts += [f"{self._images / elapsed:.0f} img/s", self._eta(trainer, now)]
        return " ".join(parts)

    # -- hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._last_time = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        self._images = 0
        every = [f"{self.every_seconds:g} s"] if self.every_seconds else []
        every += [f"{self.every_n_steps} steps"] if self.every_n_steps else []
        self._write(
            f"[attnexp] training from {self._epochs(trainer)}, "
            f"{trainer.num_training_batches} batches per epoch; progress every "
            + (" or ".join(every) or "validation")
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += _batch_size(batch) * trainer.world_size
        now = time.monotonic()
        by_time = self.every_seconds > 0 and now - self._last_time >= self.every_seconds
        by_steps = (
            self.every_n_steps is not None
            and trainer.global_step - self._last_step >= self.every_n_steps
        )
        if not (by_time or by_steps):
            return
        self._write(self.step_line(trainer, batch_idx, _loss(outputs), now))
        self._last_time, self._last_step, self._images = now, trainer.global_step, 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and isinstance(v, (int, float, torch.Tensor))
        }
        shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        took = time.monotonic() - self._val_started
        self._write(f"[attnexp] {self._epochs(trainer)} validated: {shown} ({took:.1f} s)")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        took = time.monotonic() - self._started
        self._write(
            f"[attnexp] training done: {trainer.current_epoch} epochs, "
            f"{trainer.global_step} steps in {_duration(took)}"
        )
