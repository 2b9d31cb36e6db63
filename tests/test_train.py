"""End-to-end training on CPU: fast_dev_run, the run record, unique run dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from attnexp.results import read_metrics
from attnexp.run import train

TINY = ["+debug=smoke", "model=resnet20", "logger=csv"]


def test_fast_dev_run(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("+debug=fast_dev_run", "attention=none")
    record = train(cfg)
    assert record["status"] == "completed"
    assert record["global_step"] == 1


def test_metrics_json_contents(make_cfg, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    record = train(make_cfg(*TINY, "seed=3"))
    on_disk = read_metrics(run_dir)
    assert on_disk["seed"] == 3 == record["seed"]
    for key in ("val_top1_err", "val_top5_err"):
        assert 0.0 <= on_disk["final"][key] <= 100.0
    assert 0.0 <= on_disk["test"]["top1_err"] <= 100.0
    assert on_disk["test"]["top5_err"] <= on_disk["test"]["top1_err"]
    assert on_disk["best"]["val_top1_err"] is not None
    assert on_disk["costs"]["params"] == 269_722  # CIFAR ResNet-20, 10 classes, option A
    assert on_disk["costs"]["macs"] > 0
    assert on_disk["epochs"] == 1 and on_disk["wall_seconds"] > 0
    assert on_disk["version"] and "git_commit" in on_disk
    assert on_disk["config"]["model"]["name"] == "resnet20"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "csv" / "metrics.csv").exists()


def _start(cwd: Path, root: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "attnexp.cli.train", *TINY, f"paths.root={root}", *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_runs_started_together_get_unique_dirs(tmp_path: Path) -> None:
    root = tmp_path / "out"
    procs = [
        _start(tmp_path, root, "trainer.limit_train_batches=1", "test=false") for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    records = sorted((root / "default" / "runs").glob("*/metrics.json"))
    assert len(records) == 2
    dirs = {json.loads(r.read_text())["run_dir"] for r in records}
    assert len(dirs) == 2
    # the loggers (here CSV's hparams.yaml; wandb gets the same dict) get the overrides typed
    # and the config file chosen per group, so dashboards can group a sweep by them
    hparams = yaml.safe_load((Path(dirs.pop()) / "csv" / "hparams.yaml").read_text())
    assert "trainer.limit_train_batches=1" in hparams["hydra"]["overrides"]
    assert hparams["hydra"]["choices"]["model"] == "resnet20"


def test_outputs_land_under_cwd_not_package(tmp_path: Path) -> None:
    import attnexp

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "attnexp.cli.train",
            *TINY,
            "trainer.limit_train_batches=1",
            "test=false",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((cwd / "outputs" / "default" / "runs").glob("*/metrics.json"))
    pkg = Path(attnexp.__file__).parent
    assert not (pkg / "outputs").exists()
    assert "[attnexp]" in proc.stdout  # the one-line summary


def test_only_global_rank_zero_writes_the_record(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """In a multi-GPU/multi-node run every rank runs train(); one record, from rank 0."""
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    record = train(make_cfg("+debug=fast_dev_run", run_dir=tmp_path / "rank1"))
    assert record["status"] == "completed"
    assert not (tmp_path / "rank1" / "metrics.json").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    train(make_cfg("+debug=fast_dev_run", run_dir=tmp_path / "rank0"))
    assert (tmp_path / "rank0" / "metrics.json").exists()
