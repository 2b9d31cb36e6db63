"""From a composed config to objects: datamodule, backbone with placements, Lightning parts.

This is the only place that reads the config tree; the zoo, the backbones and the
Lightning module take plain arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attnexp.errors import ConfigError


def to_dict(node: Any) -> Any:
    """Plain python containers from an OmegaConf node (resolved)."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _placements_with_init(cfg: DictConfig) -> list[dict[str, Any]]:
    placements: list[dict[str, Any]] = []
    attention = to_dict(cfg.get("attention")) or {"name": "none"}
    if attention.get("name", "none") != "none":
        placement = dict(to_dict(cfg.get("placement")) or {})
        placements.append({"module": attention, **placement})
    for extra in to_dict(cfg.get("extra_placements")) or []:
        if not isinstance(extra, Mapping) or "module" not in extra:
            raise ConfigError(f"each of extra_placements needs a 'module' entry, got {extra!r}")
        placements.append(dict(extra))
    return placements


def placements_from_config(cfg: DictConfig) -> list[dict[str, Any]]:
    """The ``attention`` + ``placement`` pair plus any ``extra_placements`` (without their
    ``init``, which says how the modules start, not where they go: :func:`placement_inits`)."""
    return [{k: v for k, v in p.items() if k != "init"} for p in _placements_with_init(cfg)]


def placement_inits(cfg: DictConfig) -> list[str]:
    """``init`` of every placement (``default`` | ``identity``), in the same order."""
    return [str(p.get("init") or "default") for p in _placements_with_init(cfg)]


def build_backbone(cfg: DictConfig, pretrained: bool = True) -> nn.Module:
    """The backbone with its placements; ``model.pretrained`` weights loaded unless
    ``pretrained=False`` (attnexp-eval: the checkpoint holds every weight)."""
    from attnexp.models import build_model
    from attnexp.models.pretrained import initialise_placed, load_pretrained
    from attnexp.plugins import import_user_code

    import_user_code(cfg.get("imports"))  # user modules (a sweep worker, a rebuilt run)
    model_cfg = dict(to_dict(cfg.model))
    name = model_cfg.pop("name")
    source = model_cfg.pop("pretrained", None)
    placements = placements_from_config(cfg)
    model = build_model(name, placements=placements, conv=to_dict(cfg.get("conv")), **model_cfg)
    for i, init in enumerate(placement_inits(cfg)):
        initialise_placed(model, init, where=f"placements[{i}]")
    if source and pretrained:
        report = load_pretrained(model, source, name)
        model.pretrained_report = report  # type: ignore[assignment]
        logging.getLogger(__name__).info(report.summary())
    return model


#: Keys of the ``training`` config passed to :class:`ClassificationModule`.
MODULE_TRAINING_KEYS = (
    "label_smoothing",
    "no_decay_bn_bias",
    "channels_last",
    "compile",
    "base_batch_size",
    "nonfinite_check_every",
    "backbone_lr_mult",
)
#: Keys of the ``training`` config read elsewhere (trainer, fast_defaults, this file).
OTHER_TRAINING_KEYS = ("sync_bn", "retain_host_memory")


def training_options(cfg: DictConfig) -> dict[str, Any]:
    """The ``training`` node as a dict, with unknown keys refused (typos must not pass)."""
    training = dict(to_dict(cfg.get("training")) or {})
    unknown = sorted(set(training) - set(MODULE_TRAINING_KEYS) - set(OTHER_TRAINING_KEYS))
    if unknown:
        valid = ", ".join(MODULE_TRAINING_KEYS + OTHER_TRAINING_KEYS)
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {valid}")
    return training


def build_module(cfg: DictConfig, model: nn.Module, num_classes: int) -> L.LightningModule:
    from attnexp.data.augment import augment_options
    from attnexp.training import fast_defaults
    from attnexp.training.module import ClassificationModule

    accelerator = cfg.trainer.get("accelerator", "auto")
    precision = fast_defaults.resolve_precision(cfg.trainer.get("precision", "auto"), accelerator)
    # `auto` options become what measured faster on this device (fast_defaults.py).
    training, optimizer = fast_defaults.apply(
        training_options(cfg), instantiate(cfg.optimizer), accelerator, precision
    )
    return ClassificationModule(
        model,
        num_classes=num_classes,
        optimizer=optimizer,
        scheduler=to_dict(cfg.scheduler),
        batch_size=int(cfg.data.batch_size) if cfg.data.get("batch_size") is not None else None,
        mixer=augment_options(to_dict(cfg.data)).mixer(int(cfg.get("seed") or 0)),
        **{k: training[k] for k in MODULE_TRAINING_KEYS if k in training},
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every ``callbacks.<name>`` node with a ``_target_``; ``enabled: false`` skips one."""
    callbacks = []
    for _, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        options = dict(to_dict(node))
        if not options.pop("enabled", True):
            continue
        callbacks.append(instantiate(options))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for _, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(instantiate(node))
    return loggers


PRECISIONS = (
    "auto",
    "32-true",
    "32",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "transformer-engine",
)


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    """``lightning.Trainer`` from ``cfg.trainer`` plus atomic checkpoint writes, the run dir as
    Lightning's root dir (SLURM auto-requeue checkpoints land there) and SyncBN."""
    from attnexp.training import fast_defaults
    from attnexp.training.callbacks import ExactResume
    from attnexp.training.checkpoint_io import AtomicCheckpointIO
    from attnexp.training.spawn import FitState

    kwargs = dict(to_dict(cfg.trainer))
    precision = str(kwargs.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown trainer.precision {precision!r}; valid: {', '.join(PRECISIONS)}"
        )
    kwargs["precision"] = fast_defaults.resolve_precision(precision, kwargs.get("accelerator"))
    training = training_options(cfg)
    if training.get("sync_bn"):
        # Lightning converts every BatchNorm with nn.SyncBatchNorm.convert_sync_batchnorm when
        # the strategy is distributed; with one process it is a no-op.
        kwargs["sync_batchnorm"] = True
    kwargs.setdefault("default_root_dir", str(cfg.paths.output_dir))
    plugins = list(kwargs.pop("plugins", None) or [])
    plugins.append(AtomicCheckpointIO())
    if not loggers:  # logger=none: nothing to monitor the lr into (Lightning refuses it)
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks = [*callbacks, ExactResume(), FitState()]  # FitState: ddp_spawn results
    trainer = L.Trainer(callbacks=callbacks, logger=loggers or False, plugins=plugins, **kwargs)
    distributed = trainer.world_size > 1 or "ddp" in type(trainer.strategy).__name__.lower()
    if training.get("sync_bn") and distributed and trainer.strategy.root_device.type == "cpu":
        raise ConfigError(
            "training.sync_bn=true needs GPUs: torch's SyncBatchNorm does not run on CPU "
            "(DDP refuses it). Drop training.sync_bn for CPU runs."
        )
    return trainer
