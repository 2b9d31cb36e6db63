"""The folded block tail (attnexp.models.fused_tail) equals BN -> gate -> add -> ReLU.

In float64, the folded formulation and the module-by-module reference must agree to rounding:
outputs, gradients of the input, the shortcut and every parameter, and BN's running
statistics, in training and eval mode and for every BN configuration. Blocks must use it only
where it is exact (a mean-pooled channel gate, a plain BatchNorm2d, no hooks), and every
registered gate module is run through both block paths.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnexp.attention import available, build_attention, fused
from attnexp.models import fused_tail
from attnexp.models.blocks import BasicBlock, Bottleneck

BN_CONFIGS = {
    "default": {},
    "no-affine": {"affine": False},
    "cumulative": {"momentum": None},
    "untracked": {"track_running_stats": False},
}


def _double(*modules: nn.Module) -> None:
    torch.manual_seed(1)
    for m in modules:
        m.double()
        for name, p in m.named_parameters():  # away from the init: every path carries weight
            with torch.no_grad():
                p.normal_(mean=1.0 if name.endswith("weight") else 0.0, std=0.4)


def _grads(out: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


@pytest.mark.parametrize("bn_config", list(BN_CONFIGS), ids=list(BN_CONFIGS))
@pytest.mark.parametrize("gate_name", ["none", "se", "eca"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_identity", [True, False], ids=["add", "no-add"])
def test_folded_tail_equals_reference(
    bn_config: str, gate_name: str, training: bool, with_identity: bool
) -> None:
    c = 12
    bns = [nn.BatchNorm2d(c, **BN_CONFIGS[bn_config]) for _ in range(2)]
    options = {"se": {"reduction": 4}, "eca": {"kernel_size": 3}}.get(gate_name, {})
    gate = None if gate_name == "none" else build_attention(gate_name, c, **options)
    _double(*bns, *([gate] if gate is not None else []))
    bns[1].load_state_dict(bns[0].state_dict())
    x = (
        torch.randn(4, c, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        * 3
        + 2
    )  # a mean far from 0: the shifted sums must stay exact
    identity = torch.randn(4, c, 5, 6, dtype=torch.float64) if with_identity else None
    for step in range(2):  # the second step starts from updated running statistics
        outs, grads = [], []
        for bn, folded in ((bns[0], False), (bns[1], True)):
            bn.train(training)
            xi = x.detach().clone().requires_grad_(True)
            ii = identity.detach().clone().requires_grad_(True) if with_identity else None
            with fused.mode("always" if folded else "never"):
                if folded:
                    fn = gate.mean_pool_gate() if gate is not None else None
                    out = fused_tail.bn_gate_add_relu(xi, bn, ii, fn)
                else:
                    y = bn(xi)
                    y = gate(y) if gate is not None else y
                    out = torch.relu(y + ii if ii is not None else y)
            params = list(bn.parameters()) + (list(gate.parameters()) if gate else [])
            leaves = [xi, *([ii] if ii is not None else []), *params]
            outs.append(out)
            grads.append(_grads(out, leaves))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12, msg=f"step {step}")
        for a, b in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for (name, a), b in zip(bns[1].state_dict().items(), bns[0].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def _blocks() -> dict[str, tuple[nn.Module, str]]:
    """A basic block with a projection, one with zero padding, a bottleneck: (block, the
    position of the branch-end gate)."""
    return {
        "basic-B": (BasicBlock(8, 16, stride=2, shortcut="B"), "after_conv2"),
        "basic-A": (BasicBlock(8, 16, stride=2, shortcut="A"), "after_conv3"),
        "bottleneck": (Bottleneck(16, 8, 32, stride=1), "after_conv3"),
    }


def _run_block(block: nn.Module, x: torch.Tensor, how: str) -> tuple[torch.Tensor, list]:
    xi = x.detach().clone().requires_grad_(True)
    with fused.mode(how):
        out = block(xi)
    return out, _grads(out, [xi, *block.parameters()])


@pytest.mark.parametrize("module", ["none", *available("gate")])
@pytest.mark.parametrize("block_kind", ["basic-B", "basic-A", "bottleneck"])
def test_blocks_equal_with_and_without_folding(module: str, block_kind: str) -> None:
    """Every registered gate at the branch end: the block's compiled-path formulation equals
    its reference (folded where the module allows it, unchanged elsewhere)."""
    block, position = _blocks()[block_kind]
    channels = block.out_channels
    if module != "none":  # every registered gate fits these blocks: no skip
        block.add_gate(position, build_attention(module, channels))
    _double(block)
    block.train()
    twin = copy.deepcopy(block)
    x = torch.randn(2, block.in_channels, 8, 8, dtype=torch.float64)
    ref_out, ref_grads = _run_block(block, x, "never")
    out, grads = _run_block(twin, x, "always")
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for (name, a), b in zip(twin.state_dict().items(), block.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("module", ["se", "eca"])
def test_mean_pooled_gates_are_folded(module: str) -> None:
    block = BasicBlock(8, 8)
    block.add_gate("after_conv2", build_attention(module, 8))
    assert block._fused_tail_plan("conv2", ("after_conv2", "after_conv3")) is not None


def test_folding_steps_aside_where_it_would_not_be_exact() -> None:
    """Max squeeze, two gates, a hook (identity blend, feature capture), SyncBatchNorm: the
    block runs module by module."""
    positions = ("after_conv2", "after_conv3")

    def block_with(*gates: nn.Module) -> BasicBlock:
        block = BasicBlock(8, 8)
        for gate in gates:
            block.add_gate("after_conv2", gate)
        return block

    assert (
        block_with(build_attention("se", 8, squeeze="max"))._fused_tail_plan("conv2", positions)
        is None
    )
    two = block_with(build_attention("se", 8), build_attention("eca", 8))
    assert two._fused_tail_plan("conv2", positions) is None
    blended = build_attention("se", 8)
    blended.reset_to_identity()
    assert block_with(blended)._fused_tail_plan("conv2", positions) is None
    captured = block_with(build_attention("se", 8))
    handle = captured.bn2.register_forward_hook(lambda *args: None)
    assert captured._fused_tail_plan("conv2", positions) is None
    handle.remove()
    assert captured._fused_tail_plan("conv2", positions) is not None
    synced = block_with(build_attention("eca", 8))
    synced.bn2 = nn.SyncBatchNorm(8)
    assert synced._fused_tail_plan("conv2", positions) is None
