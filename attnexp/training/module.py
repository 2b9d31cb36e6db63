"""The LightningModule: cross-entropy training that reports top-1/top-5 error in percent."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from attnexp.training.metrics import TopKError
from attnexp.training.optim import build_optimizer, lr_lambda


class ClassificationModule(L.LightningModule):
    """Wraps any image classifier; knows nothing of how the backbone was built.

    Logged metrics (per epoch): ``{train,val,test}/loss``, ``{...}/top1_err`` and
    ``{...}/top5_err`` in percent, plus ``lr``.
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
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {"name": "constant"})
        self.no_decay_bn_bias = no_decay_bn_bias
        self.channels_last = channels_last
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss()
        self.metrics = nn.ModuleDict(
            {
                f"{split}_top{k}": TopKError(num_classes, k)
                for split in ("train", "val", "test")
                for k in (1, 5)
            }
        )
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y) if split == "train" else self.eval_criterion(logits, y)
        for k in (1, 5):
            self.metrics[f"{split}_top{k}"].update(logits.detach(), y)
        self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=y.numel(), sync_dist=split != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_errors(self, split: str) -> None:
        for k in (1, 5):
            metric = self.metrics[f"{split}_top{k}"]
            self.log(f"{split}/top{k}_err", metric.compute(), prog_bar=(k == 1 and split != "train"))
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_errors("train")

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val")

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.optimizer_factory, self.model, self.no_decay_bn_bias)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        steps_per_epoch = max(total // epochs, 1)
        schedule = lr_lambda(self.scheduler_cfg, total, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
