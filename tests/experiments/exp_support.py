"""Helpers shared by the experiment tests (imported by name: pytest puts this folder on
sys.path; a unique module name avoids clashing with the other test folders' conftest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from attnexp.runtime import register_resolvers

register_resolvers()

#: On top of +debug=smoke: the smallest run that still trains, validates and tests
#: (8 images per batch at 16x16, one training step, no checkpoint files, no logger).
TINY: tuple[str, ...] = (
    "+debug=smoke",
    "data.num_train=16",
    "data.num_val=8",
    "data.num_test=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.image_size=16",
    "trainer.limit_train_batches=1",
    "callbacks=none",
    "logger=none",
)


def compose_train(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """conf/train.yaml composed with ``overrides`` (as attnexp-train would)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def write_run(
    run_dir: Path,
    overrides: list[str],
    *,
    seed: int,
    top1: float | None,
    top5: float | None = None,
    status: str = "completed",
    table: dict[str, Any] | None = None,
    params: int = 1000,
    macs: int = 5000,
    dataset: str = "cifar100",
    job_num: int = 0,
    images_per_s: float | None = None,
    compiled: bool = False,
) -> Path:
    """A metrics.json as attnexp.run writes it (only the fields attnexp-table reads)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in [*overrides, f"seed={seed}"])
    )
    record: dict[str, Any] = {
        "schema_version": 1,
        "status": status,
        "seed": seed,
        "model": "resnet20",
        "attention": "none",
        "dataset": dataset,
        "test": {"top1_err": top1, "top5_err": top5},
        "best": {"val_top1_err": top1},
        "final": {"val_top1_err": top1, "val_top5_err": top5},
        "costs": {"params": params, "macs": macs},
        "throughput": {"train_images_per_s": images_per_s, "device": "cpu"},
        "training": {"compile": {"setting": "auto", "compiled": compiled}},
        "hydra": {"overrides": [*overrides, f"seed={seed}"], "choices": {}, "job_num": job_num},
        "config": {"data": {"name": dataset}, "seed": seed, **({"table": table} if table else {})},
    }
    if status != "completed":
        record["error"] = {"type": "RuntimeError", "message": "loss is NaN"}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    return run_dir
