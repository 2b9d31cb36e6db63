"""Property-based fuzz of the config validator (hypothesis).

For every leaf of the composed default config and of every preset (``experiment=*``), a
value of the wrong type, and for numbers and choices one out of range, must be refused by
the validator with a problem naming that key, before any data is built (the validator is
pure: no dataset, no run dir). Attention-module options are checked by the module itself
(the registry builds it at the placement's channels), as the backbone build does. And
random valid configs must compose, pass and build.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from attnexp.errors import ConfigError
from attnexp.validation import check_config, find_problems
from attnexp.validation.resolve import UNRESOLVED_HYDRA, plain

CONF = Path(__file__).resolve().parents[2] / "attnexp" / "conf"
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# No shrinking: a failure lists every missed leaf already, and shrinking hundreds of draws
# takes minutes.
SETTINGS = settings(
    max_examples=3,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _compose_all() -> dict[str, dict[str, Any]]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from attnexp.runtime import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    out = {}
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        for name in ["default", *PRESETS]:
            overrides = [] if name == "default" else [f"experiment={name}"]
            cfg = compose(config_name="train", overrides=overrides)
            data, problems, _ = plain(cfg)
            assert not problems, (name, problems)
            data["paths"]["output_dir"] = "/tmp/attnexp-fuzz-never-created"
            out[name] = data
    return out


@pytest.fixture(scope="module")
def configs() -> dict[str, dict[str, Any]]:
    return _compose_all()


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every scalar or list leaf (lists of scalars are one leaf)."""
    if isinstance(node, dict):
        if not node and prefix:
            yield prefix, node
        for key, value in node.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list) and any(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            yield from leaves(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _set(cfg: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    import copy
    import re

    out = copy.deepcopy(cfg)
    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[|\]\.?", key) if p != ""]
    node: Any = out
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return out


def wrong_types(value: Any) -> st.SearchStrategy[Any]:
    """Values of another type than ``value`` (never what the schema could accept)."""
    if isinstance(value, bool):
        return st.sampled_from(["maybe", [True], {"x": 1}])
    if isinstance(value, (int, float)):
        return st.sampled_from(["abc", {"x": 1}, [[{"x": 1}]]])
    if isinstance(value, str):
        return st.sampled_from([[value], [[{"x": 1}]]])
    if isinstance(value, list):
        return st.sampled_from([{"x": 1}, 3.5j.__class__.__name__ + "!"]).map(
            lambda v: v if isinstance(v, dict) else {"bad": v}
        )
    if isinstance(value, dict):
        return st.sampled_from([[1], 2.5])
    return st.sampled_from([[[{"x": 1}]], {"x": [[{"y": 1}]]}])


def out_of_range(value: Any) -> st.SearchStrategy[Any] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return st.integers(max_value=-(10**6))
    if isinstance(value, float):
        return st.sampled_from([-1e9, math.inf, -math.inf, math.nan])
    return None


def _is_attention(key: str) -> bool:
    """Options of the attention/conv module: checked by the module (H-A's registry)."""
    return key.startswith(("attention.", "conv.")) and key not in ("attention.name", "conv.name")


def _problem_names(cfg: dict[str, Any], key: str) -> bool:
    problems = find_problems(cfg, environment=False, strict=True)
    return any(p.key == key or p.key.startswith((f"{key}.", f"{key}[")) for p in problems)


def _module_refuses(cfg: dict[str, Any], key: str, value: Any) -> bool:
    """The attention module (built by the registry as the backbone build does) refuses the
    option with a ConfigError naming it."""
    from attnexp.attention.registry import build_attention, build_conv, get_spec
    from attnexp.models.placement import CONV_PLACEMENT_KEYS, parse_placements

    group, option = key.split(".", 1)
    module = dict(cfg[group])
    module[option] = value
    try:
        if group == "conv":
            parse_placements([], module)  # where the conv module goes: model-independent
            module = {k: v for k, v in module.items() if k not in CONV_PLACEMENT_KEYS}
        name = module.pop("name")
        if get_spec(name).kind == "conv":
            build_conv(name, 64, 64, 1, **module)
        else:
            build_attention(name, 64, **module)
    except ConfigError as err:
        return option in str(err)
    return False


def _distinct(configs: dict[str, dict[str, Any]]) -> dict[tuple[str, str], tuple[str, Any]]:
    """(key, value repr) -> (config name, value): a leaf shared by presets is tested once."""
    out: dict[tuple[str, str], tuple[str, Any]] = {}
    for name, cfg in configs.items():
        for key, value in leaves(cfg):
            if value == UNRESOLVED_HYDRA or key == "paths.output_dir":
                continue
            out.setdefault((key, repr(value)), (name, value))
    return out


def test_every_leaf_has_a_schema(configs: dict[str, dict[str, Any]]) -> None:
    """No key of our own YAML files slips past the schema (strict mode: no YAML leniency)."""
    for name, cfg in configs.items():
        problems = find_problems(cfg, environment=False, strict=True)
        assert not problems, f"{name}: {[p.message for p in problems]}"


@SETTINGS
@given(data=st.data())
def test_wrong_type_and_out_of_range_name_the_key(data: st.DataObject, configs) -> None:
    distinct = _distinct(configs)
    occurrences = sum(1 for cfg in configs.values() for _ in leaves(cfg))
    missed: list[str] = []
    ranged = 0
    for (key, _), (name, value) in sorted(distinct.items()):
        cfg = configs[name]
        subs = [("wrong type", data.draw(wrong_types(value), label=key))]
        bad_range = out_of_range(value)
        if bad_range is not None:
            subs.append(("out of range", data.draw(bad_range, label=f"{key} range")))
            ranged += 1
        for what, bad in subs:
            if _is_attention(key):
                refused = _module_refuses(cfg, key, bad)
            else:
                refused = _problem_names(_set(cfg, key, bad), key)
            if not refused:
                missed.append(f"{name}: {key}={value!r} -> {bad!r} ({what}) not refused")
    print(
        f"\nfuzz: {len(configs)} configs (default + {len(PRESETS)} presets), {occurrences} leaf "
        f"occurrences, {len(distinct)} distinct (key, value) leaves, all with a wrong type, "
        f"{ranged} numeric also out of range"
    )
    assert not missed, "\n".join(missed)


VALID_KEYS = st.fixed_dictionaries(
    {
        "attention": st.sampled_from(["none", "se", "cbam", "eca", "gc", "bam", "sk"]),
        "model": st.sampled_from(["resnet20", "resnet32", "wrn16_8"]),
        "scheduler": st.sampled_from(["constant", "cosine", "onecycle"]),
        "seed": st.integers(0, 2**32 - 1),
        "lr": st.floats(1e-5, 1.0),
        "batch": st.integers(1, 64),
        "smoothing": st.floats(0.0, 0.9),
        "epochs": st.integers(1, 300),
        "stages": st.sampled_from(["all", "[1]", "[2,3]", "[3]"]),
        "blocks": st.sampled_from(["all", "first", "last", "every_2"]),
        "clip": st.one_of(st.none(), st.floats(0.0, 10.0)),
    }
)


@settings(max_examples=6, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(choice=VALID_KEYS)
def test_valid_random_configs_compose_check_and_build(
    choice: dict[str, Any], tmp_path_factory
) -> None:
    from attnexp import builders
    from attnexp.compose import compose_config

    if choice["attention"] == "bam":  # between stages: after stage 1..N-1, no block choice
        choice = {**choice, "stages": "all", "blocks": "all"}
    clip = "null" if choice["clip"] is None else repr(choice["clip"])
    overrides = [
        f"attention={choice['attention']}",
        f"model={choice['model']}",
        f"scheduler={choice['scheduler']}",
        f"seed={choice['seed']}",
        f"optimizer.lr={choice['lr']!r}",
        f"data.batch_size={choice['batch']}",
        f"training.label_smoothing={choice['smoothing']!r}",
        f"trainer.max_epochs={choice['epochs']}",
        f"placement.stages={choice['stages']}",
        f"placement.blocks={choice['blocks']}",
        f"trainer.gradient_clip_val={clip}",
        "trainer.accelerator=cpu",
    ]
    out = tmp_path_factory.mktemp("valid") / "run"
    cfg = compose_config(overrides, out)
    check_config(cfg)
    assert not out.exists(), "the validator must not create the run dir"
    model = builders.build_backbone(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
