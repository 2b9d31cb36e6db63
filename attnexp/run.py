"""One training run, from a composed config to a filled run directory.

Whatever happens, the run dir ends with a ``metrics.json``: ``status`` is ``completed``,
``failed`` (an exception: a config error, a NaN loss, a crash; ``error`` says what) or
``interrupted`` (SIGTERM / Ctrl-C; ``last.ckpt`` was saved, ``resume=<run dir>``
continues). Sweep tables read the status, so a broken run is flagged, never dropped.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from attnexp import builders
from attnexp.results import read_metrics, write_metrics
from attnexp.runtime import git_commit, package_version
from attnexp.training import resume as resume_mod

log = logging.getLogger(__name__)


def _metric(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if value is not None else None


def _hydra_runtime() -> Any | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not started by Hydra (tests, notebooks)
        return None


def task_overrides() -> list[str]:
    """The command-line overrides of this Hydra job ([] outside Hydra)."""
    hc = _hydra_runtime()
    return list(hc.overrides.task) if hc is not None else []


def _hydra_info() -> dict[str, Any]:
    hc = _hydra_runtime()
    if hc is None:
        return {"choices": {}, "overrides": [], "job_num": None}
    choices = {
        k: v
        for k, v in OmegaConf.to_container(hc.runtime.choices).items()
        if not k.startswith("hydra/")
    }
    return {
        "choices": choices,
        "overrides": list(hc.overrides.task),
        "job_num": hc.job.get("num"),
        "sweep_dir": hc.sweep.dir if hc.mode.name == "MULTIRUN" else None,
    }


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _model_checkpoint(trainer: L.Trainer | None) -> ModelCheckpoint | None:
    if trainer is None:
        return None
    """The best-by-validation checkpointer (the one with a monitor; last.ckpt has its own)."""
    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    return next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)


class _Run:
    """What is known so far about the run; turned into the record at the end or on failure."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.plan: resume_mod.ResumePlan | None = None
        self.costs: Any = None
        self.datamodule: Any = None
        self.module: Any = None
        self.trainer: L.Trainer | None = None
        self.fit_seconds: float | None = None
        self.fit_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}
        self.test_checkpoint: str | None = None
        #: Every resume of this run dir so far: [{checkpoint, epoch, global_step, reason}].
        self.resumes: list[dict[str, Any]] = []
        self.loggers: list[Any] = []

    def record(self, status: str, error: BaseException | None = None) -> dict[str, Any]:
        cfg, trainer = self.cfg, self.trainer
        ckpt = _model_checkpoint(trainer)
        best_val = best_epoch = None
        if ckpt is not None and ckpt.best_model_score is not None:
            best_val = float(ckpt.best_model_score)
            best_epoch = _epoch_of(ckpt.best_model_path)
        epochs = int(trainer.current_epoch) if trainer is not None else None
        steps = int(trainer.global_step) if trainer is not None else None
        train_images = _images_per_epoch(trainer, self.datamodule)
        fit_seconds = self.fit_seconds
        ema = next(
            (c for c in (trainer.callbacks if trainer else []) if type(c).__name__ == "EMA"), None
        )
        costs = self.costs
        plan = self.plan
        record: dict[str, Any] = {
            "status": status,
            "experiment": cfg.get("experiment_name"),
            "run_dir": str(run_dir_of(cfg).resolve()),
            "seed": _safe(lambda: int(cfg.seed)),
            "model": _safe(lambda: cfg.model.name),
            "attention": _safe(lambda: cfg.attention.get("name", "none")),
            "dataset": _safe(lambda: cfg.data.name),
            "epochs": epochs,
            "global_step": steps,
            "final": {
                "val_top1_err": _metric(self.fit_metrics, "val/top1_err"),
                "val_top5_err": _metric(self.fit_metrics, "val/top5_err"),
                "val_loss": _metric(self.fit_metrics, "val/loss"),
                "train_loss": _metric(self.fit_metrics, "train/loss"),
                "train_top1_err": _metric(self.fit_metrics, "train/top1_err"),
            },
            "best": {"val_top1_err": best_val, "epoch": best_epoch},
            "test": {
                "top1_err": _metric(self.test_metrics, "test/top1_err"),
                "top5_err": _metric(self.test_metrics, "test/top5_err"),
                "loss": _metric(self.test_metrics, "test/loss"),
                # "best" (the best-val checkpoint), "final" (last weights: no checkpointing) or None
                "checkpoint": ("best" if self.test_checkpoint else "final")
                if self.test_metrics
                else None,
                "checkpoint_file": Path(self.test_checkpoint).name
                if self.test_checkpoint
                else None,
            },
            "costs": {
                "params": costs.params if costs else None,
                "macs": costs.macs if costs else None,
                "attention_ops": costs.attention_ops if costs else None,
                "input_shape": list(costs.input_shape) if costs else None,
                "counter": "attnexp.models.costs (conv+linear multiply-adds; attention ops separately)",
            },
            "throughput": {
                "fit_seconds": fit_seconds,
                "train_images_per_s": (train_images * _trained_epochs(trainer, plan) / fit_seconds)
                if train_images and fit_seconds and _trained_epochs(trainer, plan) > 0
                else None,
                "device": str(trainer.strategy.root_device) if trainer is not None else None,
                "precision": str(trainer.precision) if trainer is not None else None,
            },
            "training": {
                "lr": getattr(self.module, "effective_lr", None),
                "ema": ema is not None,
                "ema_decay": ema.decay if ema is not None else None,
                "resumed_from": str(plan.checkpoint) if plan else None,
                "resumed_at": {"epoch": plan.epoch, "global_step": plan.global_step}
                if plan
                else None,
                "resumes": self.resumes,
            },
            "wall_seconds": time.time() - self.started,
            "hydra": plan.hydra if plan and plan.hydra else _hydra_info(),
            "config": _safe(lambda: OmegaConf.to_container(cfg, resolve=True)),
            "version": package_version(),
            "git_commit": git_commit(),
            "torch": torch.__version__,
        }
        if error is not None:
            record["error"] = {
                "type": type(error).__name__,
                "message": str(error) or type(error).__name__,
                "epoch": epochs,
                "global_step": steps,
                "traceback": "".join(traceback.format_exception(error))[-4000:],
            }
        return record


