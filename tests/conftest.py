"""Shared fixtures: compose real Hydra configs and run real training on tiny data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from attnexp.runtime import register_resolvers

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))
register_resolvers()


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml with ``overrides``, as attnexp-train would."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``make_cfg(*overrides)`` composed with the run dir set to a tmp folder."""

    def factory(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), run_dir or tmp_path / "run")

    return factory
