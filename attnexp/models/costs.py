"""Parameter and MAC counting with one convention everywhere (profile, tables, logs).

Two numbers per forward pass (eval mode, batch 1 gives per-image figures):

``macs``
    Multiply-accumulates of convolutions (any dimension, grouped, depth-wise, transposed;
    the ECA 1-D conv included) and of linear layers, i.e. every matrix product in which one
    operand is a weight (does not depend on the input image): ``nn.Linear`` on 2-D or token
    (B, N, C) tensors, ``x @ W``, an einsum with a parameter. Biases, norms, activations and
    pooling are not counted. This is what papers and torchvision print as "GFLOPs".
``attention_ops``
    What that convention leaves out but what costs time in attention: matrix products
    between two activations (QK^T, AV, covariance pooling, ...) anywhere in the model, and,
    inside :class:`~attnexp.attention.base.AttentionModule` instances only, every other
    compute op – pooling, gates (sigmoid, softmax), normalisation, element-wise products –
    at one op per output element (per input element for reductions). Data movement (views,
    copies, concatenation, padding) and adding a bias (a weight) count nothing.

Counting happens at the ATen level with a ``TorchDispatchMode``, so any module is covered
without per-module formulas. By default the forward runs on a copy of the model on the
``meta`` device (shapes only, no arithmetic), which makes a ResNet-152 instant; a model that
cannot run on meta tensors (data-dependent control flow, tensors cached as plain
attributes) is counted by running it for real, with the same result.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

#: The convention, as printed next to every MAC figure.
MACS_CONVENTION = "conv+linear multiply-adds, as papers"
ATTENTION_OPS_CONVENTION = (
    "activation x activation products (QK^T, AV) anywhere, plus pooling, gates, norms and "
    "element-wise ops inside attention modules, 1 op per element"
)

aten = torch.ops.aten


def _ops(*names: str) -> set[Any]:
    return {getattr(aten, n) for n in names if hasattr(aten, n)}


_CONV = _ops("convolution", "_convolution", "convolution_overrideable")
# (index of the left operand, index of the right operand)
_PRODUCTS = {
    aten.mm: (0, 1),
    aten.bmm: (0, 1),
    aten.addmm: (1, 2),
    aten.baddbmm: (1, 2),
    aten.mv: (0, 1),
    aten.addmv: (1, 2),
    aten.dot: (0, 1),
    aten.vdot: (0, 1),
}
_SDPA = _ops(
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_fused_attention_overrideable",
)
# data movement and bookkeeping: no compute
_FREE = _ops(
    "clone", "copy_", "_to_copy", "cat", "stack", "detach", "lift_fresh", "lift_fresh_copy",
    "constant_pad_nd", "pad", "reflection_pad2d", "replication_pad2d", "index", "gather",
    "repeat", "roll", "index_select", "flip", "split_with_sizes", "split", "unbind", "chunk",
    "tril", "triu", "_local_scalar_dense", "masked_fill", "contiguous", "im2col", "col2im",
    "channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "set_", "resize_", "_unsafe_view",
    "_reshape_alias", "reshape", "alias", "expand", "view_copy", "expand_copy", "permute_copy",
    "transpose_copy", "t_copy", "unsqueeze_copy", "squeeze_copy", "slice_copy", "select_copy",
    "alias_copy", "unfold_copy", "as_strided_copy", "detach_copy", "_unsafe_split",
    "unsafe_split", "unsafe_chunk", "narrow_copy", "diagonal_copy", "unbind_copy",
    "split_copy", "split_with_sizes_copy", "view_as_real", "view_as_complex", "slice_scatter",
    "select_scatter", "as_strided_scatter", "new_empty_strided", "_to_dense", "to_mkldnn",
)  # fmt: skip
# tensors created from nothing or only from another tensor's shape: never input-dependent
_FACTORY = _ops(
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros",
    "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like",
    "new_full", "arange", "eye", "scalar_tensor", "linspace", "logspace", "fill_", "zero_",
    "rand", "randn", "rand_like", "randn_like", "randint", "randperm", "normal", "bernoulli",
)  # fmt: skip
_FREE |= _FACTORY
_ADD = _ops("add", "add_")


@dataclass(frozen=True)
class Costs:
    """Cost of one forward pass at ``input_shape`` (see the module docstring)."""

    params: int
    macs: int
    attention_ops: int
    input_shape: tuple[int, ...]

    @property
    def macs_with_attention(self) -> int:
        """``macs + attention_ops``: the paper count plus what it leaves out."""
        return self.macs + self.attention_ops

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _numel(x: object) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _product_macs(func: Any, a: torch.Tensor, b: torch.Tensor) -> int:
    packet = func._overloadpacket
    if packet in (aten.mm, aten.addmm):
        return a.shape[0] * a.shape[1] * b.shape[1]
    if packet in (aten.bmm, aten.baddbmm):
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if packet in (aten.mv, aten.addmv):
        return a.shape[0] * a.shape[1]
    return a.numel()  # dot, vdot


class _CostMode(TorchDispatchMode):
    """Accumulates MACs and attention ops of the ATen calls made while it is active.

    A tensor is *input-dependent* when it was computed from the model input; a product with
    an input-independent operand (a weight, or anything computed from weights only) is a
    linear layer (``macs``), one between two input-dependent tensors an attention product.
    """

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0
        self.attention_ops = 0
        self.attention_depth = 0
        self._dependent: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def mark_input(self, x: torch.Tensor) -> None:
        self._dependent[x] = True

    def _is_dependent(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and t in self._dependent

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if packet not in _FACTORY and any(self._is_dependent(t) for t in inputs):
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self._dependent[o] = True

        if packet in _CONV:
            x, weight = args[0], args[1]
            transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed"))
            per_element = weight.numel() // weight.shape[0]
            # weight (out, in/groups, *k): every output element takes in/groups * k MACs;
            # transposed (in, out/groups, *k): every input element scatters out/groups * k.
            self.macs += (x.numel() if transposed else out.numel()) * per_element
        elif packet in _PRODUCTS:
            i, j = _PRODUCTS[packet]
            a, b = args[i], args[j]
            n = _product_macs(func, a, b)
            if self._is_dependent(a) and self._is_dependent(b):
                self.attention_ops += n
            else:
                self.macs += n
        elif packet in _SDPA:
            q, k, v = args[0], args[1], args[2]
            # QK^T and AV: B*heads*Lq*Lk*(d_qk + d_v)
            self.attention_ops += (q.numel() + q.numel() // q.shape[-1] * v.shape[-1]) * k.shape[-2]
        elif self.attention_depth and not func.is_view and packet not in _FREE:
            if packet in _ADD and len(inputs) == 2 and sum(map(self._is_dependent, inputs)) == 1:
                return out  # adding a weight (a bias) counts nothing, as in conv and addmm
            outs = [_numel(o) for o in tree_flatten(out)[0]]
            self.attention_ops += max(outs + [_numel(t) for t in inputs[:1]])
        return out


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    compiled = model.__dict__.get("_compiled_call_impl")
    if compiled is not None:  # nn.Module.compile(): count the eager forward
        memo[id(compiled)] = None
    return copy.deepcopy(model, memo)


def _run(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> _CostMode:
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
        x = torch.zeros(input_shape, device=device)
        with torch.no_grad(), mode:
            mode.mark_input(x)
            model._call_impl(x)  # the eager forward with hooks, even after model.compile()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return mode


def count_costs(
    model: nn.Module,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    *,
    meta: bool = True,
) -> Costs:
    """Params, MACs and attention-only ops of one forward pass at ``input_shape`` (eval mode).

    MACs are per image when the batch dimension is 1 (use batch 1 for paper numbers). With
    ``meta`` (default) the pass runs on a meta-device copy (instant, the model is not
    touched); if the model cannot run on meta tensors it is run for real on its device.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if hasattr(model, "_orig_mod"):  # torch.compile wrapper: count the eager module
        model = model._orig_mod
    mode = None
    if meta:
        try:
            mode = _run(_meta_copy(model), input_shape, torch.device("meta"))
        except Exception:  # noqa: BLE001 - any failure on meta: count for real instead
            mode = None
    if mode is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if device.type == "meta":
            raise RuntimeError("count_costs: this model cannot run on the meta device")
        mode = _run(model, input_shape, device)
    return Costs(count_params(model), mode.macs, mode.attention_ops, input_shape)
