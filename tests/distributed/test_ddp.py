"""Two-process DDP on the CPU (gloo), through the real ``attnexp-train``: the numbers equal a
one-process evaluation, the ranks hold the same weights, one record / summary line / wandb
run, resume after a kill continues exactly, and ``ddp_spawn`` records the same fields."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ddp_support import (
    DDP2,
    TINY_DDP,
    env_with,
    evaluate_in_one_process,
    finish,
    kill_group_when,
    record,
    runs_below,
    same_tensors,
    start,
    summary_lines,
    weights,
    write_rank_dump,
)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """One 2-process DDP run (2 epochs) with wandb offline and every rank's final weights."""
    base = tmp_path_factory.mktemp("ddp")
    plugin = write_rank_dump(base / "plugin")
    dump = base / "dump"
    proc = start(
        [
            *TINY_DDP,
            *DDP2,
            "logger=wandb",
            f"paths.root={base / 'out'}",
            "+callbacks.rank_dump._target_=rank_dump.RankWeightsDump",
            f"+callbacks.rank_dump.out={dump}",
        ],
        cwd=base,
        env=env_with(plugin),
    )
    output = finish(proc)
    assert proc.returncode == 0, output[-5000:]
    runs = runs_below(base / "out")
    return {"base": base, "output": output, "runs": runs, "dump": dump}


def test_one_record_one_summary_line_one_wandb_run(ddp) -> None:
    assert len(ddp["runs"]) == 1, ddp["runs"]
    run_dir = ddp["runs"][0]
    assert len(summary_lines(ddp["output"])) == 1, ddp["output"][-3000:]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    # the only run dir below the root: rank 1 wrote nowhere else
    assert [p for p in (ddp["base"] / "out").rglob(".hydra")] == [run_dir / ".hydra"]
    assert "sync_dist" not in ddp["output"]  # every epoch metric is logged as reduced


def test_record_states_world_size_and_global_batch(ddp) -> None:
    rec = record(ddp["runs"][0])
    assert rec["status"] == "completed" and rec["epochs"] == 2
    training = rec["training"]
    assert (training["world_size"], training["per_device_batch"], training["global_batch"]) == (
        2,
        32,
        64,
    )
    assert rec["global_step"] == 4  # 128 images / 64 per step x 2 epochs
    assert training["lr"] is not None


