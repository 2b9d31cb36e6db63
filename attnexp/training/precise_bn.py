"""Precise BatchNorm: recompute BN running statistics from training batches before evaluation.

BatchNorm's running mean/variance are an exponential average (momentum 0.1, i.e. roughly the
last ten batches) taken while the weights were still moving. In long schedules that is
harmless; in short ones (the `make demo` ablation, quick sweeps) it can be far off, and gates
that normalise a single map with BN, like CBAM's spatial gate, amplify the error: a demo
ResNet-20 + CBAM had 11% training error but 49% validation error with its running
statistics, and 12% once they were recomputed over one pass of the training data. Wu &
Johnson (2021, "Rethinking 'Batch' in BatchNorm", section 3) call this *precise BN*: freeze
the weights and average the statistics of many training batches with equal weight.

The recomputation runs at the start of every validation during ``fit``, so validation, the
best-checkpoint choice and the checkpoints themselves (and hence the final test on the best
checkpoint) use the recomputed statistics. Training is unaffected (tested bit for bit): the
training step normalises with batch statistics, the running ones are only read in evaluation,
and the batches come from the datamodule's ``train_batches(epoch, count)`` (a private copy of
the in-memory loader). A datamodule without that method (the streaming path) is refused with
a ConfigError: a second pass over a DataLoader would shift the training run's batches.

Under DDP each rank estimates the statistics on ``num_batches`` batches of its own shard, and
the ranks then average them: the mean of the batch means, and E[x^2] - E[x]^2 for the
variance (as pycls does), so every rank validates, and rank 0 checkpoints, the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

from attnexp.errors import ConfigError

#: Epoch offset for the private copy of an in-memory loader: its crops and flips differ from
#: every training epoch's, and the training loader's own position is never touched.
_EPOCH_OFFSET = 1 << 30


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, inputs: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them from ``inputs``.

    Each batch counts equally (``momentum=None``: a cumulative average), as in precise BN.
    Returns the number of batches used; with no batch the statistics are left as they were.
    """
    norms = batch_norms(model)
    if not norms:
        return 0
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    count = 0
    try:
        for x in inputs:
            model(x)
            count += 1
    finally:
        model.train(was_training)
        for m, (momentum, state) in zip(norms, saved):
            m.momentum = momentum
            if count == 0:
                m.load_state_dict(state)
    return count


@torch.no_grad()
def average_bn_stats(model: nn.Module, strategy: Any) -> None:
    """Average the BN statistics over DDP ranks: mean of the means, and the variance of the
    pooled data as E[x^2] - E[x]^2 (each rank used the same number of batches)."""
    for m in batch_norms(model):
        if m.running_mean is None or m.running_var is None:
            continue
        second = m.running_var + m.running_mean**2
        mean = strategy.reduce(m.running_mean.clone(), reduce_op="mean")
        second = strategy.reduce(second, reduce_op="mean")
        m.running_mean.copy_(mean)
        m.running_var.copy_((second - mean**2).clamp_min(0))


class PreciseBN(L.Callback):
    """Recompute BN statistics over ``num_batches`` training batches before each validation.

    Runs after the EMA callback when both are on (callbacks run in config order), so the
    statistics are recomputed for the weights being validated.
    """

    def __init__(self, num_batches: int = 50) -> None:
        super().__init__()
        if int(num_batches) < 1:
            raise ValueError(f"callbacks.precise_bn.num_batches must be >= 1, got {num_batches}")
        self.num_batches = int(num_batches)
        self.last_count = 0

    def _training_batches(self, trainer: L.Trainer) -> Iterable[Any]:
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "train_batches"):
            # A second pass over a streaming DataLoader changed the next epoch's batches in
            # our tests, i.e. it would change training; refuse rather than do that silently.
            raise ConfigError(
                "callbacks.precise_bn needs the in-memory data path (data.in_memory=true, or "
                f"synthetic/cifar data); the datamodule here is {type(datamodule).__name__}. "
                "Disable it with callbacks.precise_bn.enabled=false"
            )
        return datamodule.train_batches(_EPOCH_OFFSET + trainer.current_epoch, self.num_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training_batches(trainer)  # refuse an unsupported loader before the first step

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        model = getattr(pl_module, "model", pl_module)
        # A private RNG stream: a DataLoader's iterator draws a seed from the global RNG, which
        # must not shift the training run's randomness.
        batches = self._training_batches(trainer)
        inputs = (self._forward_inputs(pl_module, batch) for batch in batches)
        # A private RNG stream (a DataLoader iterator draws a seed from the global RNG, which
        # must not shift the run's randomness) and the run's precision (autocast).
        with torch.random.fork_rng(devices=[]), trainer.strategy.precision_plugin.forward_context():
            self.last_count = recompute_bn_stats(model, inputs)
        if trainer.world_size > 1:
            average_bn_stats(model, trainer.strategy)

    @staticmethod
    def _forward_inputs(pl_module: L.LightningModule, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        x = x.to(pl_module.device, non_blocking=True)
        if getattr(pl_module, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        return x
