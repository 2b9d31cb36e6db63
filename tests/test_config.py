"""Every config file of every group composes; the CLI answers --help and --cfg job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from attnexp.compose import compose_config

CONF = Path(__file__).resolve().parents[1] / "attnexp" / "conf"
# Groups selected with "+group=name" (not in the primary defaults list).
APPENDED_GROUPS = {"debug"}
# Hydra's own group (the run-dir layout) and user-local overrides are not swappable options.
SKIPPED_GROUPS = {"hydra", "local"}


def _group_options() -> list[tuple[str, str]]:
    """Every option of every group: YAML files and the nodes generated from the attention
    registry (``attention``, ``conv``: attnexp/zoo_configs.py)."""
    from hydra.core.config_store import ConfigStore

    from attnexp.experiments import group_options

    groups = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")}
    groups |= {g for g in ConfigStore.instance().list("") if not g.endswith(".yaml")}
    return [
        (group, option)
        for group in sorted(groups - SKIPPED_GROUPS)
        for option in group_options(group)
    ]


def test_every_group_has_options() -> None:
    groups = {g for g, _ in _group_options()}
    expected = {
        "data",
        "model",
        "attention",
        "placement",
        "optimizer",
        "scheduler",
        "trainer",
        "callbacks",
        "logger",
        "paths",
        "experiment",
        "debug",
    }
    assert expected <= groups, f"missing config groups: {expected - groups}"


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_config_composes(group: str, option: str, tmp_path: Path) -> None:
    prefix = "+" if group in APPENDED_GROUPS else ""
    cfg = compose_config([f"{prefix}{group}={option}"], tmp_path)
    # Resolving everything catches broken interpolations; the hydra node needs a live app.
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["name"] and container["data"]["name"]
    assert container["data"]["num_classes"] == container["model"]["num_classes"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnexp.cli.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.essential  # four CLI subprocesses: ~22 s (make test stays under 15 min)
def test_cli_help_and_cfg_job(tmp_path: Path) -> None:
    help_out = _cli("--help", cwd=tmp_path)
    assert help_out.returncode == 0, help_out.stderr
    assert "attention" in help_out.stdout and "== Config ==" in help_out.stdout
    job = _cli("--cfg", "job", "attention=none", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    printed = OmegaConf.create(job.stdout)
    assert printed.attention.name == "none" and printed.seed == 0
    assert not (tmp_path / "outputs").exists(), "--cfg must not create run directories"


# Options that do not fit the default model/epochs on their own, and the key that says so.
NEEDS_MORE = {
    ("placement", "stages_4"): "placement.stages",  # stage 4: ImageNet ResNets only
}  # scheduler=multistep's [50, 75] lie beyond the default 10 epochs: a warning, not an error


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_config_validates(group: str, option: str, tmp_path: Path) -> None:
    """Every option passes the validator with the defaults, or is refused naming the key."""
    from attnexp.validation import find_problems

    prefix = "+" if group in APPENDED_GROUPS else ""
    cfg = compose_config([f"{prefix}{group}={option}"], tmp_path / "run")
    keys = [p.key for p in find_problems(cfg, environment=False)]
    expected = NEEDS_MORE.get((group, option))
    assert keys == ([expected] if expected else []), keys
