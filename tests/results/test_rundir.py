"""RunDir: the layout agrees with the configs, runs are found, files are readable by others."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from attnexp.results import RunDir, atomic_write_text, find_run_dirs, write_metrics
from attnexp.results.rundir import CHECKPOINT_DIR, CSV_DIR, LAST_CHECKPOINT


def test_the_configs_put_checkpoints_and_logs_where_rundir_looks(tmp_path: Path) -> None:
    from attnexp.runtime import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=csv", "callbacks=default"])
    cfg.paths.output_dir = str(tmp_path)
    run = RunDir(tmp_path)
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=True)
    for name in ("checkpoint", "last_checkpoint", "preemption"):
        assert Path(callbacks[name]["dirpath"]) == run.checkpoint_dir, name
    assert callbacks["last_checkpoint"]["filename"] + ".ckpt" == LAST_CHECKPOINT
    assert callbacks["checkpoint"]["filename"].startswith("best")
    csv = OmegaConf.to_container(cfg.logger, resolve=True)["csv"]
    assert Path(csv["save_dir"]) / csv["name"] == run.csv_dir
    assert run.metrics_csv.parent == run.csv_dir


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_mode_not_0600(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "sub" / "f.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("y")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    assert path.read_text() == "x" and not list(path.parent.glob(".*tmp"))


def test_metrics_json_is_group_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_metrics(tmp_path, {"status": "completed"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_find_and_of(tmp_path: Path) -> None:
    a, b, c = (RunDir(tmp_path / "sweep" / str(i)) for i in range(3))
    write_metrics(a.path, {"status": "completed"})
    b.config_file.parent.mkdir(parents=True)
    b.config_file.write_text("seed: 1\n")
    c.path.mkdir(parents=True)  # not a run
    assert [r.path for r in RunDir.find(tmp_path)] == [a.path, b.path]
    assert list(find_run_dirs(tmp_path)) == [a.path, b.path]
    a.checkpoint_dir.mkdir()
    best = a.checkpoint_dir / "best-epoch003.ckpt"
    best.write_bytes(b"")
    assert RunDir.of(best) == RunDir(a.path.resolve())
    assert RunDir.of(tmp_path) is None
    assert a.checkpoint("best") == best and a.checkpoint("last") == best
    a.last_checkpoint.write_bytes(b"")
    assert a.checkpoint("last") == a.last_checkpoint and a.checkpoint("best") == best
    assert b.checkpoint() is None
    assert a.last_checkpoint == a.path / CHECKPOINT_DIR / LAST_CHECKPOINT
    assert a.metrics_csv == a.path / CSV_DIR / "metrics.csv"
    assert a.eval_file("imagenet-val").name == "eval-imagenet-val.json"


def test_overrides_and_config(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.overrides() == [] and run.load_config() is None
    write_metrics(tmp_path, {"hydra": {"overrides": ["a=1"]}, "config": {"seed": 4}})
    assert run.overrides() == ["a=1"] and run.load_config().seed == 4
    run.save_config(OmegaConf.create({"seed": 5}))
    run.overrides_file.write_text("- b=2\n")
    assert run.overrides() == ["b=2"] and run.load_config().seed == 5