def _safe(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # a broken config must not stop the failure record
        return None


def _epoch_of(path: str) -> int | None:
    """The epoch in ``best-epoch007.ckpt`` (0-based, as Lightning counts)."""
    import re

    match = re.search(r"epoch[=]?(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def _images_per_epoch(trainer: L.Trainer | None, datamodule: Any) -> int | None:
    """Training images per epoch over all devices (respecting limit_train_batches)."""
    if trainer is None or datamodule is None or not hasattr(datamodule, "splits"):
        return None
    total = len(datamodule.splits["train"][1])
    batches = trainer.num_training_batches
    batch_size = getattr(datamodule, "batch_size", None)
    if batch_size and batches != float("inf"):
        total = min(total, int(batches) * int(batch_size) * int(trainer.world_size))
    return total


def _trained_epochs(trainer: L.Trainer | None, plan: resume_mod.ResumePlan | None) -> float:
    if trainer is None:
        return 0.0
    start = plan.epoch if plan else 0
    return float(trainer.current_epoch - start)


def _status_of(err: BaseException) -> str:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(err, (SIGTERMException, KeyboardInterrupt)):
        return "interrupted"
    if isinstance(err, SystemExit) and not isinstance(err.code, str):
        return "interrupted"  # Lightning turns Ctrl-C into sys.exit(1)
    return "failed"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, test on the best checkpoint, write metrics.json.

    Raises whatever stopped the run, after recording it in metrics.json (status failed or
    interrupted); the caller (``attnexp-train``) decides what a failure means for a sweep.
    """
    run = _Run(cfg)
    status = "failed"
    try:
        run.plan = resume_mod.plan(cfg, task_overrides())
        if run.plan is not None:
            run.cfg = run.plan.cfg
            run.resumes = _previous_resumes(run.plan) + [
                {
                    "checkpoint": str(run.plan.checkpoint),
                    "epoch": run.plan.epoch,
                    "global_step": run.plan.global_step,
                    "reason": run.plan.reason,
                }
            ]
            print(
                f"[attnexp] resuming {run.plan.run_dir} from {run.plan.checkpoint.name} "
                f"(epoch {run.plan.epoch}, step {run.plan.global_step})"
            )
        _save_config(run.cfg)
        record = _train(run)
        status = "completed"
    except BaseException as err:
        status = _status_of(err)
        _record_failure(run, status, err)
        raise
    finally:
        _close_loggers(run, status)
    if _is_rank_zero():
        write_metrics(run_dir_of(run.cfg), record, overwrite=_may_overwrite(run))
    return record


def _is_rank_zero() -> bool:
    """Only the global rank 0 of a multi-GPU / multi-node run writes the run record (the
    other ranks would race for the same file); Lightning tracks the rank (from RANK,
    LOCAL_RANK or SLURM_PROCID, then from the strategy)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _save_config(cfg: DictConfig) -> None:
    """Give runs started outside Hydra (tests, notebooks) the ``.hydra/config.yaml`` that
    every tool (resume, attnexp-eval, tables) uses to recognise and rebuild a run."""
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / resume_mod.HYDRA_DIR / "config.yaml"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        OmegaConf.save(cfg, path)


def _previous_resumes(plan: resume_mod.ResumePlan) -> list[dict[str, Any]]:
    if not plan.in_place:
        return []
    try:
        previous = read_metrics(plan.run_dir)
    except (OSError, ValueError):
        return []
    return list((previous.get("training") or {}).get("resumes") or [])


def _may_overwrite(run: _Run) -> bool:
    """A record replaces an earlier one in the same run dir only when that run did not
    complete, or when this run continues it (resume, e.g. with more epochs)."""
    if run.plan is not None and run.plan.in_place:
        return True
    return resume_mod.previous_status(run_dir_of(run.cfg)) != "completed"


def _record_failure(run: _Run, status: str, err: BaseException) -> None:
    try:
        run_dir = run_dir_of(run.cfg)
        if not _is_rank_zero() or not _may_overwrite(run):  # e.g. a config error when
            return  # starting in a finished run dir
        record = run.record(status, err)
        if status == "interrupted":
            record["error"]["hint"] = f"continue with: attnexp-train resume={run_dir.resolve()}"
        write_metrics(run_dir, record, overwrite=True)
        print(summary_line(record))
    except Exception as inner:  # the original error matters more than the record
        log.error("could not write the failure record: %s", inner)


def _train(run: _Run) -> dict[str, Any]:
    from attnexp.models.costs import count_costs
    from attnexp.validation import validate_config

    cfg = run.cfg
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # Every config check, and the backbone with its placements, before any data is loaded.
    backbone = validate_config(cfg)
    run.datamodule = builders_datamodule(cfg)
    image_size = int(cfg.data.get("image_size", 32))
    run.costs = count_costs(backbone, (1, 3, image_size, image_size))
    run.module = builders.build_module(cfg, backbone, run.datamodule.num_classes)
    run.loggers = builders.build_loggers(cfg)
    if run.plan is not None and run.plan.in_place:
        for logger in run.loggers:
            if hasattr(logger, "resume_from"):
                logger.resume_from(run.plan.epoch, run.plan.global_step)
    _log_config(run)
    trainer = run.trainer = builders.build_trainer(cfg, builders.build_callbacks(cfg), run.loggers)

    fit_start = time.time()
    ckpt_path = str(run.plan.checkpoint) if run.plan is not None else None
    trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path)
    run.fit_seconds = time.time() - fit_start
    run.fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", True) and not trainer.fast_dev_run:
        ckpt = _model_checkpoint(trainer)
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        if best and not Path(best).is_file():
            raise FileNotFoundError(f"the best checkpoint {best} is missing; cannot test on it")
        results = trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best, verbose=False)
        run.test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        run.test_checkpoint = best
    record = run.record("completed")
    _log_summary(run, record)
    return record


