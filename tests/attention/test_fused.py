"""The fused formulations (attnexp.attention.fused) equal the reference layers.

Each module is run in float64 with the reference layers (``fused.mode("never")``) and with
the fused formulations forced eagerly (``mode("always")``, what ``torch.compile`` traces):
outputs, input gradients and parameter gradients must agree to float64 rounding. Together
with tests/training/test_compile_modules.py (compiled vs eager) this pins the fused path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnexp.attention import build_attention, fused

#: Every module that calls a fused helper, with the option variants that change the path.
CASES = [
    ("se", {}),
    ("se", {"reduction": 4}),
    ("eca", {}),
    ("eca", {"kernel_size": 5}),
    ("cbam", {}),
    ("cbam", {"channel_pool": "avg"}),
    ("cbam_channel", {"channel_pool": "avg_max"}),
    ("gc", {}),
    ("gc", {"fusion": "scale", "zero_init_last": False}),
]


def _run(module: nn.Module, x: torch.Tensor, how: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    with fused.mode(how):
        out = module(x)
    # a fixed random projection: every output element's gradient matters
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    grads = [x.grad] + [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()
    ]
    return out.detach(), grads


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{o}" for n, o in CASES])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_equals_reference(name: str, options: dict, channels_last: bool) -> None:
    torch.manual_seed(0)
    module = build_attention(name, 32, **options).double().train()
    for p in module.parameters():  # no zero-initialised layer hides a gradient path
        nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 32, 6, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref_out, ref_grads = _run(module, x, "never")
    out, grads = _run(module, x, "always")
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_helpers_match_their_layers() -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 20, dtype=torch.float64)
    x = torch.randn(4, 20, 5, 3, dtype=torch.float64)
    lin = nn.Linear(20, 7).double()
    conv1d = nn.Conv1d(1, 1, 5, padding=2, bias=True).double()
    conv = nn.Conv2d(20, 1, 1, bias=True).double()
    weights = torch.rand(4, 15, dtype=torch.float64)
    mlp = nn.Sequential(nn.Linear(20, 3), nn.ReLU(), nn.Linear(3, 20)).double()
    with fused.mode("always"):
        torch.testing.assert_close(fused.linear(z, lin), lin(z))
        torch.testing.assert_close(fused.channel_conv1d(z, conv1d), conv1d(z[:, None])[:, 0])
        torch.testing.assert_close(fused.conv1x1_to_one(x, conv), conv(x))
        torch.testing.assert_close(
            fused.weighted_pool(x, weights), (x.flatten(2) * weights[:, None]).sum(-1)
        )
        torch.testing.assert_close(fused.shared_mlp_sum(mlp, z, 2 * z), mlp(z) + mlp(2 * z))


def test_auto_is_reference_eagerly_and_mode_is_checked() -> None:
    assert not fused.active()  # eager: the library layers
    with fused.mode("always"):
        assert fused.active()
    with pytest.raises(ValueError, match="auto, always, never"), fused.mode("sometimes"):
        pass
