"""From a composed config to objects: datamodule, backbone with placements, Lightning parts.

This is the only place that reads the config tree; the zoo, the backbones and the
Lightning module take plain arguments.
"""

from __future__ import annotations

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


def placements_from_config(cfg: DictConfig) -> list[dict[str, Any]]:
    """The ``attention`` + ``placement`` pair plus any ``extra_placements``."""
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


def build_backbone(cfg: DictConfig) -> nn.Module:
    from attnexp.models import build_model

    model_cfg = dict(to_dict(cfg.model))
    name = model_cfg.pop("name")
    return build_model(
        name,
        placements=placements_from_config(cfg),
        conv=to_dict(cfg.get("conv")),
        **model_cfg,
    )


def build_module(cfg: DictConfig, model: nn.Module, num_classes: int) -> L.LightningModule:
    from attnexp.training.module import ClassificationModule

    training = to_dict(cfg.get("training")) or {}
    return ClassificationModule(
        model,
        num_classes=num_classes,
        optimizer=instantiate(cfg.optimizer),
        scheduler=to_dict(cfg.scheduler),
        **training,
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for _, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            callbacks.append(instantiate(node))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for _, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            loggers.append(instantiate(node))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list[L.Callback], loggers: list[Any]) -> L.Trainer:
    kwargs = dict(to_dict(cfg.trainer))
    return L.Trainer(callbacks=callbacks, logger=loggers or False, **kwargs)
