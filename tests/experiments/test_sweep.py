"""A real multirun of a preset (subprocess, as users run it) and attnexp-table on its output;
the joblib launcher's one-GPU-per-job slots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from exp_support import TINY

from attnexp import experiments
from attnexp.analysis.table import build_table
from attnexp.experiments import OneGpuPerJob, acquire_gpu_slot

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _table_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attnexp.cli.table", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.essential  # a real 3-job sweep + table, ~35 s
def test_cbam_table3_sweep_and_table(tmp_path: Path) -> None:
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnexp.cli.train",
            "-m",
            "experiment=cbam_table3_cifar",
            *TINY,  # +debug=smoke, made smaller still
            "seed=0,1",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    root = tmp_path / "outputs" / "cbam_table3_cifar" / "multirun"
    (sweep,) = list(root.iterdir())
    assert len(list(sweep.glob("*/metrics.json"))) == 10  # 5 rows x 2 seeds

    result = _table_cli(str(root), "--latest", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for label in (
        "baseline (no attention)",
        "channel only (SE)",
        "channel -> spatial (CBAM)",
        "spatial -> channel",
        "channel & spatial in parallel",
    ):
        assert label in out
    assert out.count("(2) │") >= 10  # top-1 and top-5 of every row over n = 2 seeds
    assert "paper top-1 [ImageNet]" in out and "22.66" in out and "22.95" in out
    for name in ("table.md", "table.csv", "table.tex", "plot.png"):
        assert (sweep / name).stat().st_size > 0
    md = (sweep / "table.md").read_text()
    assert "| channel & spatial in parallel | 2 |" in md

    again = _table_cli(str(root), "--latest", cwd=tmp_path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr and "table.md" in again.stderr

    # a crashed run (no metrics.json) and a failed one are flagged, never dropped
    (sweep / "9" / "metrics.json").unlink()
    record = json.loads((sweep / "8" / "metrics.json").read_text())
    record.update(status="failed", error={"type": "RuntimeError", "message": "CUDA error"})
    (sweep / "8" / "metrics.json").write_text(json.dumps(record))
    table = build_table([sweep])
    parallel = next(r for r in table.rows if r.label == "channel & spatial in parallel")
    assert parallel.n == 0 and parallel.counts == {"failed": 1, "missing": 1}
    flagged = _table_cli(str(sweep), "--no-save", cwd=tmp_path)
    assert flagged.returncode == 0, flagged.stderr
    assert "0 ⚠ 1 failed, 1 missing" in flagged.stdout
    assert "RuntimeError: CUDA error" in flagged.stdout and "MISSING" in flagged.stdout


@pytest.fixture
def no_held_slot(monkeypatch):
    monkeypatch.setattr(experiments, "_held_slot", None)
    yield
    if experiments._held_slot is not None:
        experiments._held_slot[1].close()
    monkeypatch.setattr(experiments, "_held_slot", None)


def _acquire_in_subprocess(gpus: list[str], lock_dir: Path) -> str:
    code = (
        "from attnexp.experiments import acquire_gpu_slot; "
        f"print(acquire_gpu_slot({gpus!r}, lock_dir={str(lock_dir)!r}, wait_s=0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_gpu_slots_give_each_worker_its_own_gpu(tmp_path: Path, no_held_slot) -> None:
    assert acquire_gpu_slot(["0", "1"], lock_dir=tmp_path) == "0"
    assert acquire_gpu_slot(["0", "1"], lock_dir=tmp_path) == "0"  # a process keeps its GPU
    assert _acquire_in_subprocess(["0", "1"], tmp_path) == "1"  # another worker: the free one
    assert _acquire_in_subprocess(["0"], tmp_path) == "None"  # all taken (it would share)
    assert acquire_gpu_slot([], lock_dir=tmp_path) == "0"  # already held


def test_one_gpu_per_job_callback_sets_visible_devices(
    tmp_path: Path, no_held_slot, monkeypatch
) -> None:
    monkeypatch.setenv("ATTNEXP_GPU_POOL", "3,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    callback = OneGpuPerJob(jobs_per_gpu=2, lock_dir=str(tmp_path))
    callback.on_job_start(config=None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert _acquire_in_subprocess(["3", "5"], tmp_path) == "5"
