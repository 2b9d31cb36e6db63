"""The LightningModule: cross-entropy training that reports top-1/top-5 error in percent."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics.aggregation import MeanMetric

from attnexp.training.finetune import split_backbone_lr
from attnexp.training.metrics import TopKError
from attnexp.training.optim import build_optimizer, lr_lambda, scaled_lr

SPLITS = ("train", "val", "test")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run cannot continue."""


def nonfinite_message(
    step: int, precision: str | None, what: str = "training loss is NaN/inf"
) -> str:
    """The user-facing explanation of a NaN/inf loss, with the usual causes first."""
    hints = [
        "the learning rate is too high for this model/batch size (lower optimizer.lr, add "
        "scheduler.warmup, or set trainer.gradient_clip_val)",
    ]
    if precision and precision.startswith("16"):
        hints.insert(
            0, "fp16 overflow under trainer.precision=16-mixed (try trainer.precision=bf16-mixed)"
        )
    elif precision and "bf16" in precision:
        hints.append("bf16 rounding (check with trainer.precision=32-true)")
    hints.append(
        "a module producing inf/NaN for some inputs (e.g. a division or log without an epsilon)"
    )
    causes = "; ".join(f"({i}) {h}" for i, h in enumerate(hints, 1))
    return (
        f"{what} at optimizer step {step}. Likely causes: {causes}. The checkpoints on disk "
        f"are from before this step (non-finite weights are never saved)."
    )


