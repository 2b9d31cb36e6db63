"""Training callbacks: weight EMA, per-epoch module hooks, pre-emption saves.

Each is enabled from ``conf/callbacks/default.yaml`` (``callbacks.<name>.enabled=true``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

log = logging.getLogger(__name__)


def _backbone(pl_module: L.LightningModule) -> nn.Module:
    """The network whose weights are averaged/annealed: ``pl_module.model`` if present."""
    return getattr(pl_module, "model", pl_module)


class EMA(L.Callback):
    """Exponential moving average of the weights; validation and test use the averaged weights.

    After every optimizer step: ``ema = d * ema + (1 - d) * w`` for every floating-point
    entry of the state dict (weights and BN running statistics, as timm's ModelEmaV2);
    integer buffers (BN batch counters) are copied. With ``warmup`` the decay
    ramps as ``d_t = min(decay, (1 + t) / (10 + t))`` so early averages are not dominated by
    the random initialisation (timm's ModelEmaV2 does the same). The EMA weights are part of
    the callback's checkpoint state, so a resumed run continues the same average, and the test
    on the best checkpoint evaluates that checkpoint's EMA weights.
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, every_n_steps: int = 1) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.every_n_steps = max(int(every_n_steps), 1)
        self.num_updates = 0
        self.weights: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "EMA"

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @staticmethod
    def _state(model: nn.Module) -> dict[str, torch.Tensor]:
        return {
            k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After any checkpoint restore (some strategies restore after on_fit_start).
        state = self._state(_backbone(pl_module))
        if self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint (on the CPU): move next to the model
            self.weights = {k: self.weights[k].to(v.device, v.dtype) for k, v in state.items()}

    @torch.no_grad()
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.weights is None or trainer.global_step % self.every_n_steps:
            return
        decay = self.current_decay()
        averaged, current, copied = [], [], []
        for name, value in self._state(_backbone(pl_module)).items():
            ema = self.weights[name]
            if ema.is_floating_point():
                averaged.append(ema)
                current.append(value.detach())
            else:
                copied.append((ema, value))
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for ema, value in copied:
            ema.copy_(value)
        self.num_updates += 1

    # -- swapping for evaluation -----------------------------------------------------------
    @torch.no_grad()
    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.weights is None or self._backup is not None:
            return
        model = _backbone(pl_module)
        state = self._state(model)
        self._backup = {k: v.detach().clone() for k, v in state.items()}
        for k, v in state.items():
            v.copy_(self.weights[k].to(v.device))

    @torch.no_grad()
    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._backup is None:
            return
        for k, v in self._state(_backbone(pl_module)).items():
            v.copy_(self._backup[k])
        self._backup = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weights is not None:  # the checkpoint's EMA (restored) onto the model's device
            device = next(iter(self._state(_backbone(pl_module)).values())).device
            self.weights = {k: v.to(device) for k, v in self.weights.items()}
        self._swap_in(pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swap_out(pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._swap_out(pl_module)  # never leave (or checkpoint) EMA weights as the model's

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        if self._backup is not None:
            raise RuntimeError(
                "EMA: a checkpoint was requested while the EMA weights were swapped in"
            )

    # -- checkpoint state ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        self.weights = state_dict["weights"]


class ModuleEpochHooks(L.Callback):
    """Call ``on_train_epoch_start(epoch, max_epochs)`` on every submodule that defines it.

    The generic per-epoch hook: a module with a schedule of its own (dynamic convolution's
    softmax temperature) keeps it in its own class, and training needs to know nothing
    about it. A hook may return ``{name: value}`` to log (per epoch). Stateless: the values
    follow from the epoch, so a resumed run gets the same ones. The LightningModule itself
    is skipped (Lightning calls its own, argument-free hook of that name).
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logged: dict[str, float] = {}
        for module in pl_module.modules():
            hook = getattr(module, "on_train_epoch_start", None)
            if isinstance(module, L.LightningModule) or not callable(hook):
                continue
            values = hook(trainer.current_epoch, trainer.max_epochs)
            logged.update(values or {})
        for name, value in logged.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)


class PreemptionCheckpoint(Checkpoint):
    """Keeps ``last.ckpt`` fresh for pre-emptible jobs.

    * ``every_n_train_steps``: also save ``last.ckpt`` mid-epoch every N optimizer steps
      (the in-memory loader and the train metrics resume mid-epoch exactly).
    * On SIGTERM (SLURM pre-emption, ``kill``, ``scancel``): Lightning finishes the current
      batch and raises ``SIGTERMException``; this callback then writes ``last.ckpt`` so the
      run can continue with ``resume=<run dir>``. A SIGTERM during validation saves nothing
      (a half-evaluated epoch cannot be resumed exactly); the previous ``last.ckpt`` stays.

    The best-by-validation checkpoints remain the job of ``ModelCheckpoint``.
    """

    def __init__(
        self, dirpath: str | Path, every_n_train_steps: int | None = None, filename: str = "last"
    ) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.filename = filename
        self.saved_on_sigterm: Path | None = None

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        log.info(
            "saved %s at epoch %d, step %d", self.path, trainer.current_epoch, trainer.global_step
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        n = self.every_n_train_steps
        if (
            n > 0
            and trainer.global_step > 0
            and trainer.global_step % n == 0
            and not trainer.fast_dev_run
        ):
            self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.fast_dev_run:
            return
        if trainer.validating or trainer.sanity_checking or not trainer.training:
            log.warning("SIGTERM during evaluation: keeping the previous %s", self.path)
            return
        self._save(trainer)
        self.saved_on_sigterm = self.path


class ExactResume(L.Callback):
    """What makes a resumed run continue exactly where its checkpoint stopped. Added by
    :func:`attnexp.builders.build_trainer` to every trainer.

    * Before every checkpoint is written, the loggers are flushed: every row logged before
      the checkpoint is on disk, and the CSV logger of the resumed run drops the rows after it.
    * Work around Lightning issue #20550 (open in 2.6): when ``configure_optimizers`` reads
      ``trainer.estimated_stepping_batches`` (our schedules need the step count), the train
      loader is set up before the checkpoint is restored, and the loader state saved in a
      mid-epoch checkpoint is silently dropped: the resumed epoch would start again at batch
      0. At train start, after the restore and before the first batch is drawn, load the
      pending state and re-create the batch iterator, as Lightning's own resume path does.
    """

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict
    ) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
        fetcher = getattr(fit_loop, "_data_fetcher", None)
        if not pending or not fit_loop.restarting or fetcher is None:
            return
        fit_loop._load_combined_loader_states()
        iter(fetcher)
        log.info("restored the train loader's position from the checkpoint")
