"""Numerical faults and failing runs: a NaN/inf stops the run with a clear message, never
overwrites the last good checkpoint, and is recorded; a failed run in a sweep does not
stop the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_support import TINY, cli, metrics

from attnexp.errors import ConfigError
from attnexp.run import train
from attnexp.training.module import NonFiniteLossError, nonfinite_message


def test_nan_loss_stops_with_message_and_keeps_the_last_good_checkpoint(
    make_cfg, tmp_path: Path
) -> None:
    """Epoch 0 trains at lr 0.1 (checkpoint saved); from epoch 1 the lr is 1e6 and the
    run blows up. It must stop, say why, and leave epoch 0's finite checkpoint alone."""
    run_dir = tmp_path / "run"
    cfg = make_cfg(
        *TINY,
        "trainer.max_epochs=3",
        "training.nonfinite_check_every=1",
        "scheduler=multistep",
        "scheduler.milestones=[1]",
        "scheduler.gamma=1e7",
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    message = str(info.value)
    assert "NaN/inf" in message and "optimizer step" in message and "learning rate" in message
    record = metrics(run_dir)
    assert record["status"] == "failed"
    assert (
        record["error"]["type"] == "NonFiniteLossError" and "NaN/inf" in record["error"]["message"]
    )
    assert record["best"]["val_top1_err"] is not None  # epoch 0 was fine and is kept
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 2
    assert all(t.isfinite().all() for t in last["state_dict"].values() if t.is_floating_point())


def test_nan_message_names_fp16_for_16_mixed() -> None:
    message = nonfinite_message(123, "16-mixed")
    assert "step 123" in message and "bf16-mixed" in message.split("(2)")[0]


def test_a_config_error_is_refused_before_the_run_dir_exists(make_cfg, tmp_path: Path) -> None:
    """A typo is refused naming the closest key, before anything is created: no run dir
    (so no half-made run) for a config that never started."""
    with pytest.raises(ConfigError, match=r"did you mean `training\.label_smoothing`"):
        train(make_cfg(*TINY, "+training.label_smothing=0.1"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_failed_run_in_a_sweep_does_not_stop_the_others(tmp_path: Path) -> None:
    """`-m optimizer.lr=-1,0.1`: job 0 fails (a negative lr is refused when the optimizer is
    built), job 1 still trains; both are recorded, the exit code says something failed."""
    proc = cli(
        "-m",
        *TINY,
        "optimizer.lr=-1,0.1",
        "test=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 2, out[-3000:]  # every failure was a config error: exit 2
    failed, done = metrics(tmp_path / "sweep/0"), metrics(tmp_path / "sweep/1")
    assert failed["status"] == "failed" and "learning rate" in failed["error"]["message"].lower()
    assert done["status"] == "completed" and done["global_step"] == 2
    assert "1 run(s) failed" in out and str(tmp_path / "sweep/0") in out
