"""Reading the ``data`` config mapping with errors that name the key and the fix.

Builders receive a plain mapping (``cfg.data`` resolved), so a typo'd or out-of-range
value would otherwise surface as a ``TypeError`` deep inside a loader. These helpers turn
it into a :class:`ConfigError` that says ``data.<key>``, what was given and what is valid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attnexp.errors import ConfigError, choices_error


def get_int(
    cfg: Mapping[str, Any], key: str, default: int | None, minimum: int | None = None
) -> int:
    value = cfg.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"data.{key} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError as err:
        raise ConfigError(f"data.{key} must be an integer, got {value!r}") from err
    if number != float(value):
        raise ConfigError(f"data.{key} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"data.{key} must be >= {minimum}, got {number}")
    return number


def get_optional_int(cfg: Mapping[str, Any], key: str, minimum: int | None = None) -> int | None:
    """An integer key whose null (or absence) means "not set"."""
    return None if cfg.get(key) is None else get_int(cfg, key, None, minimum)


def get_float(
    cfg: Mapping[str, Any], key: str, default: float, minimum: float | None = None
) -> float:
    value = cfg.get(key, default)
    value = default if value is None else value
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.{key} must be a number, got {value!r}") from err
    if minimum is not None and number < minimum:
        raise ConfigError(f"data.{key} must be >= {minimum}, got {number}")
    return number


def get_bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    value = cfg.get(key, default)
    value = default if value is None else value
    if not isinstance(value, bool):
        raise ConfigError(f"data.{key} must be true or false, got {value!r}")
    return value


def get_choice(cfg: Mapping[str, Any], key: str, default: str, choices: Sequence[str]) -> str:
    value = cfg.get(key, default)
    value = default if value is None else value
    if isinstance(value, bool):  # YAML reads `auto|true|false` keys as booleans
        value = str(value).lower()
    if str(value) not in choices:
        raise choices_error(f"data.{key}", value, choices)
    return str(value)


def get_triple(
    cfg: Mapping[str, Any], key: str, default: Sequence[float]
) -> tuple[float, float, float]:
    """Per-channel statistics (mean/std); ``null`` means ``default``."""
    value = cfg.get(key)
    if value is None:
        return tuple(float(v) for v in default)  # type: ignore[return-value]
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(
            f"data.{key} must be a list of 3 numbers (R, G, B) or null, got {value!r}"
        )
    triple = tuple(float(v) for v in value)
    if key == "std" and min(triple) <= 0:
        raise ConfigError(f"data.std must be positive, got {list(triple)}")
    return triple  # type: ignore[return-value]


def get_path(cfg: Mapping[str, Any], key: str) -> Path:
    value = cfg.get(key)
    if value is None or str(value).strip() == "":
        raise ConfigError(
            f"data.{key} is not set; give the dataset folder, e.g. data.{key}=/path/to/data"
        )
    return Path(os.path.expandvars(str(value))).expanduser()


def get_num_workers(cfg: Mapping[str, Any], default: int | None = None) -> int:
    """``null`` = as many as the CPUs this process may use, at most 8."""
    if cfg.get("num_workers", default) is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return min(8, cpus)
    return get_int(cfg, "num_workers", default, minimum=0)