def test_errors_equal_a_one_process_evaluation_of_the_checkpoint(ddp) -> None:
    """1,001 val/test images on 2 ranks x 100 per batch: each counted once (no padding)."""
    run_dir = ddp["runs"][0]
    rec = record(run_dir)
    best = run_dir / "checkpoints" / rec["test"]["checkpoint_file"]
    single = evaluate_in_one_process(run_dir, best)
    assert rec["test"]["top1_err"] == single["test"]["top1_err"]
    assert rec["test"]["top5_err"] == single["test"]["top5_err"]
    assert rec["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-5)
    # the best checkpoint is the last epoch's or the first's; its validation numbers
    last_is_best = rec["best"]["epoch"] == rec["epochs"] - 1
    assert rec["best"]["val_top1_err"] == single["val"]["top1_err"]
    if last_is_best:
        assert rec["final"]["val_top5_err"] == single["val"]["top5_err"]
        assert rec["final"]["val_loss"] == pytest.approx(single["val"]["loss"], rel=1e-5)
    # error rates are multiples of 100/1001: the counts came from exactly 1,001 images
    count = rec["test"]["top1_err"] * 1001 / 100
    assert abs(count - round(count)) < 1e-3  # float32 percentages


def test_both_ranks_end_with_identical_weights(ddp) -> None:
    dumps = sorted(ddp["dump"].glob("rank*.pt"))
    assert [p.name for p in dumps] == ["rank0.pt", "rank1.pt"]
    rank0, rank1 = (weights(p) for p in dumps)
    model_keys = [k for k in rank0 if k.startswith("model.")]
    assert model_keys
    assert not same_tensors({k: rank0[k] for k in model_keys}, {k: rank1[k] for k in model_keys})


def test_resume_after_a_kill_ends_like_the_uninterrupted_run(ddp, tmp_path: Path) -> None:
    """SIGKILL of both ranks once epoch 0's last.ckpt exists; resume=<run dir> under DDP
    continues at epoch 1 and ends with the same metrics and weights."""
    root = tmp_path / "out"
    proc = start([*TINY_DDP, *DDP2, f"paths.root={root}"], cwd=tmp_path, env=env_with())
    runs = root / "default" / "runs"
    while not runs.exists() or not any(runs.iterdir()):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    run_dir = next(runs.iterdir())
    kill_group_when(proc, run_dir / "checkpoints" / "last.ckpt")
    assert not (run_dir / "metrics.json").exists()

    resumed = start([f"resume={run_dir}"], cwd=tmp_path, env=env_with())
    output = finish(resumed)
    assert resumed.returncode == 0, output[-5000:]
    assert "resuming" in output and "step 2)" in output
    ref, got = record(ddp["runs"][0]), record(run_dir)
    for key in ("epochs", "global_step", "final", "best", "test"):
        assert got[key] == ref[key], key
    assert got["training"]["resumed_at"]["global_step"] == 2
    ref_w = weights(ddp["runs"][0] / "checkpoints" / "last.ckpt")
    got_w = weights(run_dir / "checkpoints" / "last.ckpt")
    assert not same_tensors(ref_w, got_w)


@pytest.mark.essential  # ddp_spawn + ddp fits: ~25 s (make test stays under 15 min)
def test_ddp_spawn_records_what_ddp_records(ddp, tmp_path: Path) -> None:
    proc = start(
        [*TINY_DDP, "trainer.devices=2", "trainer.strategy=ddp_spawn", "logger=wandb",
         f"paths.root={tmp_path / 'out'}"],
        cwd=tmp_path,
        env=env_with(),
    )  # fmt: skip
    output = finish(proc)
    assert proc.returncode == 0, output[-5000:]
    (run_dir,) = runs_below(tmp_path / "out")
    assert len(summary_lines(output)) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    ref, got = record(ddp["runs"][0]), record(run_dir)
    for key in ("status", "epochs", "global_step", "best"):
        assert got[key] == ref[key], key
    for part in ("test", "final"):  # errors exactly; losses up to float32 summation order
        for key, value in ref[part].items():
            if isinstance(value, float) and "loss" in key:
                assert got[part][key] == pytest.approx(value, rel=1e-6), (part, key)
            else:
                assert got[part][key] == value, (part, key)
    for key in ("lr", "world_size", "per_device_batch", "global_batch"):
        assert got["training"][key] == ref["training"][key], key
    assert got["throughput"]["train_images_per_s"] is not None
    assert (run_dir / "csv" / "metrics.csv").read_text().count("test/top1_err") == 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_equal_one_node_of_two(ddp, tmp_path: Path) -> None:
    """trainer.num_nodes=2 started as Lightning documents for a cluster without a scheduler:
    the same command on every node with MASTER_ADDR/MASTER_PORT/NODE_RANK/WORLD_SIZE (here two
    local "nodes" of one CPU process each, rendezvous on 127.0.0.1); the run dir is pinned
    with hydra.run.dir so both nodes write to one run."""
    run_dir = tmp_path / "run"
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        env = env_with(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), WORLD_SIZE="2",
            LOCAL_RANK="0",
        )  # fmt: skip
        args = [*TINY_DDP, "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
                f"hydra.run.dir={run_dir}"]  # fmt: skip
        if node:
            args.append("hydra.output_subdir=null")  # node 0 keeps the run's config
        procs.append(start(args, cwd=tmp_path, env=env))
    outputs = [finish(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert len(summary_lines(outputs[0])) == 1 and not summary_lines(outputs[1])
    ref, got = record(ddp["runs"][0]), record(run_dir)
    assert got["training"]["world_size"] == 2
    for key in ("epochs", "global_step", "final", "best", "test"):
        assert got[key] == ref[key], key
    assert not same_tensors(
        weights(ddp["runs"][0] / "checkpoints" / "last.ckpt"),
        weights(run_dir / "checkpoints" / "last.ckpt"),
    )
