"""One training run, from a composed config to a filled run directory.

Whatever happens, the run dir ends with a ``metrics.json``: ``status`` is ``completed``,
``failed`` (an exception: a config error, a NaN loss, a crash; ``error`` says what) or
``interrupted`` (SIGTERM / Ctrl-C; ``last.ckpt`` was saved, ``resume=<run dir>``
continues). Sweep tables read the status, so a broken run is flagged, never dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp import builders
from attnexp.errors import ConfigError
from attnexp.results import (
    AttentionSpec,
    BestMetrics,
    Costs,
    ErrorInfo,
    FinalMetrics,
    HydraInfo,
    RunDir,
    RunNames,
    RunRecord,
    TestMetrics,
    Throughput,
    TrainingInfo,
    as_record,
    run_names,
)
from attnexp.runtime import git_commit, package_version
from attnexp.training import resume as resume_mod
from attnexp.validation import check_config

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


def _hydra_info() -> HydraInfo:
    hc = _hydra_runtime()
    if hc is None:
        return HydraInfo()
    choices = {
        k: v
        for k, v in OmegaConf.to_container(hc.runtime.choices).items()
        if not k.startswith("hydra/")
    }
    return HydraInfo(
        choices=choices,
        overrides=list(hc.overrides.task),
        job_num=hc.job.get("num"),
        # a job's dir is <sweep dir>/<job num> (conf/hydra/default.yaml)
        sweep_dir=str(Path(hc.runtime.output_dir).parent) if hc.mode.name == "MULTIRUN" else None,
    )


def _known_hydra(data: dict[str, Any]) -> HydraInfo:
    return RunRecord.from_dict({"hydra": data}).hydra


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

    def record(self, status: str, error: BaseException | None = None) -> RunRecord:
        """The typed run record of what is known now (any part may still be missing)."""
        cfg, trainer, plan, costs = self.cfg, self.trainer, self.plan, self.costs
        ckpt = _model_checkpoint(trainer)
        best = BestMetrics()
        if ckpt is not None and ckpt.best_model_score is not None:
            best = BestMetrics(float(ckpt.best_model_score), _epoch_of(ckpt.best_model_path))
        epochs = int(trainer.current_epoch) if trainer is not None else None
        steps = int(trainer.global_step) if trainer is not None else None
        train_images = _images_per_epoch(trainer, self.datamodule)
        trained = _trained_epochs(trainer, plan)
        ema = next(
            (c for c in (trainer.callbacks if trainer else []) if type(c).__name__ == "EMA"), None
        )
        fit, test = self.fit_metrics, self.test_metrics
        record = RunRecord(
            status=status,
            experiment=cfg.get("experiment_name"),
            run_dir=str(run_dir_of(cfg).resolve()),
            seed=_safe(lambda: int(cfg.seed)),
            model=_safe(lambda: cfg.model.name),
            dataset=_safe(lambda: cfg.data.name),
            attention=_safe(lambda: AttentionSpec.from_config(cfg)) or AttentionSpec(),
            epochs=epochs,
            global_step=steps,
            final=FinalMetrics(
                val_top1_err=_metric(fit, "val/top1_err"),
                val_top5_err=_metric(fit, "val/top5_err"),
                val_loss=_metric(fit, "val/loss"),
                train_loss=_metric(fit, "train/loss"),
                train_top1_err=_metric(fit, "train/top1_err"),
            ),
            best=best,
            test=TestMetrics(
                top1_err=_metric(test, "test/top1_err"),
                top5_err=_metric(test, "test/top5_err"),
                loss=_metric(test, "test/loss"),
                # "best" (the best-val checkpoint), "final" (last weights: no checkpointing)
                checkpoint=("best" if self.test_checkpoint else "final") if test else None,
                checkpoint_file=Path(self.test_checkpoint).name if self.test_checkpoint else None,
            ),
            costs=Costs(
                params=costs.params,
                macs=costs.macs,
                attention_ops=costs.attention_ops,
                input_shape=list(costs.input_shape),
                counter="attnexp.models.costs (conv+linear multiply-adds; attention ops separately)",
            )
            if costs
            else Costs(),
            throughput=Throughput(
                fit_seconds=self.fit_seconds,
                train_images_per_s=(train_images * trained / self.fit_seconds)
                if train_images and self.fit_seconds and trained > 0
                else None,
                device=str(trainer.strategy.root_device) if trainer is not None else None,
                precision=str(trainer.precision) if trainer is not None else None,
            ),
            training=TrainingInfo(
                lr=getattr(self.module, "effective_lr", None),
                per_device_batch=_safe(lambda: int(cfg.data.batch_size)),
                world_size=int(trainer.world_size) if trainer is not None else None,
                # from the trainer, not the module: after ddp_spawn the main process's
                # module is no longer attached to a trainer
                global_batch=_safe(
                    lambda: (
                        int(cfg.data.batch_size)
                        * int(trainer.world_size)
                        * int(trainer.accumulate_grad_batches)
                    )
                ),
                ema=ema is not None,
                ema_decay=ema.decay if ema is not None else None,
                resumed_from=str(plan.checkpoint) if plan else None,
                resumed_at={"epoch": plan.epoch, "global_step": plan.global_step} if plan else None,
                resumes=self.resumes,
                compile=getattr(self.module, "compile_decision", None),
            ),
            wall_seconds=time.time() - self.started,
            hydra=self.hydra,
            names=self.names,
            config=_safe(lambda: OmegaConf.to_container(cfg, resolve=True)),
            version=package_version(),
            git_commit=git_commit(),
            torch=torch.__version__,
        )
        if error is not None:
            record.error = ErrorInfo(
                type=type(error).__name__,
                message=str(error) or type(error).__name__,
                epoch=epochs,
                global_step=steps,
                traceback="".join(traceback.format_exception(error))[-4000:],
            )
        return record

    @property
    def hydra(self) -> HydraInfo:
        """The original run's choices and overrides (a resume), else this job's."""
        if self.plan is not None and self.plan.hydra:
            return _known_hydra(self.plan.hydra)
        return _hydra_info()

    @property
    def names(self) -> RunNames:
        """Dashboard names (wandb group/name/tags, CSV hparams, the record): the sweep as
        the group, the swept values and the seed as the name."""
        cfg, hydra = self.cfg, self.hydra
        return run_names(
            cfg.get("experiment_name"),
            hydra.overrides,
            seed=_safe(lambda: int(cfg.seed)),
            sweep_dir=hydra.sweep_dir,
            sweep_name=cfg.get("sweep_name"),
            model=_safe(lambda: cfg.model.name),
            attention=_safe(lambda: AttentionSpec.from_config(cfg).name),
            dataset=_safe(lambda: cfg.data.name),
            extra_tags=[str(t) for t in cfg.get("tags") or []],
        )


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
    from attnexp import hardware

    hardware.sync_rank_zero_only(cfg)  # node 1's first process must not act as rank 0
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
            if _is_rank_zero():
                print(
                    f"[attnexp] resuming {run.plan.run_dir} from {run.plan.checkpoint.name} "
                    f"(epoch {run.plan.epoch}, step {run.plan.global_step})"
                )
        # Every schema and consistency check before the run dir is created or a seed set.
        check_config(run.cfg)
        if _is_rank_zero():
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
        RunDir(run_dir_of(run.cfg)).write_record(record, overwrite=_may_overwrite(run))
    return record.to_dict()


def _is_rank_zero() -> bool:
    """Only the global rank 0 of a multi-GPU / multi-node run writes the run record (the
    other ranks would race for the same file); Lightning tracks the rank (from RANK,
    LOCAL_RANK or SLURM_PROCID, then from the strategy)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _save_config(cfg: DictConfig) -> None:
    """Give runs started outside Hydra (tests, notebooks) the ``.hydra/config.yaml`` that
    every tool (resume, attnexp-eval, tables) uses to recognise and rebuild a run."""
    RunDir(run_dir_of(cfg)).save_config(cfg)


