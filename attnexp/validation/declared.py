"""Keys declared by the package's own config files (``attnexp/conf/**.yaml``).

A key our YAML declares is never a user's typo. When such a key has no schema entry yet (a
feature added its key to a YAML file but not to :mod:`attnexp.validation.schemas`), the
validator does not refuse the user's run; ``tests/config`` fails instead, naming the key,
so the schema is completed in the same change.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
_GLOBAL = re.compile(r"^#\s*@package\s+_global_", re.MULTILINE)
_SKIP = {"defaults", "hydra"}


def _paths(node: Any, prefix: str, out: set[str]) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if not prefix and key in _SKIP:
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        out.add(path)
        _paths(value, path, out)


@cache
def declared_keys() -> frozenset[str]:
    """Every dotted key some packaged YAML file sets."""
    out: set[str] = set()
    for file in CONF.rglob("*.yaml"):
        text = file.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        rel = file.relative_to(CONF)
        if file.name == "train.yaml" and len(rel.parts) == 1 or _GLOBAL.search(text):
            prefix = ""
        else:
            prefix = rel.parts[0]
            if prefix == "hydra":
                continue
        _paths(data, prefix, out)
    return frozenset(out)


def is_declared(key: str) -> bool:
    return re.sub(r"\[\d+\]", "", key) in declared_keys()
