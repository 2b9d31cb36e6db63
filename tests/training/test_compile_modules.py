"""torch.compile (inductor) and eager agree for every registered gate and stage module.

Forward outputs and gradients (input and parameters) in float64, where rounding cannot flip
a ReLU or a max near a tie (docs/benchmarks.md), so any difference is the compiler's or the
fused path's (attnexp.attention.fused runs while compiling). Small shapes, ``dynamic=False``;
none / se / cbam / eca run in the default suite, every other module in the slow suite.
Needs the C++ toolchain inductor uses on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnexp.attention import available, build_attention

DEFAULT = ("none", "se", "cbam", "eca")
MODULES = [*available("gate"), *available("stage")]
PARAMS = [pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow) for name in MODULES]


def _grads(module: nn.Module, x: torch.Tensor, fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    grads = [x.grad] + [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()
    ]
    return out.detach(), grads


@pytest.mark.parametrize("name", PARAMS)
def test_compiled_equals_eager(name: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = build_attention(name, 64).double().train()
    for p in module.parameters():  # no zero-initialised layer hides a gradient path
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    ref_out, ref_grads = _grads(module, x, module)
    ref_state = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(state)  # same BN running statistics for the compiled pass
    compiled = torch.compile(module, dynamic=False)
    out, grads = _grads(module, x, compiled)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=f"gradient {i}")
    for key, value in module.state_dict().items():  # BN running statistics updated alike
        torch.testing.assert_close(value, ref_state[key], rtol=1e-9, atol=1e-12, msg=key)
