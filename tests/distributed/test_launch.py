"""Launch-time guards: multirun + DDP refused before anything runs, hardware that is not
there refused before data is loaded, the global batch, and the non-padding eval sampler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

from attnexp import hardware
from attnexp.cli.table import latest_sweep
from attnexp.compose import compose_config
from attnexp.data.datamodule import ExactShardSampler
from attnexp.errors import ConfigError


def test_multirun_with_ddp_is_refused_before_anything_runs(tmp_path: Path) -> None:
    root = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "attnexp.cli.train", "-m", "attention=none,se",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "+debug=smoke",
         f"paths.root={root}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    message = proc.stderr
    for works in ("launcher=slurm", "launcher=joblib", "ddp_spawn"):
        assert works in message
    assert not root.exists()  # no sweep folder, no job folder
    assert "[attnexp]" not in proc.stdout  # no result lines


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["trainer.strategy=ddp", "trainer.devices=2"], True),
        (["trainer.devices=2"], True),  # auto -> ddp with 2 processes
        (["trainer.strategy=ddp_spawn", "trainer.devices=2"], False),
        (["trainer.strategy=ddp", "trainer.devices=1"], False),  # refused elsewhere
        (["trainer.devices=1,2"], True),  # a sweep value with 2 devices
    ],
)
def test_which_sweeps_would_reexecute(overrides: list[str], refused: bool) -> None:
    fixed = [o for o in overrides if "," not in o]
    cfg = compose_config(["trainer.accelerator=cpu", *fixed])
    with open_dict(cfg):
        cfg.hydra = {"overrides": {"task": overrides}}  # what Hydra's multirun config holds
    assert (hardware.multirun_ddp_problem(cfg) is not None) == refused


@pytest.mark.parametrize(
    ("n_jobs", "refused"), [(0, True), ("two", True), (True, True), (2, False), (-1, False)]
)
def test_launcher_parallel_jobs_are_checked(n_jobs: object, refused: bool) -> None:
    cfg = compose_config(["launcher=joblib"])
    with open_dict(cfg):
        cfg.hydra = {"launcher": {"n_jobs": n_jobs}}
    problem = hardware.launcher_problem(cfg)
    assert (problem is not None) == refused
    if refused:
        assert "hydra.launcher.n_jobs" in problem and "-1 = one job per CPU" in problem


def test_zero_parallel_jobs_are_refused_before_anything_runs(tmp_path: Path) -> None:
    root = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "attnexp.cli.train", "-m", "attention=none,se", "launcher=joblib",
         "hydra.launcher.n_jobs=0", "+debug=smoke", f"paths.root={root}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "hydra.launcher.n_jobs=0" in proc.stderr and "Nothing was run" in proc.stderr
    assert not list(root.rglob("metrics.json"))


def test_latest_never_picks_an_empty_sweep_dir(tmp_path: Path) -> None:
    multirun = tmp_path / "exp" / "multirun"
    good = multirun / "2026-01-01_00-00-00-000000_1"
    (good / "0").mkdir(parents=True)
    (good / "0" / "metrics.json").write_text("{}")
    (multirun / "2026-01-02_00-00-00-000000_2").mkdir()  # a stray, newer, empty one
    assert latest_sweep(tmp_path / "exp") == good


@pytest.mark.skipif(hardware.cuda_devices() > 0, reason="this machine has a GPU")
def test_gpu_request_without_gpu_is_a_config_error_naming_the_machine() -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU") as info:
        hardware.check_hardware(compose_config(["trainer.accelerator=gpu"]))
    assert "CPU cores" in str(info.value) and "trainer.accelerator=cpu" in str(info.value)


def test_more_devices_than_exist_and_ddp_on_one_device_are_config_errors() -> None:
    too_many = hardware.cpu_cores() + 1
    with pytest.raises(ConfigError, match=f"trainer.devices={too_many}.*this machine has"):
        hardware.check_hardware(
            compose_config(["trainer.accelerator=cpu", f"trainer.devices={too_many}"])
        )
    with pytest.raises(ConfigError, match="DDP needs at least 2"):
        hardware.check_hardware(
            compose_config(["trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=1"])
        )


def test_a_refused_device_request_stops_train_before_data(make_cfg, tmp_path: Path) -> None:
    from attnexp.run import train

    cfg = make_cfg("+debug=fast_dev_run", f"trainer.devices={hardware.cpu_cores() + 1}")
    with pytest.raises(ConfigError, match="this machine has"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_global_batch_sets_the_per_device_batch() -> None:
    cfg = compose_config(
        ["data.global_batch=256", "trainer.accumulate_grad_batches=2", "trainer.accelerator=cpu"]
    )
    hardware.apply_global_batch(cfg)
    assert cfg.data.batch_size == 128  # one device x 2 accumulation steps
    cfg = compose_config(["data.global_batch=100", "trainer.accumulate_grad_batches=3"])
    with pytest.raises(ConfigError, match="not divisible"):
        hardware.apply_global_batch(cfg)


@pytest.mark.parametrize("size", [1, 7, 1001])
@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
def test_eval_shards_cover_each_index_exactly_once(size: int, replicas: int) -> None:
    shards = [list(ExactShardSampler(size, replicas, r)) for r in range(replicas)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(s) for s in shards] == [
        len(ExactShardSampler(size, replicas, r)) for r in range(replicas)
    ]
    assert not ExactShardSampler(size, replicas, 0).shuffle  # Lightning: not a shuffled loader
