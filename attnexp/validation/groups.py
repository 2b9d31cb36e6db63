"""Apply each group's schema to its part of the resolved config (plain containers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnexp.validation.problems import Problem, fmt_value, unknown_key
from attnexp.validation.schema import validate
from attnexp.validation.schemas import callbacks as cb_schema
from attnexp.validation.schemas.data import DATASETS
from attnexp.validation.schemas.model import (
    CifarResNetSchema,
    ExtraPlacementSchema,
    ImageNetResNetSchema,
    PlacementSchema,
    PreActSchema,
    WideResNetSchema,
    backbone_schema,
)
from attnexp.validation.schemas.optim import OptimizerSchema, SchedulerSchema
from attnexp.validation.schemas.top import PathsSchema, TopSchema
from attnexp.validation.schemas.trainer import (
    MANAGED,
    TrainerSchema,
    strategies,
    trainer_arguments,
)


def check_groups(cfg: Mapping[str, Any]) -> list[Problem]:
    _, problems = validate(TopSchema, dict(cfg), "")
    bad = {p.key for p in problems}
    for group, check in (
        ("data", _data),
        ("model", _model),
        ("placement", lambda v: validate(PlacementSchema, v, "placement")[1]),
        ("extra_placements", _extra_placements),
        ("optimizer", _optimizer),
        ("scheduler", lambda v: validate(SchedulerSchema, v, "scheduler")[1]),
        ("trainer", _trainer),
        ("callbacks", lambda v: _entries(v, "callbacks")),
        ("logger", lambda v: _entries(v, "logger")),
        ("paths", lambda v: validate(PathsSchema, v, "paths")[1]),
        ("attention", _attention),
        ("conv", _conv),
    ):
        value = cfg.get(group)
        if group in bad or value is None:
            continue
        if group not in ("extra_placements", "conv") and not isinstance(value, Mapping):
            continue  # TopSchema reported it
        problems += check(value)
    return problems


def _choice(key: str, value: Any, what: str, valid: list[str]) -> Problem:
    return Problem(
        key,
        f"`{key}={fmt_value(value)}`: unknown {what}; valid choices: {', '.join(valid)}",
        "unknown_choice",
    )


def _data(data: Mapping[str, Any]) -> list[Problem]:
    from attnexp.data import available_datasets

    name = data.get("name")
    if name not in available_datasets():
        return [_choice("data.name", name, "dataset", available_datasets())]
    schema = DATASETS.get(str(name))
    if schema is None:
        return []
    problems = validate(schema, dict(data), "data")[1]
    for i, p in enumerate(problems):
        leaf = p.key.removeprefix("data.")
        owners = sorted(n for n, s in DATASETS.items() if leaf in s.model_fields)
        if p.kind == "unknown_key" and owners:
            problems[i] = Problem(
                p.key,
                f"`{p.key}`: not an option of data={name} (it is one of data="
                f"{', '.join(owners)}); valid keys of data={name}: "
                f"{', '.join(sorted(schema.model_fields))}",
                "option_key",
            )
    return problems


def _model(model: Mapping[str, Any]) -> list[Problem]:
    from attnexp.models import available_models

    name = model.get("name")
    if name not in available_models():
        return [_choice("model.name", name, "backbone", available_models())]
    schema = backbone_schema(str(name))
    problems = validate(schema, dict(model), "model")[1]
    for i, p in enumerate(problems):
        leaf = p.key.removeprefix("model.")
        if p.kind == "unknown_key" and leaf in _ALL_BACKBONE_KEYS:
            problems[i] = Problem(
                p.key,
                f"`{p.key}`: not an option of model={name}; valid keys of model={name}: "
                f"{', '.join(sorted(schema.model_fields))}",
                "option_key",
            )
    return problems


_ALL_BACKBONE_KEYS = {
    k
    for s in (ImageNetResNetSchema, CifarResNetSchema, PreActSchema, WideResNetSchema)
    for k in s.model_fields
}


def _extra_placements(extras: Any) -> list[Problem]:
    problems: list[Problem] = []
    for i, extra in enumerate(extras or []):
        if isinstance(extra, Mapping):
            problems += validate(ExtraPlacementSchema, dict(extra), f"extra_placements[{i}]")[1]
    return problems


def _signature_problems(extras: list[str], target: Any, prefix: str, what: str) -> list[Problem]:
    """Keys a pass-through namespace passes to ``target`` that it does not take."""
    try:
        cls = cb_schema.import_target(str(target))
    except (ImportError, AttributeError) as err:
        return [
            Problem(
                f"{prefix}._target_",
                f"`{prefix}._target_={fmt_value(target)}`: cannot import it ({err}); give an "
                "importable class path",
                "unknown_choice",
            )
        ]
    accepted = cb_schema.accepted_arguments(cls)
    if accepted is None:
        return []
    return [
        unknown_key(f"{prefix}.{k}", sorted(accepted), f"{what} `{target}`", "unknown_argument")
        for k in extras
        if k not in accepted
    ]


def _optimizer(opt: Mapping[str, Any]) -> list[Problem]:
    model, problems = validate(OptimizerSchema, dict(opt), "optimizer")
    if problems or model is None:
        return problems
    used = [k for k in opt if k not in ("_target_", "_partial_")]
    return _signature_problems(used, opt["_target_"], "optimizer", "the optimizer")


def _trainer(trainer: Mapping[str, Any]) -> list[Problem]:
    _, problems = validate(TrainerSchema, dict(trainer), "trainer")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, str) and strategy not in strategies():
        problems.append(_choice("trainer.strategy", strategy, "strategy", list(strategies())))
    valid = trainer_arguments()
    for key in trainer:
        if key in MANAGED:
            problems.append(
                Problem(
                    f"trainer.{key}",
                    f"`trainer.{key}`: set by attnexp from the {key} config group "
                    f"({key}=...), not as a trainer argument",
                    "unknown_key",
                )
            )
        elif key not in valid:
            problems.append(
                unknown_key(f"trainer.{key}", valid, "lightning.Trainer", "unknown_argument")
            )
    return problems


def _entries(group: Mapping[str, Any], name: str) -> list[Problem]:
    """``callbacks.<entry>`` / ``logger.<entry>``: null or {_target_, args...}."""
    problems: list[Problem] = []
    for entry, node in group.items():
        prefix = f"{name}.{entry}"
        if node is None:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            problems.append(
                Problem(
                    prefix,
                    f"`{prefix}={fmt_value(node)}`: expected null or a mapping with a _target_ "
                    "class and its arguments",
                    "invalid_value",
                )
            )
            continue
        schema = cb_schema.entry_schema(node["_target_"])
        _, found = validate(schema, dict(node), prefix)
        problems += found
        if found:
            continue
        args = [k for k in node if k not in ("_target_", "enabled")]
        problems += _signature_problems(args, node["_target_"], prefix, "class")
    return problems


def _attention(attention: Mapping[str, Any]) -> list[Problem]:
    """The module name and option names, through the attention registry (values are checked
    by the module itself when the backbone is built)."""
    from attnexp.attention import available
    from attnexp.attention.registry import get_spec

    name = attention.get("name", "none")
    if name == "none":
        extra = [k for k in attention if k != "name"]
        return [unknown_key(f"attention.{k}", ["name"], "attention=none") for k in extra]
    if name not in available():
        return [_choice("attention.name", name, "attention module", available())]
    valid = get_spec(str(name)).option_names()
    return [
        unknown_key(f"attention.{k}", valid, f"attention module {name!r}")
        for k in attention
        if k != "name" and k not in valid
    ]


def _conv(conv: Any) -> list[Problem]:
    from attnexp.attention import available
    from attnexp.attention.registry import get_spec

    module = conv if isinstance(conv, Mapping) else {"name": conv}
    name = module.get("name")
    if not isinstance(name, str) or name not in available("conv"):
        key = "conv.name" if isinstance(conv, Mapping) else "conv"
        return [_choice(key, name, "conv-kind module", available("conv"))]
    from attnexp.models.placement import CONV_PLACEMENT_KEYS

    # the conv mapping also says where the module goes (conv.sites, conv.stages, ...)
    valid = [*get_spec(str(name)).option_names(), *CONV_PLACEMENT_KEYS]
    return [
        unknown_key(f"conv.{k}", valid, f"conv module {name!r}")
        for k in module
        if k != "name" and k not in valid
    ]
