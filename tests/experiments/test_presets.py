"""Every preset composes and trains under +debug=smoke (in-process, tiny, CPU).

The default suite runs one job of each preset's sweep (the last one: a non-baseline row);
``pytest -m slow`` runs every job of every sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from exp_support import TINY, compose_train

from attnexp.experiments import available_presets, expand_sweep, group_options, preset_sweep
from attnexp.run import train


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two threads are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _jobs(name: str) -> list[list[str]]:
    params = preset_sweep(name)
    options = {k: group_options(k) for k, v in params.items() if v.startswith("glob(")}
    return expand_sweep(params, options)


def _run(name: str, job: list[str], run_dir: Path) -> dict:
    cfg = compose_train([f"experiment={name}", *TINY, *job], run_dir)
    assert cfg.experiment_name == name
    record = train(cfg)
    assert record["status"] == "completed", record.get("error")
    assert record["test"]["top1_err"] is not None
    assert record["costs"]["params"] > 0
    return record


@pytest.mark.parametrize("name", available_presets())
def test_preset_runs_under_smoke(name: str, tmp_path: Path) -> None:
    job = _jobs(name)[-1]
    record = _run(name, job, tmp_path / "run")
    if name != "demo":
        table = record["config"]["table"]
        assert table["label"], "the resolved config carries the row label for attnexp-table"
        assert table["protocol"] == "from_scratch"


ALL_JOBS = [(name, job) for name in available_presets() for job in _jobs(name)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "job"), ALL_JOBS, ids=[f"{n}:{' '.join(j)}" for n, j in ALL_JOBS])
def test_every_job_of_every_preset_runs_under_smoke(
    name: str, job: list[str], tmp_path: Path
) -> None:
    _run(name, job, tmp_path / "run")
