"""Helpers for the multi-process tests: tiny DDP command lines, real attnexp-train processes
(gloo on the CPU), a per-rank weight dump, and a one-process evaluation of a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

# Tiny synthetic data at 16x16; val and test of 1,001 images (not a multiple of 2 x 100),
# two epochs of two steps per rank; deterministic kernels.
TINY_DDP = [
    "+debug=smoke",
    "callbacks.progress=null",
    "trainer.deterministic=true",
    "data.image_size=16",
    "data.num_train=128",
    "data.num_val=1001",
    "data.num_test=1001",
    "data.global_batch=64",  # 32 per device on 2 devices
    "data.eval_batch_size=100",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=1.0",
    "trainer.limit_val_batches=1.0",
    "trainer.limit_test_batches=1.0",
    "trainer.accelerator=cpu",
]
DDP2 = ["trainer.devices=2", "trainer.strategy=ddp"]

#: A callback the tests add with ``+callbacks.rank_dump=...``: every rank saves its model's
#: state dict at the end of fit (a user callback, importable from PYTHONPATH).
RANK_DUMP = """
import os
import lightning as L
import torch


class RankWeightsDump(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer, pl_module):
        os.makedirs(self.out, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))
"""


def write_rank_dump(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rank_dump.py").write_text(RANK_DUMP)
    return folder


def env_with(path: Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **extra}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]  # the tests run as if on a workstation
    return env


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``attnexp-train *args`` in its own session (the ranks are its children: a kill of the
    process group ends them all)."""
    return subprocess.Popen(
        [sys.executable, "-m", "attnexp.cli.train", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout}s:\n{out[-4000:]}") from None
    return out


def kill_group_when(proc: subprocess.Popen, path: Path, timeout: float = 600) -> str:
    """SIGKILL the whole process group as soon as ``path`` exists."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"ended before {path} appeared:\n{proc.stdout.read()[-4000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {path} after {timeout}s")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out


def runs_below(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


def summary_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[attnexp]") and "->" in line]


def evaluate_in_one_process(run_dir: Path, checkpoint: Path) -> dict[str, dict[str, float]]:
    """val and test metrics of ``checkpoint`` in this process (one device, no DDP), built
    from the run's saved config with the same builders as training."""
    from omegaconf import OmegaConf, open_dict

    from attnexp import builders
    from attnexp.data import build_datamodule

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    datamodule = build_datamodule(builders.to_dict(cfg.data))
    module = builders.build_module(cfg, builders.build_backbone(cfg), datamodule.num_classes)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    out = {}
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        results = run(module, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)
        out[split] = {k.split("/", 1)[1]: float(v) for k, v in results[0].items()}
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("state_dict", state)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose tensors differ (or exist on one side only)."""
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or not torch.equal(a[k], b[k])]
