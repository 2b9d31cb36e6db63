"""Typed schemas with pydantic, and their errors as :class:`Problem` s.

Each config group declares a pydantic model in :mod:`attnexp.validation.schemas` (one
module per group): the type of every key, its range or choices, ``extra="forbid"`` so an
unknown key is an error. Validation is strict (no coercion: ``seed="1"`` is a string, not an
int; ``true`` is not a number) and collects every error; this module turns pydantic's
errors into one :class:`Problem` per key, stating the valid type and range in words
(:func:`requirement`), which is also what the troubleshooting page prints per key.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from attnexp.validation.problems import Problem, fmt_value, unknown_key


class Schema(BaseModel):
    """Base of every group schema: strict types, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PassThrough(Schema):
    """A schema whose extra keys are passed on to a class and checked against its signature."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


# --------------------------------------------------------------------------- rendering
def _constraints(metadata: Sequence[Any]) -> list[str]:
    out = []
    for m in metadata:
        if isinstance(m, at.Ge):
            out.append(f">= {m.ge}")
        elif isinstance(m, at.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, at.Le):
            out.append(f"<= {m.le}")
        elif isinstance(m, at.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, at.MinLen) and m.min_length:
            out.append("non-empty")
        elif isinstance(m, FieldInfo):
            out.extend(_constraints(m.metadata))
    return out


def _range(parts: list[str]) -> str:
    """``['>= 0', '< 1']`` -> ``in [0, 1)``."""
    lows = [p for p in parts if p.startswith(">")]
    highs = [p for p in parts if p.startswith("<")]
    rest = [p for p in parts if p not in lows and p not in highs]
    if len(lows) == 1 and len(highs) == 1:
        lo, hi = lows[0], highs[0]
        left = "[" if lo.startswith(">=") else "("
        right = "]" if hi.startswith("<=") else ")"
        text = f"in {left}{lo.split()[-1]}, {hi.split()[-1]}{right}"
        return " ".join([*rest, text])
    return " ".join([*rest, *lows, *highs])


def render(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """The valid values of a type annotation in words: ``an integer >= 1``, ``one of: a, b``."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        return render(base, [*metadata, *extra])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        parts = [render(a) for a in args if a is not type(None)]
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if literals and len(literals) == len([a for a in args if a is not type(None)]):
            values = [v for lit in literals for v in typing.get_args(lit)]
            parts = [render(Literal[tuple(values)])]  # type: ignore[valid-type]
        text = " or ".join(parts)
        return f"null or {text}" if type(None) in args else text
    if origin is Literal:
        values = [fmt_value(v) for v in typing.get_args(annotation)]
        return values[0] if len(values) == 1 else "one of: " + ", ".join(values)
    extra = _range(_constraints(metadata))
    suffix = f" {extra}" if extra else ""
    if origin in (list, tuple, Sequence):
        (item, *_) = typing.get_args(annotation) or (Any,)
        lead = "a non-empty list" if "non-empty" in extra else "a list"
        return f"{lead} of {_plural(render(item))}"
    if origin in (dict, Mapping):
        return "a mapping"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return f"an integer{suffix}"
    if annotation is float:
        return f"a finite number{suffix}"
    if annotation is str:
        return "a non-empty string" if "non-empty" in extra else "a string"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(fields(annotation))
    if annotation is Any:
        return "any value"
    return getattr(annotation, "__name__", str(annotation))


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            noun, _, rest = text[len(article) :].partition(" ")
            return f"{noun}s {rest}".strip()
    return text


def fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Fields by the key a config uses (the alias where there is one, e.g. ``_target_``)."""
    return {f.alias or n: f for n, f in model.model_fields.items()}


def field_requirement(model: type[BaseModel], name: str) -> str:
    field = fields(model)[name]
    if field.description:
        return field.description
    return render(field.annotation, field.metadata)


def requirement(model: type[BaseModel], path: Sequence[str | int]) -> str:
    """What ``model`` accepts at ``path`` (field names and list indices)."""
    current: Any = model
    metadata: Sequence[Any] = ()
    for i, seg in enumerate(path):
        if isinstance(current, type) and issubclass(current, BaseModel):
            if seg not in fields(current):
                return "nothing (unknown key)"
            if i == len(path) - 1:
                return field_requirement(current, str(seg))
            field = fields(current)[str(seg)]
            current, metadata = field.annotation, field.metadata
            continue
        current = _descend(current, seg)
        metadata = ()
    return render(current, metadata)


def _descend(annotation: Any, seg: str | int) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _descend(args[0], seg)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if typing.get_origin(a) in (list, dict, Annotated) or (
                isinstance(a, type) and issubclass(a, BaseModel)
            ):
                return _descend(a, seg)
        return Any
    if origin is list and isinstance(seg, int):
        return args[0] if args else Any
    if origin is dict:
        return args[1] if len(args) > 1 else Any
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = fields(annotation).get(str(seg))
        return field.annotation if field else Any
    return Any


# --------------------------------------------------------------------------- validating
def _key_path(loc: Sequence[str | int], data: Any, kind: str) -> list[str | int]:
    """The config path of a pydantic error location (union-member tags dropped)."""
    path: list[str | int] = []
    current = data
    for i, seg in enumerate(loc):
        if (
            isinstance(current, Mapping)
            and seg in current
            or isinstance(current, list)
            and isinstance(seg, int)
            and 0 <= seg < len(current)
        ):
            path.append(seg)
            current = current[seg]
        elif kind == "missing" and i == len(loc) - 1:
            path.append(seg)
    return path


def dotted(prefix: str, path: Sequence[str | int]) -> str:
    key = prefix
    for seg in path:
        key = f"{key}[{seg}]" if isinstance(seg, int) else (f"{key}.{seg}" if key else str(seg))
    return key


def _lookup(data: Any, path: Sequence[str | int]) -> Any:
    for seg in path:
        data = data[seg]
    return data


def validate(model: type[BaseModel], data: Any, prefix: str) -> tuple[Any, list[Problem]]:
    """Validate ``data`` (plain containers) against ``model``; one problem per bad key."""
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        errors = err.errors()
    problems: dict[str, Problem] = {}
    for e in errors:
        path = _key_path(e["loc"], data, e["type"])
        key = dotted(prefix, path) or prefix or "(config)"
        if key in problems:
            continue
        if e["type"] == "extra_forbidden":
            parent = model_fields_of(model, path[:-1])
            where = f"`{dotted(prefix, path[:-1]) or 'the config'}`"
            problems[key] = unknown_key(key, parent, where)
        elif e["type"] == "missing":
            problems[key] = Problem(
                key, f"`{key}` is missing: expected {requirement(model, path)}", "missing_key"
            )
        else:
            value = _lookup(data, path) if path else data
            need = requirement(model, path) if path else render(model)
            problems[key] = Problem(key, f"`{key}={fmt_value(value)}`: expected {need}")
    return None, list(problems.values())


def model_fields_of(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    """Field names of the (sub)model at ``path`` (for unknown-key suggestions)."""
    current: Any = model
    for seg in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = fields(current).get(str(seg))
            current = field.annotation if field else None
        else:
            current = _descend(current, seg)
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            current = next(
                (
                    a
                    for a in typing.get_args(current)
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                current,
            )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(fields(current))
    return []
