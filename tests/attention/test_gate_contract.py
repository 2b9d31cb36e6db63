"""The contract every gate (and stage) module keeps: (B, C, H, W) in, the same out.

Parametrised over ``available("gate")`` x the gate checks of
:mod:`attnexp.attention.contract` – the whole registry – so a module registered in any file
of the zoo (or loaded from user code) is covered without editing this file. The same
checks run from the command line: ``python -m attnexp.attention check <name>``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from attnexp.attention import available, build_attention, init_identity
from attnexp.attention.contract import ContractViolation, checks_for, run_check

GATES = available("gate")
GATE_CHECKS = [c.name for c in checks_for("se")]
CASES = [(name, check) for name in GATES for check in GATE_CHECKS]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not stall on a busy shared core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_has_the_channel_and_hybrid_families() -> None:
    mine = {"se", "eca", "srm", "gsop", "ge", "cbam", "cbam_channel", "cbam_spatial", "bam"}
    mine |= {"coord", "triplet", "simam", "sge", "shuffle", "polarized", "a2"}
    assert mine <= set(GATES)


def test_the_gate_checks_cover_the_contract() -> None:
    expected = {
        "is_a_zoo_module",
        "keeps_shape_and_dtype",
        "trains_on_a_batch_of_one",
        "gradients_reach_every_parameter",
        "gradients_are_finite_on_the_smallest_map",
        "eval_output_is_deterministic",
        "channels_last_gives_the_same_output",
        "bf16_autocast_is_finite",
        "maps_are_exposed_only_while_recording",
        "unknown_option_lists_the_valid_ones",
        "every_option_has_a_default",
        "uses_only_deterministic_cuda_ops",
        "starts_as_the_identity_and_learns",
    }
    assert expected <= set(GATE_CHECKS)
    assert {c.name for c in checks_for("bam")} == set(GATE_CHECKS)  # stage modules too


@pytest.mark.parametrize(("name", "check"), CASES)
def test_gate_contract(name: str, check: str) -> None:
    run_check(name, check)


class _ShapeBreaker(torch.nn.Module):
    """Not a zoo gate: halves the channels. The checks must catch it, not pass it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, max(channels // 2, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_the_checks_catch_a_broken_module() -> None:
    from attnexp.attention import registry

    registry.register("_test_contract_broken", paper="test only")(_ShapeBreaker)
    try:
        for check in ("is_a_zoo_module", "keeps_shape_and_dtype"):
            with pytest.raises(ContractViolation, match="_test_contract_broken"):
                run_check("_test_contract_broken", check)
    finally:
        registry._REGISTRY.pop("_test_contract_broken", None)


def test_identity_start_is_exact_for_every_gate_in_float32() -> None:
    """The acceptance figure of issue 15 for the zoo alone: max |f(x) - x| < 1e-6."""
    worst = {}
    for name in GATES:
        torch.manual_seed(0)
        module = init_identity(build_attention(name, 64)).train()
        x = torch.randn(4, 64, 9, 7)
        with torch.no_grad():
            worst[name] = (module(x) - x).abs().max().item()
    assert max(worst.values()) < 1e-6, {k: v for k, v in worst.items() if v >= 1e-6}
