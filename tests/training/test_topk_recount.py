"""The headline numbers recounted outside the code under test.

A short real training (tiny synthetic data, 10 classes); a test-only callback saves the
logits of every test batch, exactly as the test loop sees them (the same weights, the same
batches). Top-1 and top-5 error are then recomputed with plain torch (``topk`` and a
comparison, no torchmetrics, no attnexp) and must match metrics.json to the image: the
recorded percentages are float32, so the count of wrong images is recovered from them and
compared as an integer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from train_support import TINY, train_with

N_TEST = 150  # several test batches, the last one partial


class SaveTestLogits(L.Callback):
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    @torch.no_grad()
    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        x, y = batch
        self.logits.append(pl_module(x).float().cpu())
        self.labels.append(y.cpu())


def wrong(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Images whose label is not among the k highest logits."""
    top = logits.topk(k, dim=1).indices
    return int((top != labels[:, None]).all(dim=1).sum())


def test_top1_top5_error_recounted_from_saved_test_logits(make_cfg, tmp_path, monkeypatch):
    saver = SaveTestLogits()
    cfg = make_cfg(
        *TINY,
        "trainer.max_epochs=2",
        f"data.num_test={N_TEST}",
        "data.eval_batch_size=64",
        "trainer.limit_test_batches=1.0",
    )
    train_with(cfg, saver, monkeypatch=monkeypatch)
    record = json.loads((Path(tmp_path) / "run" / "metrics.json").read_text())
    logits, labels = torch.cat(saver.logits), torch.cat(saver.labels)
    assert logits.shape == (N_TEST, 10) and labels.shape == (N_TEST,)  # every image once

    for k, key in ((1, "top1_err"), (5, "top5_err")):
        reported = record["test"][key]
        count = wrong(logits, labels, k)
        assert round(reported * N_TEST / 100) == count, (
            f"{key}: metrics.json says {reported}% = {reported * N_TEST / 100:.3f} of "
            f"{N_TEST} images wrong; recounted from the logits: {count}"
        )
        assert abs(reported - 100 * count / N_TEST) < 1e-4
        # the data can tell k from its neighbours (else an off-by-one in k would pass)
        assert count != wrong(logits, labels, k + 1)
        assert k == 1 or count != wrong(logits, labels, k - 1)
