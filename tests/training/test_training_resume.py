"""Checkpoints and resume: atomic writes, resume in place at the right epoch/step/batch,
bit-identical results after an interruption (deterministic CPU), SIGKILL and SIGTERM of
real processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from train_support import (
    THREE_EPOCHS,
    StepTrace,
    cli,
    kill,
    metrics,
    same_result,
    state_dict,
    train_with,
    wait_for_checkpoint,
)

from attnexp.compose import compose_config
from attnexp.errors import ConfigError
from attnexp.training import resume
from attnexp.training.checkpoint_io import atomic_torch_save


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list]:
    """An uninterrupted run of THREE_EPOCHS (run dir, per-step trace)."""
    from _pytest.monkeypatch import MonkeyPatch

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    trace = StepTrace()
    with MonkeyPatch.context() as mp:
        record = train_with(compose_config(THREE_EPOCHS, run_dir), trace, monkeypatch=mp)
    assert record["status"] == "completed" and record["global_step"] == 12
    return run_dir, trace.rows


def _assert_same_run(reference_dir: Path, run_dir: Path) -> None:
    ref, got = metrics(reference_dir), metrics(run_dir)
    assert not same_result(ref, got), {k: (ref[k], got[k]) for k in same_result(ref, got)}
    a, b = (
        state_dict(reference_dir / "checkpoints/last.ckpt"),
        state_dict(run_dir / "checkpoints/last.ckpt"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (reference_dir / "csv/metrics.csv").read_text() == (
        run_dir / "csv/metrics.csv"
    ).read_text()


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "big": torch.zeros(1000), "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=False) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_mid_epoch_interrupt_and_resume_is_exact(reference, tmp_path: Path, monkeypatch) -> None:
    """SIGTERM (Lightning's flag) after step 6 of 12 (epoch 1, batch 3 of 4): last.ckpt is
    saved mid-epoch; resume=<run dir> continues at epoch 1, step 6, batch 3 with the same
    batches and learning rates, and ends with the same weights, metrics and CSV log."""
    ref_dir, ref_rows = reference
    run_dir = tmp_path / "run"
    cfg = compose_config(THREE_EPOCHS, run_dir)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException):
        train_with(cfg, StepTrace(sigterm_at=6), monkeypatch=monkeypatch)
    stopped = metrics(run_dir)
    assert stopped["status"] == "interrupted" and stopped["global_step"] == 6
    assert f"resume={run_dir.resolve()}" in stopped["error"]["hint"]
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 6

    trace = StepTrace()
    record = train_with(
        compose_config([*THREE_EPOCHS, f"resume={run_dir}"], run_dir),
        trace,
        monkeypatch=monkeypatch,
    )
    assert trace.rows[0][:2] == (1, 6)  # epoch 1, global step 6: the 3rd batch of epoch 1
    assert trace.rows == ref_rows[6:]  # same batches, same learning rates
    assert record["training"]["resumed_at"] == {"epoch": 1, "global_step": 6}
    assert record["training"]["resumes"][0]["global_step"] == 6
    _assert_same_run(ref_dir, run_dir)


def test_sigkill_after_first_checkpoint_then_resume_matches(reference, tmp_path: Path) -> None:
    """A real process killed with SIGKILL (nothing can be saved then) right after its first
    checkpoint; `attnexp-train resume=<run dir>` finishes it with the uninterrupted result."""
    ref_dir, _ = reference
    run_dir = tmp_path / "killed"
    proc = cli(
        *THREE_EPOCHS,
        "callbacks.preemption.every_n_train_steps=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    wait_for_checkpoint(run_dir / "checkpoints/last.ckpt", proc)
    kill(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    config_before = (run_dir / ".hydra/config.yaml").read_text()

    resumed = cli(f"resume={run_dir}", cwd=tmp_path)
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    assert "[attnexp] resuming" in out
    assert (run_dir / ".hydra/config.yaml").read_text() == config_before  # the record stays
    assert len(list(tmp_path.glob("outputs/**/.hydra"))) == 0  # no second run dir
    assert metrics(run_dir)["training"]["resumes"][0]["reason"] == "resume"
    _assert_same_run(ref_dir, run_dir)


def test_sigterm_saves_last_checkpoint_and_exits(tmp_path: Path) -> None:
    run_dir = tmp_path / "term"
    proc = cli(
        *THREE_EPOCHS,
        "trainer.max_epochs=50",
        "callbacks.preemption.every_n_train_steps=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    wait_for_checkpoint(run_dir / "checkpoints/last.ckpt", proc)
    out = kill(proc, signal.SIGTERM)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out
    record = metrics(run_dir)
    assert record["status"] == "interrupted" and "resume=" in record["error"]["hint"]
    saved = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert saved["global_step"] == record["global_step"] >= 1  # saved at the stop, not before


def test_resume_refuses_overrides_that_change_the_run(reference) -> None:
    ref_dir, _ = reference
    cfg = compose_config(["resume=" + str(ref_dir)], ref_dir)
    with pytest.raises(ConfigError, match="optimizer.lr=0.5"):
        resume.plan(cfg, [f"resume={ref_dir}", "optimizer.lr=0.5"])
    with pytest.raises(ConfigError, match="already completed"):  # nothing left to train
        resume.plan(cfg, [f"resume={ref_dir}"])
    plan = resume.plan(cfg, [f"resume={ref_dir}", "trainer.max_epochs=5"])
    assert plan is not None and plan.in_place and plan.run_dir == ref_dir.resolve()
    assert plan.cfg.trainer.max_epochs == 5 and plan.cfg.paths.output_dir == str(ref_dir.resolve())
    assert (plan.epoch, plan.global_step) == (2, 12)
    assert OmegaConf.to_container(plan.cfg.optimizer) == OmegaConf.to_container(
        OmegaConf.load(ref_dir / ".hydra/config.yaml").optimizer
    )


def test_resume_targets(reference, tmp_path: Path) -> None:
    ref_dir, _ = reference
    assert resume.locate(ref_dir) == (
        ref_dir.resolve(),
        (ref_dir / "checkpoints/last.ckpt").resolve(),
    )
    best = next((ref_dir / "checkpoints").glob("best-*.ckpt"))
    assert resume.locate(best)[1] == best.resolve()
    with pytest.raises(ConfigError, match="no such file or directory"):
        resume.locate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="last.ckpt does not exist"):
        resume.locate(tmp_path / "empty")
    # a checkpoint outside any run dir continues into a new run dir with the composed config
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes((ref_dir / "checkpoints/last.ckpt").read_bytes())
    cfg = compose_config([f"resume={loose}"], tmp_path / "new")
    plan = resume.plan(cfg, [])
    assert plan is not None and not plan.in_place and plan.run_dir == (tmp_path / "new").resolve()


def test_requeued_job_resumes_its_own_run_dir(reference, tmp_path: Path) -> None:
    """A fresh start in a run dir that already has last.ckpt (SLURM/submitit requeue reruns
    the same job in the same dir) resumes instead of training from scratch."""
    ref_dir, _ = reference
    run_dir = tmp_path / "requeued"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints/last.ckpt").write_bytes(
        (ref_dir / "checkpoints/last.ckpt").read_bytes()
    )
    plan = resume.plan(compose_config(THREE_EPOCHS, run_dir), [])
    assert plan is not None and plan.reason == "requeue" and plan.global_step == 12
