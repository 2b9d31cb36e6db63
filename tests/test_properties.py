"""Property-based checks (hypothesis): random valid placements build and run; random
invalid configs fail with ConfigError before any data is loaded or training starts.

Hundreds of examples each, within seconds: the placement property builds a ResNet-20 on
16-24 pixel inputs; the invalid-config property composes the default config once and applies
each example's overrides to a copy (values parsed by Hydra's own override grammar), so an
example costs the validation, not a Hydra composition. Failing examples are kept in the
database configured in tests/conftest.py (outside the repo) and replayed first.
"""

from __future__ import annotations

import copy
import inspect
import string
from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning import Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.attention import available, get_spec
from attnexp.compose import compose_config
from attnexp.data import available_datasets
from attnexp.errors import ConfigError
from attnexp.models import build_model
from attnexp.models.placement import POSITIONS
from attnexp.training.optim import SCHEDULES
from attnexp.validation import validate_config

GATES = available("gate")
BLOCK_POSITIONS = [
    "before_block",
    "after_conv1",
    "after_conv2",
    "after_conv3",
    "after_add",
    "identity",
]
#: Hundreds of examples: enough to find a bad combination, each example milliseconds.
MANY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_placements(draw: st.DrawFn) -> list[dict]:
    """1-2 placements of random gate modules at random valid places of a CIFAR ResNet-20."""
    placements = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from([g for g in GATES if g != "none"]))
        between = (
            draw(st.booleans()) if get_spec(name).kind == "stage" else draw(st.integers(0, 7)) == 0
        )
        if between:
            position, stages = "between_stages", draw(st.sampled_from([[1], [2], [1, 2], "all"]))
        else:
            position = draw(st.sampled_from(BLOCK_POSITIONS))
            stages = draw(st.sampled_from([[1], [2], [3], [1, 3], "all"]))
        blocks = draw(st.sampled_from(["all", "first", "last", "every_2", [0], [1, 2]]))
        placements.append(
            {
                "module": {"name": name},
                "position": position,
                "stages": stages,
                "blocks": "all" if position == "between_stages" else blocks,
            }
        )
    return placements


@MANY
@given(
    placements=valid_placements(),
    height=st.sampled_from([16, 24]),
    width=st.sampled_from([16, 24]),
    batch=st.integers(1, 3),
)
def test_random_valid_placements_build_and_run(
    placements: list[dict], height: int, width: int, batch: int
) -> None:
    model = build_model(
        "resnet20", num_classes=7, placements=placements, image_size=min(height, width)
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, height, width))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


def _identifier() -> st.SearchStrategy[str]:
    return st.text(string.ascii_lowercase + "_", min_size=3, max_size=12).filter(
        lambda s: not s.startswith("_")
    )


# Each strategy produces overrides that must be rejected, and a word the message must contain.
INVALID = st.one_of(
    _identifier()
    .filter(lambda s: s not in available())
    .map(lambda s: ([f"attention.name={s}"], "attention module")),
    st.sampled_from(["se", "cbam", "eca", "bam", "gc"]).flatmap(
        lambda m: (
            _identifier()
            .filter(lambda o: o not in get_spec(m).option_names())
            .map(lambda o: ([f"attention.name={m}", f"+attention.{o}=3"], o))
        )
    ),
    st.sampled_from(["se", "cbam", "bam"]).map(
        lambda m: ([f"attention.name={m}", "+attention.reduction=0"], "reduction")
    ),
    st.sampled_from([2, 4, 6]).map(
        lambda k: (["attention.name=eca", f"+attention.kernel_size={k}"], "kernel")
    ),
    st.sampled_from([[4], [0], [5], [1, 9]]).map(
        lambda s: (["attention.name=se", f"placement.stages=[{','.join(map(str, s))}]"], "stages")
    ),
    _identifier()
    .filter(lambda p: p not in POSITIONS)
    .map(lambda p: (["attention.name=se", f"placement.position={p}"], "position")),
    st.sampled_from(["every_0", "second", "every_x"]).map(
        lambda b: (["attention.name=se", f"placement.blocks={b}"], "blocks")
    ),
    _identifier()
    .filter(lambda d: d not in available_datasets())
    .map(lambda d: ([f"data.name={d}"], "dataset")),
    _identifier().map(lambda m: ([f"model.name={m}"], "model")),
    st.sampled_from([-0.1, 0.0]).map(lambda lr: ([f"optimizer.lr={lr}"], "optimizer.lr")),
    _identifier()
    .filter(lambda k: k not in inspect.signature(Trainer).parameters)
    .map(lambda k: ([f"+trainer.{k}=1"], "trainer")),
    _identifier()
    .filter(lambda s: s not in SCHEDULES)
    .map(lambda s: ([f"scheduler.name={s}"], "scheduler")),
)


@cache
def _base_config() -> DictConfig:
    """The default training config (attention=none), composed once."""
    return compose_config([], "/nonexistent/attnexp-property-run")


def _apply(overrides: list[str]) -> DictConfig:
    """A copy of the base config with ``overrides`` applied as Hydra would apply them to
    values (Hydra's parser; ``+key`` adds a key)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = copy.deepcopy(_base_config())
    with open_dict(cfg):
        for o in OverridesParser.create().parse_overrides(overrides):
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False, force_add=True)
    return cfg


def test_applied_overrides_equal_hydra_composition() -> None:
    """The shortcut above gives the config Hydra composes for such overrides."""
    overrides = ["attention.name=se", "+attention.reduction=8", "placement.stages=[1,3]"]
    composed = compose_config(overrides, "/nonexistent/attnexp-property-run")
    assert OmegaConf.to_container(_apply(overrides)) == OmegaConf.to_container(composed)


@MANY
@given(case=INVALID)
def test_random_invalid_configs_fail_before_training(case: tuple[list[str], str]) -> None:
    overrides, word = case
    with pytest.raises(ConfigError) as info:
        validate_config(_apply(overrides))
    assert word.split(".")[-1].lower() in str(info.value).lower()
