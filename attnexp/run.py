"""One training run, from a composed config to a filled run directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from attnexp import builders
from attnexp.analysis.costs import count_costs
from attnexp.results import write_metrics
from attnexp.runtime import git_commit, package_version


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if value is not None else None


def _hydra_info() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:  # not started by Hydra (tests, notebooks)
        return {"choices": {}, "overrides": [], "job_num": None}
    choices = {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")}
    return {
        "choices": choices,
        "overrides": list(hc.overrides.task),
        "job_num": hc.job.get("num"),
        "sweep_dir": hc.sweep.dir if hc.mode.name == "MULTIRUN" else None,
    }


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, test on the best checkpoint, write metrics.json."""
    started = time.time()
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = builders_datamodule(cfg)
    backbone = builders.build_backbone(cfg)
    image_size = int(cfg.data.get("image_size", 32))
    costs = count_costs(backbone, (1, 3, image_size, image_size))
    module = builders.build_module(cfg, backbone, datamodule.num_classes)
    trainer = builders.build_trainer(cfg, builders.build_callbacks(cfg), builders.build_loggers(cfg))

    fit_start = time.time()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.time() - fit_start
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    test_metrics: dict[str, float] = {}
    if cfg.get("test", True) and not trainer.fast_dev_run:
        ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}

    best_val = None
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
        best_val = float(trainer.checkpoint_callback.best_model_score)
    train_images = len(datamodule.splits["train"][1]) if hasattr(datamodule, "splits") else None
    record = {
        "status": "completed",
        "experiment": cfg.get("experiment_name"),
        "run_dir": str(run_dir.resolve()),
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "attention": cfg.attention.get("name", "none"),
        "dataset": cfg.data.name,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "final": {
            "val_top1_err": _metric(fit_metrics, "val/top1_err"),
            "val_top5_err": _metric(fit_metrics, "val/top5_err"),
            "val_loss": _metric(fit_metrics, "val/loss"),
            "train_loss": _metric(fit_metrics, "train/loss"),
            "train_top1_err": _metric(fit_metrics, "train/top1_err"),
        },
        "best": {"val_top1_err": best_val},
        "test": {
            "top1_err": _metric(test_metrics, "test/top1_err"),
            "top5_err": _metric(test_metrics, "test/top5_err"),
            "loss": _metric(test_metrics, "test/loss"),
            "checkpoint": "best" if test_metrics else None,
        },
        "costs": {
            "params": costs.params,
            "macs": costs.macs,
            "attention_ops": costs.attention_ops,
            "input_shape": list(costs.input_shape),
            "counter": "attnexp.analysis.costs (conv+linear multiply-adds; attention ops separately)",
        },
        "throughput": {
            "fit_seconds": fit_seconds,
            "train_images_per_s": (train_images * trainer.current_epoch / fit_seconds)
            if train_images and fit_seconds > 0
            else None,
            "device": str(trainer.strategy.root_device),
            "precision": str(trainer.precision),
        },
        "wall_seconds": time.time() - started,
        "hydra": _hydra_info(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "version": package_version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
    }
    write_metrics(run_dir, record)
    return record


def builders_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    from attnexp.data import build_datamodule

    return build_datamodule(builders.to_dict(cfg.data))


def summary_line(record: dict[str, Any]) -> str:
    """One line a user can paste: what ran, the errors, the cost and the time."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    test, best = record["test"], record["best"]
    return (
        f"[attnexp] {record['model']}+{record['attention']} on {record['dataset']} seed={record['seed']}: "
        f"test top1/top5 err {fmt(test['top1_err'])}/{fmt(test['top5_err'])}%, "
        f"best val top1 err {fmt(best['val_top1_err'])}%, "
        f"{record['costs']['params']:,} params, {record['costs']['macs'] / 1e6:.1f} MMACs, "
        f"{record['epochs']} epochs in {record['wall_seconds']:.0f}s -> {record['run_dir']}"
    )
