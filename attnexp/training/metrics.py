"""Top-k error in percent, the number papers print (pycls: ``(1 - correct / N) * 100``).

Micro-averaged over samples and computed from logits with torchmetrics, so it accumulates
correctly across batches and devices.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class TopKError(nn.Module):
    """Streaming top-k error in percent over all samples seen since the last reset."""

    def __init__(self, num_classes: int, k: int, validate_args: bool = True) -> None:
        super().__init__()
        self.k = min(k, num_classes)
        # validate_args=False skips per-batch checks that synchronise with the device.
        self.accuracy = MulticlassAccuracy(
            num_classes=num_classes, top_k=self.k, average="micro", validate_args=validate_args
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.accuracy.update(logits.float(), target)

    def compute(self) -> torch.Tensor:
        return (1.0 - self.accuracy.compute()) * 100.0

    def reset(self) -> None:
        self.accuracy.reset()

    def persistent(self, mode: bool = True) -> None:
        """Keep the running counts in ``state_dict`` (checkpoints), for exact mid-epoch resume."""
        self.accuracy.persistent(mode)


def topk_error(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> float:
    """One-shot top-k error in percent (for scripts and tests that hold all logits)."""
    k = min(k, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct = (topk == target[:, None]).any(dim=1).float().sum().item()
    return (1.0 - correct / target.numel()) * 100.0
