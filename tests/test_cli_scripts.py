"""Every console script declared in pyproject.toml exists, loads and answers ``--help``.

Checked against both the source of truth (``[project.scripts]`` in pyproject.toml) and the
installed package's entry points, so a declared command whose module or function is
missing (or an install that is out of date) fails here rather than on a user's cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib.metadata import EntryPoint, distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DECLARED: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
    "scripts"
]


def _installed() -> list[EntryPoint]:
    """The console scripts of the attnexp installed in this environment (site-packages: the
    metadata pip wrote the ``bin/`` scripts from; a stale ``attnexp.egg-info`` in the working
    directory would otherwise shadow it)."""
    site = sysconfig.get_paths()["purelib"]
    dists = [d for d in distributions(path=[site]) if d.metadata["Name"] == "attnexp"]
    assert len(dists) == 1, f"attnexp installed {len(dists)} times in {site}"
    return [ep for ep in dists[0].entry_points if ep.group == "console_scripts"]


def test_installed_entry_points_are_the_declared_ones() -> None:
    installed = {ep.name: ep.value for ep in _installed()}
    assert installed == DECLARED, "the install is out of date: pip install -e '.[dev]'"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_entry_point_resolves(name: str) -> None:
    """The installed entry point imports and names a callable (a removed module or a renamed
    function fails here)."""
    (ep,) = [ep for ep in _installed() if ep.name == name]
    target = ep.load()
    assert callable(target), f"{name} = {ep.value} is not callable"


@pytest.mark.essential  # one interpreter start per script, ~70 s in all
@pytest.mark.parametrize("name", sorted(DECLARED))
def test_script_help_exits_0(name: str, tmp_path: Path) -> None:
    """``<script> --help`` in a fresh process: exit 0 and a usage text naming the command
    (run as ``python -c`` on the entry point, so no PATH lookup is involved)."""
    module, func = DECLARED[name].split(":")
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {func}; {func}()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert name in out or "usage" in out.lower() or "Configuration groups" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
