"""``trainer.strategy=ddp_spawn``: bring the fit's progress back to the main process.

With ``ddp_spawn`` the fit runs in worker processes; Lightning sends back only the weights,
the best checkpoint's path and ``callback_metrics``. The main process's trainer still says
epoch 0, step 0, no best score, and the module never ran ``configure_optimizers`` (no
effective lr), so a run record written from it was empty. :class:`FitState` (added to every
trainer) puts these facts into ``callback_metrics`` at the end of the fit, the one channel
Lightning carries home, and :func:`restore_fit_state` writes them back into the main
process's trainer and module.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

PREFIX = "attnexp_fit_state/"


class FitState(L.Callback):
    """Records epoch, step, best score, lr and batches per epoch in ``callback_metrics``."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.strategy.launcher or trainer.strategy.launcher.is_interactive_compatible:
            return  # only the spawn launchers (fit in other processes) need it
        state: dict[str, float] = {
            "epoch": float(trainer.current_epoch),
            "global_step": float(trainer.global_step),
            "num_training_batches": float(trainer.num_training_batches),
        }
        lr = getattr(pl_module, "effective_lr", None)
        if lr is not None:
            state["lr"] = float(lr)
        for i, ckpt in enumerate(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)):
            if ckpt.best_model_score is not None:
                state[f"best_score_{i}"] = float(ckpt.best_model_score)
        for key, value in state.items():
            trainer.callback_metrics[PREFIX + key] = torch.tensor(value, dtype=torch.float64)


def restore_fit_state(trainer: L.Trainer, module: Any) -> bool:
    """Apply what :class:`FitState` sent home (True if there was anything) and drop the
    entries from ``callback_metrics``."""
    metrics = trainer.callback_metrics
    state = {k[len(PREFIX) :]: float(metrics.pop(k)) for k in list(metrics) if k.startswith(PREFIX)}
    if not state:
        return False
    loop = trainer.fit_loop
    loop.epoch_progress.current.completed = int(state["epoch"])
    loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed = int(
        state["global_step"]
    )
    batches = state["num_training_batches"]
    loop.max_batches = int(batches) if math.isfinite(batches) else batches
    if "lr" in state:
        module.effective_lr = state["lr"]
    for i, ckpt in enumerate(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)):
        if f"best_score_{i}" in state:
            ckpt.best_model_score = torch.tensor(state[f"best_score_{i}"])
    return True
