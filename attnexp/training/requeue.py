"""SLURM pre-emption and time limits: signal -> last.ckpt -> requeue -> exact resume.

SLURM warns a job ``signal_delay_s`` seconds before its time limit (and before a
pre-emption) with the signal of ``#SBATCH --signal``; submitit (``launcher=slurm``) asks for
``USR2``. On that signal this callback makes Lightning stop at the next batch boundary on
every rank (it raises the same flag as SIGTERM; under DDP Lightning broadcasts rank 0's flag
each step, so all ranks stop at the same step), ``PreemptionCheckpoint`` writes ``last.ckpt``
there, and then the job is requeued: by submitit's own handler when there is one (it
re-submits the same Hydra job, which re-runs in the same run dir), else by
``scontrol requeue $SLURM_JOB_ID``. The requeued run finds ``last.ckpt`` in its run dir and
resumes from it automatically (``attnexp.training.resume``), at the same epoch, step and
batch.

A signal handler that saved on the spot (as Lightning's own USR1 handler does) could save in
the middle of a step, with the loader one batch ahead of the weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def _signal_number(name: str | int) -> signal.Signals:
    if isinstance(name, int):
        return signal.Signals(name)
    text = str(name).upper()
    return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]


class SlurmRequeue(L.Callback):
    """On ``signal`` (default USR2, submitit's), stop at the next batch, keep ``last.ckpt``,
    requeue. Active only inside a SLURM job (``SLURM_JOB_ID`` set)."""

    def __init__(self, signal: str | int = "USR2", requeue: bool = True) -> None:
        super().__init__()
        self.signum = _signal_number(signal)
        self.requeue = bool(requeue)
        self.received = False
        self.requeued_with: str | None = None  # "submitit" | "scontrol" | None
        self._previous: Any = None
        self._trainer: L.Trainer | None = None

    @staticmethod
    def in_slurm_job() -> bool:
        return bool(os.environ.get("SLURM_JOB_ID"))

    def _handler(self, signum: int, frame: Any) -> None:
        log.warning("received %s: stopping after this batch to checkpoint and requeue", signum)
        self.received = True
        if self._trainer is not None:  # Lightning's SIGTERM flag: stop at the next batch
            self._trainer._signal_connector.received_sigterm = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.in_slurm_job():
            return
        self._trainer = trainer
        self._previous = signal.getsignal(self.signum)
        signal.signal(self.signum, self._handler)

    def _restore(self) -> None:
        if self._trainer is not None:
            signal.signal(self.signum, self._previous or signal.SIG_DFL)
            self._trainer = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        previous = self._previous
        self._restore()
        if not (self.received and isinstance(exception, SIGTERMException) and self.requeue):
            return
        if trainer.global_rank != 0:
            return
        # last.ckpt was written by PreemptionCheckpoint (an earlier callback) on every rank's
        # behalf; now hand over to whoever requeues.
        if callable(previous) and previous not in (signal.default_int_handler,):
            self.requeued_with = "submitit"
            previous(self.signum, None)  # submitit: requeue, then sys.exit
            return
        self.requeued_with = _scontrol_requeue()


def _scontrol_requeue(run: Callable[..., Any] = subprocess.run) -> str | None:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")
    if not job_id or shutil.which("scontrol") is None:
        log.warning("cannot requeue: no SLURM_JOB_ID or no scontrol; resume by hand")
        return None
    result = run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return None
    log.info("requeued SLURM job %s", job_id)
    return "scontrol"
