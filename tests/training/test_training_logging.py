"""Loggers: CSV always, wandb offline with the config and metrics on disk (real wandb, no
mock), fallback to offline when the server cannot be reached, logger=none."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from train_support import TINY, wandb_records

from attnexp.run import train
from attnexp.training.loggers import CSVLogger, WandbLogger, run_id_for, wandb_api_key_configured


def test_wandb_offline_run_dir_holds_config_and_metrics(make_cfg, tmp_path: Path, capsys) -> None:
    assert os.environ.get("WANDB_MODE") == "offline"  # the suite never talks to a server
    record = train(make_cfg(*TINY, "logger=wandb", "experiment_name=wb_test", "seed=3"))
    assert record["status"] == "completed"
    run_dir = tmp_path / "run"
    assert (run_dir / "csv/metrics.csv").is_file()  # csv comes with wandb
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = list(wandb_records(files[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "attnexp" and run.run_group == "wb_test"
    assert list(run.tags) == ["resnet20", "none", "synthetic"]
    assert run.run_id == run_id_for(run_dir)  # stable per run dir: a resume continues it
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert config["seed"] == 3 and config["model"]["name"] == "resnet20"
    assert config["costs"]["params"] == record["costs"]["params"]
    history = [
        {
            item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    val = [h["val/top1_err"] for h in history if "val/top1_err" in h]
    assert val and val[-1] == pytest.approx(record["final"]["val_top1_err"])
    assert any("test/top1_err" in h for h in history)
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    assert summary["costs/params"] == record["costs"]["params"] and summary["status"] == "completed"
    assert "wandb sync" in capsys.readouterr().out  # the hint for uploading later


def test_wandb_unreachable_falls_back_to_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    assert wandb_api_key_configured()
    logger = WandbLogger(project="attnexp", save_dir=str(tmp_path), mode="auto", init_timeout=5)
    with pytest.warns(UserWarning, match="logging offline"):
        experiment = logger.experiment
    assert logger.mode == "offline"
    experiment.log({"x": 1.0})
    logger.finish()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_no_api_key_means_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = WandbLogger(project="attnexp", save_dir=str(tmp_path))
    assert logger._choose_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert logger._choose_mode() == "disabled"


def test_logger_none_writes_no_logs(make_cfg, tmp_path: Path) -> None:
    record = train(make_cfg(*TINY, "logger=none", "test=false"))
    assert record["status"] == "completed"
    assert not (tmp_path / "run/csv").exists() and not (tmp_path / "run/wandb").exists()


def test_csv_logger_keeps_rows_before_a_resume_point(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text(
        "epoch,lr-SGD,step,val/loss\n,0.1,0,\n0,,3,2.5\n,0.05,4,\n1,,5,2.0\n"
    )
    logger = CSVLogger(save_dir=tmp_path)
    logger.resume_from(epoch=1, step=4)  # a checkpoint at the end of epoch 0 (step 4)
    logger.log_metrics({"val/loss": 1.5, "epoch": 1}, step=7)
    logger.save()
    assert (folder / "metrics.csv").read_text().splitlines() == [
        "epoch,lr-SGD,step,val/loss",
        ",0.1,0,",
        "0,,3,2.5",
        "1,,7,1.5",
    ]
