"""Training curves share a figure only when the runs are comparable (dataset, recipe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnexp.analysis.curves import check_comparable, plot_curves
from attnexp.errors import ConfigError
from attnexp.results import RunDir, write_metrics

CSV = "epoch,step,train/loss,val/loss,train/top1_err,val/top1_err\n0,9,2.0,2.1,80,82\n1,19,1.5,1.7,60,65\n"


def _run(path: Path, epochs: int, dataset: str = "cifar10") -> Path:
    run = RunDir(path)
    config = {
        "model": {"name": "resnet20"},
        "attention": {"name": "none"},
        "data": {"name": dataset, "image_size": 32},
        "trainer": {"max_epochs": epochs},
    }
    write_metrics(run.path, {"model": "resnet20", "dataset": dataset, "config": config})
    run.csv_dir.mkdir()
    run.metrics_csv.write_text(CSV)
    return run.path


def test_runs_of_different_schedules_or_datasets_are_refused(tmp_path: Path) -> None:
    ten, five = _run(tmp_path / "a" / "base", 10), _run(tmp_path / "a" / "cbam", 5)
    with pytest.raises(ConfigError, match="differ in recipe") as err:
        plot_curves([tmp_path / "a"], tmp_path / "c.png")
    assert "epochs=10" in str(err.value) and "epochs=5" in str(err.value)
    assert not (tmp_path / "c.png").exists()
    other = _run(tmp_path / "b", 10, dataset="imagefolder")
    with pytest.raises(ConfigError, match="differ in dataset"):
        check_comparable([ten, other])
    check_comparable([five])


def test_comparable_runs_are_drawn(tmp_path: Path) -> None:
    _run(tmp_path / "s" / "0", 10)
    _run(tmp_path / "s" / "1", 10)
    path = plot_curves([tmp_path / "s"], tmp_path / "c.png")
    assert path.stat().st_size > 0