class ClassificationModule(L.LightningModule):
    """Wraps any image classifier; knows nothing of how the backbone was built.

    Logged metrics (per epoch): ``{train,val,test}/loss``, ``{...}/top1_err`` and
    ``{...}/top5_err`` in percent, plus the learning rate (LearningRateMonitor). The train
    metrics' running sums live in ``state_dict``, so a run resumed mid-epoch reports the same
    epoch numbers as an uninterrupted one.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Mapping[str, Any] | None = None,
        label_smoothing: float = 0.0,
        no_decay_bn_bias: bool = False,
        channels_last: bool = False,
        compile: bool | str | Mapping[str, Any] = False,
        batch_size: int | None = None,
        base_batch_size: int | None = None,
        nonfinite_check_every: int = 1,
        mixer: Callable[..., Any] | None = None,
        backbone_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "constant"})
        self.no_decay_bn_bias = no_decay_bn_bias
        self.channels_last = channels_last
        self.batch_size = batch_size
        self.base_batch_size = base_batch_size
        self.nonfinite_check_every = max(int(nonfinite_check_every), 1)
        #: mixup/cutmix of training batches (attnexp.data.augment.Mixer), None = off.
        self.mixer = mixer
        #: lr multiplier of the pretrained backbone (attnexp.training.finetune).
        self.backbone_lr_mult = float(backbone_lr_mult)
        #: Learning rate after the linear scaling rule (set in configure_optimizers).
        self.effective_lr: float | None = None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.metrics = nn.ModuleDict()
        for split in SPLITS:
            for k in (1, 5):
                self.metrics[f"{split}_top{k}"] = TopKError(num_classes, k, validate_args=False)
            self.metrics[f"{split}_loss"] = MeanMetric(nan_strategy="disable")
        for k in ("train_top1", "train_top5", "train_loss"):
            self.metrics[k].persistent(True)
        # First optimizer step whose loss was not finite (-1: none). Tracked on the device so
        # the check costs no host synchronisation except every `nonfinite_check_every` steps.
        self.register_buffer(
            "_first_bad_step", torch.tensor(-1, dtype=torch.long), persistent=False
        )
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: training.compile (auto | True | False | torch.compile options), applied during fit
        #: by attnexp.training.compile.CompileWhenItPays; what it decided lands here.
        self.compile_setting = compile
        self.compile_decision: dict[str, Any] | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        from attnexp.training.compile import CompileWhenItPays

        if self._trainer is not None and any(  # test/validate after fit: keep fit's decision
            isinstance(c, CompileWhenItPays) for c in self._trainer.callbacks
        ):
            return []
        return [CompileWhenItPays(self.compile_setting)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    # -- steps -----------------------------------------------------------------------------
    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        if split == "train" and self.mixer is not None:
            # mixed inputs, lam-weighted CE of both labels; the error is on the clean labels
            x, partner, lam = self.mixer(x, y, self.global_step, self.global_rank)
            logits = self(x)
            loss = self.criterion(logits, y) * lam + self.criterion(logits, partner) * (1 - lam)
        else:
            logits = self(x)
            loss = self.criterion(logits, y) if split == "train" else self.eval_criterion(logits, y)
        detached = logits.detach()
        for k in (1, 5):
            self.metrics[f"{split}_top{k}"].update(detached, y)
        self.metrics[f"{split}_loss"].update(loss.detach(), weight=y.numel())
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        bad = ~torch.isfinite(loss.detach())
        self._first_bad_step.copy_(
            torch.where(bad & (self._first_bad_step < 0), self.global_step, self._first_bad_step)
        )
        if self.global_step % self.nonfinite_check_every == 0:
            self.check_finite()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    # -- the non-finite guard --------------------------------------------------------------
    def _precision(self) -> str | None:
        return str(self.trainer.precision) if self._trainer is not None else None

    def check_finite(self, weights: bool = False) -> None:
        """Raise :class:`NonFiniteLossError` if any training loss so far was NaN/inf or, with
        ``weights``, if a weight is (a huge lr can wreck the weights while the loss it was
        computed from was still finite). Each call waits for the device."""
        step = int(self._first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(nonfinite_message(step, self._precision()))
        if weights:
            tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
            finite = torch.stack([t.isfinite().all() for t in tensors]).all()
            if not bool(finite):
                what = "model weights or BN statistics are NaN/inf (the losses were still finite)"
                raise NonFiniteLossError(
                    nonfinite_message(self.global_step, self._precision(), what)
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write a checkpoint after a non-finite loss or with non-finite weights,
        so ``last.ckpt`` always holds the last good state."""
        self.check_finite(weights=True)

    # -- epoch ends ------------------------------------------------------------------------
    def _log_epoch(self, split: str) -> None:
        # Under DDP, compute() already sums the counts and weighted losses of every rank
        # (torchmetrics syncs on compute), so each rank holds the value over the whole split.
        # Lightning's own sync_dist would average per-rank *means* (wrong with unequal eval
        # shards); reducing the identical values with max instead is exact and keeps the
        # logged value declared as synced.
        synced = {"sync_dist": True, "reduce_fx": "max"}
        loss = self.metrics[f"{split}_loss"]
        self.log(f"{split}/loss", loss.compute(), **synced)
        loss.reset()
        for k in (1, 5):
            metric = self.metrics[f"{split}_top{k}"]
            self.log(
                f"{split}/top{k}_err",
                metric.compute(),
                prog_bar=(k == 1 and split != "train"),
                **synced,
            )
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self.check_finite(weights=True)
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        loss = self.metrics["val_loss"].compute()
        if self.trainer.state.fn == TrainerFn.FITTING and not bool(torch.isfinite(loss)):
            # Finite but huge weights (a too high lr) can overflow the logits.
            what = f"validation loss is NaN/inf after epoch {self.current_epoch} (training losses were finite)"
            raise NonFiniteLossError(nonfinite_message(self.global_step, self._precision(), what))
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- optimisation ----------------------------------------------------------------------
    def global_batch_size(self) -> int | None:
        """Images per optimizer step over all devices (per-device batch x world x accumulation)."""
        if self.batch_size is None:
            return None
        trainer = self.trainer
        return int(self.batch_size) * int(trainer.world_size) * int(trainer.accumulate_grad_batches)

    def configure_optimizers(self) -> Any:
        keywords = getattr(self.optimizer_factory, "keywords", {}) or {}
        base_lr = keywords.get("lr")
        lr = None
        if self.base_batch_size is not None:
            global_batch = self.global_batch_size()
            if base_lr is None or global_batch is None:
                raise ValueError("training.base_batch_size needs optimizer.lr and the batch size")
            lr = scaled_lr(float(base_lr), global_batch, self.base_batch_size)
        optimizer = build_optimizer(
            self.optimizer_factory, self.model, self.no_decay_bn_bias, lr=lr
        )
        self.effective_lr = float(optimizer.param_groups[0]["lr"])
        split_backbone_lr(optimizer, self.model, self.backbone_lr_mult)
        trainer = self.trainer
        total = int(trainer.estimated_stepping_batches)  # also sets up the train dataloader
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            steps_per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        else:  # an iterable without length: spread the total over max_epochs
            steps_per_epoch = max(total // max(int(trainer.max_epochs or 1), 1), 1)
        schedule = lr_lambda(self.scheduler_cfg, total, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
