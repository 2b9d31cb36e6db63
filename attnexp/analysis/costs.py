"""Parameter and MAC counting with one convention everywhere (profile, tables, logs).

``macs``: multiply-accumulates of convolutions and linear layers (matrix products of
weights), what papers and torchvision print as "GFLOPs". ``attention_ops``: what those
counts leave out but what costs time in attention modules: matrix products between
activations (QK^T, AV), and, inside attention modules only, pooling, gates (sigmoid,
softmax, ...), normalisation and element-wise products, one op per output (or input, for
reductions) element. Counting happens at the ATen level, so any module is covered
without per-module formulas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_CONV = {aten.convolution, aten._convolution, aten.convolution_overrideable}
_WEIGHT_MM = {aten.mm, aten.addmm}
_ACT_MM = {aten.bmm, aten.baddbmm}
_SDPA = {
    getattr(aten, n)
    for n in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math",
    )
    if hasattr(aten, n)
}
_FREE = {  # data movement and bookkeeping: not compute
    aten.clone, aten.copy_, aten._to_copy, aten.cat, aten.stack, aten.detach, aten.empty_like,
    aten.zeros_like, aten.ones_like, aten.fill_, aten.zero_, aten.new_zeros, aten.new_empty,
    aten.constant_pad_nd, aten.index, aten.gather, aten.repeat, aten.lift_fresh, aten.roll,
    aten.pad, aten.masked_fill, aten.index_select, aten.flip, aten.arange, aten.zeros, aten.ones,
    aten.empty, aten.full, aten.scalar_tensor, aten._local_scalar_dense, aten.split_with_sizes,
    aten.split, aten.unbind, aten.chunk, aten.tril, aten.triu, aten.eye,
}


@dataclass(frozen=True)
class Costs:
    params: int
    macs: int
    attention_ops: int
    input_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _numel(x: object) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


class _CostMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.attention_ops = 0
        self.attention_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        packet = func._overloadpacket
        if packet in _CONV:
            weight = args[1]
            self.macs += out.numel() * (weight.numel() // weight.shape[0])
        elif packet in _WEIGHT_MM:
            a, b = (args[1], args[2]) if packet is aten.addmm else (args[0], args[1])
            self.macs += a.shape[0] * a.shape[1] * b.shape[1]
        elif packet in _ACT_MM:
            a, b = (args[1], args[2]) if packet is aten.baddbmm else (args[0], args[1])
            self.attention_ops += a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
        elif packet in _SDPA:
            q, k = args[0], args[1]
            self.attention_ops += 2 * q.numel() * k.shape[-2]
        elif self.attention_depth and not func.is_view and packet not in _FREE:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            ins = [a for a in args if isinstance(a, torch.Tensor)]
            self.attention_ops += max([_numel(o) for o in outs] + [_numel(a) for a in ins[:1]])
        return out


def count_costs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> Costs:
    """Params, MACs and attention-only ops of one forward pass at ``input_shape`` (eval mode).

    MACs are per image when the batch dimension is 1 (use batch 1 for paper numbers).
    """
    from attnexp.attention.base import AttentionModule

    mode = _CostMode()
    handles = []

    def enter(*_: object) -> None:
        mode.attention_depth += 1

    def leave(*_: object) -> None:
        mode.attention_depth -= 1

    for module in model.modules():
        if isinstance(module, AttentionModule) and type(module).__name__ != "NoAttention":
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        x = torch.zeros(input_shape, device=device)
        with torch.no_grad(), mode:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Costs(count_params(model), mode.macs, mode.attention_ops, tuple(input_shape))
