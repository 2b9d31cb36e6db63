"""Check a composed config before anything runs: no seed set, no data read, no directory made.

A typo found after three hours of training is a lost afternoon. :func:`check_config` reads
the composed config once and reports every problem together as one
:class:`~attnexp.validation.problems.ConfigProblems` (a ConfigError, exit code 2), each
naming the key, the value and what is valid:

1. **schema** (:mod:`attnexp.validation.schemas`, one pydantic model per group): the type,
   range or choices of every key; unknown keys (``+`` additions included) are errors naming
   the closest valid key. Pass-through namespaces (``trainer``, each callback and logger,
   ``optimizer``) accept the arguments of the class they configure, checked against its
   signature.
2. **consistency** (:mod:`attnexp.validation.checks`): keys that must agree (placement vs
   backbone, batch vs dataset size, schedule vs run length, ...), for every attention module.
3. **environment** (:mod:`attnexp.validation.environment`): devices and precision vs this
   machine, a writable output root.

:func:`validate_config` adds the last, slower step: building the backbone, which probes every
placed attention module (the attention registry checks each module's options).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from torch import nn

from attnexp.errors import ConfigError
from attnexp.validation.problems import ConfigProblems, Problem
from attnexp.validation.resolve import plain

__all__ = [
    "ConfigProblems",
    "Problem",
    "check_config",
    "describe",
    "find_problems",
    "validate_config",
]


def find_problems(
    cfg: DictConfig | Mapping[str, Any], environment: bool = True, strict: bool = False
) -> list[Problem]:
    """Every problem of ``cfg`` (schema, consistency and, with ``environment``, machine).

    Keys our own YAML files declare but the schema does not know yet are accepted unless
    ``strict`` (the tests use it to find schema gaps; see :mod:`.declared`)."""
    from attnexp.plugins import import_user_code
    from attnexp.validation import checks, groups
    from attnexp.validation import environment as env
    from attnexp.validation.declared import is_declared

    if isinstance(cfg, DictConfig):
        data, problems, links = plain(cfg)
    else:
        data, problems, links = dict(cfg), [], {}
    imports = data.get("imports")
    if isinstance(imports, list) and all(isinstance(i, str) for i in imports):
        try:  # user modules register before names are checked
            import_user_code(imports)
        except ConfigError as err:
            problems.append(Problem("imports", f"`imports`: {err}", "unknown_choice"))
    found = groups.check_groups(data)
    if not strict:
        found = [p for p in found if not (p.kind == "unknown_key" and is_declared(p.key))]
    problems += found
    cross = list(checks.CHECKS)
    if environment:
        cross += [
            (env.check_hardware, ("trainer.accelerator", "trainer.devices", "trainer.num_nodes",
                                  "trainer.strategy")),
            (env.check_precision, ("trainer.precision", "trainer.accelerator")),
            (env.check_output, ("paths",)),
        ]  # fmt: skip
    for check, reads in cross:
        if not any(_covers(read, p.key) for p in problems for read in reads):
            problems += check(data)
    return _dedupe(problems, links)


def _covers(read: str, key: str) -> bool:
    """Whether a problem at ``key`` concerns the key (or group) ``read``."""
    return key == read or key.startswith((f"{read}.", f"{read}[")) or read.startswith(f"{key}.")


def _dedupe(problems: list[Problem], links: Mapping[str, str]) -> list[Problem]:
    """Drop repeats, and problems of a key that only copies another reported key
    (``data.shuffle_seed: ${seed}`` when ``seed`` is wrong)."""
    keys = {p.key for p in problems}
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.message in seen or links.get(p.key) in keys:
            continue
        seen.add(p.message)
        out.append(p)
    return out


def check_config(cfg: DictConfig | Mapping[str, Any], environment: bool = True) -> None:
    """Raise :class:`ConfigProblems` listing every problem of ``cfg`` (fast: no model built)."""
    problems = find_problems(cfg, environment=environment)
    if problems:
        raise ConfigProblems(problems)


def validate_config(cfg: DictConfig) -> nn.Module:
    """:func:`check_config`, then build the backbone (its placements probe every module) and
    return it, so the caller does not build it twice."""
    from attnexp import builders

    check_config(cfg)
    return builders.build_backbone(cfg)


def describe(err: ConfigError) -> dict[str, Any]:
    """A machine-readable form of a config error (for failed-run records)."""
    out: dict[str, Any] = {"type": "ConfigError", "message": str(err)}
    if isinstance(err, ConfigProblems):
        out["problems"] = [
            {"key": p.key, "kind": p.kind, "message": p.message} for p in err.problems
        ]
    return out
