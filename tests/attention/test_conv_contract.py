"""The contract every conv-kind module keeps: it can stand in for a padded 3x3 conv.

Parametrised over ``available("conv")`` x the conv checks of
:mod:`attnexp.attention.contract`, so a newly registered conv module is covered without
editing this file. Paper-specific properties (which modules normalise their branch weights
with a softmax, which include BN + ReLU) are checked here by name.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from attnexp.attention import available, build_conv, get_spec, record_attention
from attnexp.attention.contract import checks_for, run_check

CONV_MODULES = available("conv")
CONV_CHECKS = [c.name for c in checks_for("sk")]
CASES = [(name, check) for name in CONV_MODULES for check in CONV_CHECKS]
#: Modules whose paper normalises the branch weights with a softmax over branches/experts
#: (splat only with radix > 1, its default).
SOFTMAX_OVER_BRANCHES = {"sk", "splat", "psa", "dynamic_conv"}


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    # Tiny tensors: one intra-op thread is faster and does not stall on a busy shared core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_registry_has_the_branch_family() -> None:
    assert {"conv3x3", "condconv"} | SOFTMAX_OVER_BRANCHES <= set(CONV_MODULES)


def test_the_conv_checks_cover_the_contract() -> None:
    expected = {
        "is_a_zoo_module",
        "output_size_matches_a_padded_3x3_conv",
        "conv_gradients_reach_every_parameter",
        "conv_channels_last_gives_the_same_output",
        "conv_bf16_autocast_is_finite",
        "branch_weights_are_exposed_while_recording",
        "unknown_option_lists_the_valid_ones",
        "every_option_has_a_default",
        "declares_whether_it_includes_norm_act",
        "uses_only_deterministic_cuda_ops",
        "refuses_an_identity_start",
    }
    assert expected <= set(CONV_CHECKS)


@pytest.mark.parametrize(("name", "check"), CASES)
def test_conv_contract(name: str, check: str) -> None:
    run_check(name, check)


@pytest.mark.parametrize("name", sorted(SOFTMAX_OVER_BRANCHES))
def test_softmax_branch_weights_sum_to_one(name: str) -> None:
    module = build_conv(name, 32, 64, 1).eval()
    with record_attention(module) as recorded, torch.no_grad():
        module(torch.randn(3, 32, 8, 8))
        weights = recorded[""].attention_maps["branch"]
    torch.testing.assert_close(weights.sum(1), torch.ones_like(weights.sum(1)))


def test_norm_act_flags_follow_the_papers() -> None:
    for name in ("conv3x3", "sk", "splat", "psa", "condconv", "dynamic_conv"):
        # BN+ReLU inside the branches in the SK and ResNeSt papers only.
        assert get_spec(name).cls.includes_norm_act == (name in {"sk", "splat"}), name