def _previous_resumes(plan: resume_mod.ResumePlan) -> list[dict[str, Any]]:
    if not plan.in_place:
        return []
    try:
        return list(RunDir(plan.run_dir).read_record().training.resumes)
    except (OSError, ValueError):
        return []


def _may_overwrite(run: _Run) -> bool:
    """A record replaces an earlier one in the same run dir only when that run did not
    complete, or when this run continues it (resume, e.g. with more epochs)."""
    if run.plan is not None and run.plan.in_place:
        return True
    return RunDir(run_dir_of(run.cfg)).status() != "completed"


def _record_failure(run: _Run, status: str, err: BaseException) -> None:
    try:
        run_dir = run_dir_of(run.cfg)
        if not _is_rank_zero() or not _may_overwrite(run):  # e.g. a config error when
            return  # starting in a finished run dir
        if isinstance(err, ConfigError) and not run_dir.exists():
            return  # refused before anything was created: leave no directory behind
        record = run.record(status, err)
        if status == "interrupted" and record.error is not None:
            record.error.hint = f"continue with: attnexp-train resume={run_dir.resolve()}"
        RunDir(run_dir).write_record(record, overwrite=True)
        print(record.summary_line())
    except Exception as inner:  # the original error matters more than the record
        log.error("could not write the failure record: %s", inner)


