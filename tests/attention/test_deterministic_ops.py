"""`trainer.deterministic=true` must work with every module on a GPU.

With ``torch.use_deterministic_algorithms(True)``, CUDA raises for ops that have no
deterministic kernel, e.g. the backward of adaptive average pooling, a classic in attention
code (``nn.AdaptiveAvgPool2d(1)`` for the squeeze). This runs on the CPU: it records every
ATen op of a forward + backward pass of each registered module (and of a backbone that uses
it) and checks none is on PyTorch's list of CUDA ops without a deterministic implementation
(torch.use_deterministic_algorithms docs, torch 2.x). The ops are those of the CPU
dispatch; a GPU run of the same check is still to be done (no GPU in CI).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnexp.attention import available, build_attention, build_conv, get_spec
from attnexp.models import build_model

#: Ops that raise on CUDA under deterministic mode (the forward ops listed are those whose
#: CUDA kernel is nondeterministic or raises; backward ops are named as ATen names them).
CUDA_NONDETERMINISTIC = {
    "_adaptive_avg_pool2d_backward",
    "_adaptive_avg_pool3d_backward",
    "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d_backward",
    "avg_pool3d_backward",
    "max_pool3d_with_indices_backward",
    "fractional_max_pool2d_backward",
    "fractional_max_pool3d_backward",
    "max_unpool2d",
    "max_unpool3d",
    "upsample_linear1d_backward",
    "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward",
    "upsample_trilinear3d_backward",
    "reflection_pad1d_backward",
    "reflection_pad2d_backward",
    "reflection_pad3d_backward",
    "replication_pad1d_backward",
    "replication_pad2d_backward",
    "replication_pad3d_backward",
    "grid_sampler_2d_backward",
    "grid_sampler_3d_backward",
    "embedding_bag",
    "_embedding_bag",
    "histc",
    "bincount",
    "kthvalue",
    "median",
    "nll_loss2d_forward",
    "ctc_loss",
    "_ctc_loss",
}


class _OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _ops_of_training_step(module: torch.nn.Module, x: torch.Tensor) -> set[str]:
    module.train()
    x = x.requires_grad_(True)
    with _OpNames() as recorder:
        module(x).float().square().mean().backward()
    return recorder.names


def _map_size(name: str) -> int:
    return max(8, get_spec(name).min_size)


@pytest.mark.parametrize("name", available("gate"))
def test_gate_training_step_uses_only_deterministic_cuda_ops(name: str) -> None:
    torch.manual_seed(0)
    size = _map_size(name)
    ops = _ops_of_training_step(build_attention(name, 32), torch.randn(2, 32, size, size))
    assert not ops & CUDA_NONDETERMINISTIC, sorted(ops & CUDA_NONDETERMINISTIC)


@pytest.mark.parametrize("name", available("conv"))
def test_conv_module_training_step_uses_only_deterministic_cuda_ops(name: str) -> None:
    torch.manual_seed(0)
    ops = _ops_of_training_step(build_conv(name, 32, 32, 2), torch.randn(2, 32, 8, 8))
    assert not ops & CUDA_NONDETERMINISTIC, sorted(ops & CUDA_NONDETERMINISTIC)


def test_backbones_pool_without_adaptive_pooling() -> None:
    """The classifier head's global pooling too (ResNet-50 and a CIFAR ResNet)."""
    for model, size in (("resnet50", 64), ("resnet20", 32)):
        ops = _ops_of_training_step(
            build_model(model, num_classes=10, placements=[{"module": "se"}]),
            torch.randn(2, 3, size, size),
        )
        assert not ops & CUDA_NONDETERMINISTIC, (model, sorted(ops & CUDA_NONDETERMINISTIC))


def test_the_recorder_sees_adaptive_pooling_backward() -> None:
    """The check is not vacuous: nn.AdaptiveAvgPool2d's backward is caught. (Output size 1
    is computed as a mean by PyTorch, on every device, and is fine.)"""
    ops = _ops_of_training_step(torch.nn.AdaptiveAvgPool2d(2), torch.randn(2, 4, 5, 5))
    assert "_adaptive_avg_pool2d_backward" in ops
