"""A composed config as plain Python containers, every interpolation resolved on its own.

``OmegaConf.to_container(resolve=True)`` stops at the first interpolation that fails; here
each failing leaf becomes a problem naming its key, and the rest is still validated.
``${hydra:...}`` outside a Hydra app (tests, ``attnexp-profile``) is not an error: the value
is left as a placeholder string.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from attnexp.validation.problems import Problem

#: Placeholder for a value that only a running Hydra app can resolve.
UNRESOLVED_HYDRA = "<resolved by hydra at run time>"


_LINK = re.compile(r"^\$\{([A-Za-z0-9_.]+)\}$")


def plain(cfg: Any, prefix: str = "") -> tuple[Any, list[Problem], dict[str, str]]:
    """``cfg`` as dicts/lists/scalars, a problem per leaf that cannot be resolved, and the
    keys that are plain copies of another key (``data.shuffle_seed: ${seed}`` -> seed)."""
    problems: list[Problem] = []
    links: dict[str, str] = {}
    return _plain(cfg, prefix, problems, links), problems, links


def _plain(node: Any, prefix: str, problems: list[Problem], links: dict[str, str]) -> Any:
    if isinstance(node, DictConfig):
        if node._is_missing() or node._is_none():
            return None
        raw = OmegaConf.to_container(node, resolve=False)
        out = {}
        for key in node:
            key_str = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(raw[key], str) and (match := _LINK.match(raw[key])):
                links[key_str] = match.group(1)
            child = _child(node, key, key_str, problems)
            out[str(key)] = _plain(child, key_str, problems, links)
        return out
    if isinstance(node, ListConfig):
        if node._is_missing() or node._is_none():
            return None
        return [
            _plain(_child(node, i, f"{prefix}[{i}]", problems), f"{prefix}[{i}]", problems, links)
            for i in range(len(node))
        ]
    return node


def _child(node: DictConfig | ListConfig, key: Any, key_str: str, problems: list[Problem]) -> Any:
    try:
        return node[key]
    except MissingMandatoryValue:
        problems.append(
            Problem(key_str, f"`{key_str}` is missing (???): give it a value", "missing_key")
        )
    except OmegaConfBaseException as err:
        raw = OmegaConf.to_container(node, resolve=False)
        text = raw[key] if isinstance(raw, (dict, list)) else None
        if isinstance(text, str) and ("${hydra:" in text or "HydraConfig was not set" in str(err)):
            return UNRESOLVED_HYDRA  # run-time values of a Hydra app (the run dir)
        reason = str(err).splitlines()[0]
        problems.append(
            Problem(key_str, f"`{key_str}`: cannot resolve `{text}`: {reason}", "unresolved")
        )
    return None