def _train(run: _Run) -> RunRecord:
    from attnexp.models.costs import count_costs
    from attnexp.validation import validate_config

    cfg = run.cfg
    # Every config check, and the backbone with its placements, before any data is loaded.
    # The seed was checked by check_config (train()); it must be set before the backbone is
    # built, or its initial weights differ from run to run (resume/DDP equality tests).
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    backbone = validate_config(cfg)
    from attnexp import hardware

    hc = _hydra_runtime()
    multirun = hc is not None and getattr(hc.mode, "name", None) == "MULTIRUN"
    hardware.check_not_reexecuting_sweep(cfg, multirun=multirun)
    hardware.apply_global_batch(cfg)  # data.global_batch -> per-device data.batch_size
    run.datamodule = builders_datamodule(cfg)
    image_size = int(cfg.data.get("image_size", 32))
    run.costs = count_costs(backbone, (1, 3, image_size, image_size))
    run.module = builders.build_module(cfg, backbone, run.datamodule.num_classes)
    run.loggers = builders.build_loggers(_with_names(cfg, run.names))
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
    from attnexp.training.spawn import restore_fit_state

    restore_fit_state(trainer, run.module)  # ddp_spawn: the fit ran in other processes
    run.fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", True) and not trainer.fast_dev_run:
        ckpt = _model_checkpoint(trainer)
        best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
        if best and not Path(best).is_file():
            raise FileNotFoundError(f"the best checkpoint {best} is missing; cannot test on it")
        results = trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best, verbose=False)
        run.test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        run.test_checkpoint = best
        if best:
            _log_checkpoint(run, Path(best))
    record = run.record("completed")
    _log_summary(run, record)
    return record


def _with_names(cfg: DictConfig, names: RunNames) -> DictConfig:
    """``cfg`` with the dashboard names filled into loggers that take them (the wandb
    logger's ``group``/``name``/``job_type`` left null in conf/logger/wandb.yaml; its
    ``tags`` are added to the automatic ones)."""
    cfg = cfg.copy()
    filled = {"group": names.group, "name": names.name, "job_type": names.job_type}
    with open_dict(cfg):
        for node in (cfg.get("logger") or {}).values():
            if node is None or "_target_" not in node or "group" not in node:
                continue
            for key, value in filled.items():
                if node.get(key) is None:
                    node[key] = value
            node["tags"] = list(dict.fromkeys([*names.tags, *(node.get("tags") or [])]))
    return cfg


def _log_checkpoint(run: _Run, best: Path) -> None:
    """The best checkpoint as an artifact, for loggers that are asked to
    (``logger.wandb.log_checkpoint=true``)."""
    for logger in run.loggers:
        if getattr(logger, "log_checkpoint", False) and hasattr(logger, "log_best_checkpoint"):
            ckpt = _model_checkpoint(run.trainer)
            score = getattr(ckpt, "best_model_score", None)
            meta = {"best_val_top1_err": float(score) if score is not None else None}
            logger.log_best_checkpoint(best, {**meta, "run": run.names.name})


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
    params["hydra"] = dataclasses.asdict(run.hydra)
    # The names the dashboard shows (also in the CSV log's hparams.yaml and the record).
    params["run"] = dataclasses.asdict(run.names)
    for logger in run.loggers:
        logger.log_hyperparams(params)


def _log_summary(run: _Run, record: RunRecord) -> None:
    summary = {
        "status": record.status,
        "test/top1_err": record.test.top1_err,
        "test/top5_err": record.test.top5_err,
        "test/checkpoint": record.test.checkpoint,
        "best/val_top1_err": record.best.val_top1_err,
        "costs/params": record.costs.params,
        "costs/macs": record.costs.macs,
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


def summary_line(record: RunRecord | dict[str, Any]) -> str:
    """One line a user can paste: what ran, the errors, the cost and the time."""
    return as_record(record).summary_line()
