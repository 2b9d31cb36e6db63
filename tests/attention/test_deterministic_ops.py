"""`trainer.deterministic=true` must work with every module on a GPU.

With ``torch.use_deterministic_algorithms(True)``, CUDA raises for ops that have no
deterministic kernel, e.g. the backward of adaptive average pooling, a classic in attention
code (``nn.AdaptiveAvgPool2d(1)`` for the squeeze). The per-module check is part of the
zoo's contract (:func:`attnexp.attention.contract.uses_only_deterministic_cuda_ops`, run
for every module by test_gate_contract / test_conv_contract); it records every ATen op of a
forward + backward pass and compares them with PyTorch's list of CUDA ops without a
deterministic implementation. The ops are those of the CPU dispatch; a GPU run of the same
check is still to be done (no GPU in CI). Here: the backbones, and that the recorder works.
"""

from __future__ import annotations

import pytest
import torch

from attnexp.attention.contract import CUDA_NONDETERMINISTIC, ops_of_training_step
from attnexp.models import build_model


@pytest.mark.parametrize(("model", "size"), [("resnet50", 64), ("resnet20", 32)])
def test_backbones_pool_without_adaptive_pooling(model: str, size: int) -> None:
    """The classifier head's global pooling too (ResNet-50 and a CIFAR ResNet)."""
    torch.manual_seed(0)
    ops = ops_of_training_step(
        build_model(model, num_classes=10, placements=[{"module": "se"}]),
        torch.randn(2, 3, size, size),
    )
    assert not ops & CUDA_NONDETERMINISTIC, (model, sorted(ops & CUDA_NONDETERMINISTIC))


def test_the_recorder_sees_adaptive_pooling_backward() -> None:
    """The check is not vacuous: nn.AdaptiveAvgPool2d's backward is caught. (Output size 1
    is computed as a mean by PyTorch, on every device, and is fine.)"""
    ops = ops_of_training_step(torch.nn.AdaptiveAvgPool2d(2), torch.randn(2, 4, 5, 5))
    assert "_adaptive_avg_pool2d_backward" in ops