def _log_config(run: _Run) -> None:
    """The resolved config (top-level keys, so wandb can filter on them), the Hydra choices
    and command-line overrides, and the model's cost go to every logger (CSV: hparams.yaml)."""
    params = dict(OmegaConf.to_container(run.cfg, resolve=True))
    params["costs"] = {
        "params": run.costs.params,
        "macs": run.costs.macs,
        "attention_ops": run.costs.attention_ops,
    }
    # What the user typed (and which config file of each group was chosen), so dashboards
    # can group a sweep by its varied options rather than by the expanded config.
    params["hydra"] = _hydra_info()
    for logger in run.loggers:
        logger.log_hyperparams(params)


def _log_summary(run: _Run, record: dict[str, Any]) -> None:
    summary = {
        "status": record["status"],
        "test/top1_err": record["test"]["top1_err"],
        "test/top5_err": record["test"]["top5_err"],
        "best/val_top1_err": record["best"]["val_top1_err"],
        "costs/params": record["costs"]["params"],
        "costs/macs": record["costs"]["macs"],
    }
    for logger in run.loggers:
        if hasattr(logger, "log_summary"):
            logger.log_summary(summary)


def _close_loggers(run: _Run, status: str) -> None:
    for logger in run.loggers:
        if hasattr(logger, "finish"):
            try:
                if status != "completed":
                    logger.log_summary({"status": status})
                logger.finish(exit_code=0 if status == "completed" else 1)
            except Exception as err:  # closing a logger must not mask the run's own outcome
                log.warning("could not close logger %s: %s", type(logger).__name__, err)


def builders_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    from attnexp.data import build_datamodule

    return build_datamodule(builders.to_dict(cfg.data))


def summary_line(record: dict[str, Any]) -> str:
    """One line a user can paste: what ran, the errors, the cost and the time."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    what = f"{record['model']}+{record['attention']} on {record['dataset']} seed={record['seed']}"
    if record["status"] != "completed":
        err = record.get("error", {})
        where = (
            "before training"
            if record["global_step"] is None
            else f"at epoch {record['epochs']}, step {record['global_step']}"
        )
        return (
            f"[attnexp] {record['status'].upper()} {what} {where}: "
            f"{err.get('type')}: {err.get('message')} -> {record['run_dir']}"
        )
    test, best = record["test"], record["best"]
    params, macs = record["costs"]["params"], record["costs"]["macs"]
    return (
        f"[attnexp] {what}: "
        f"test top1/top5 err {fmt(test['top1_err'])}/{fmt(test['top5_err'])}%, "
        f"best val top1 err {fmt(best['val_top1_err'])}%, "
        f"{params:,} params, {macs / 1e6:.1f} MMACs, "
        f"{record['epochs']} epochs in {record['wall_seconds']:.0f}s -> {record['run_dir']}"
    )
