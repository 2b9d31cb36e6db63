"""Shared fixtures: compose real Hydra configs and run real training on tiny data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase
from omegaconf import DictConfig

from attnexp.compose import compose_config
from attnexp.runtime import register_resolvers

# Subprocesses (real attnexp-train runs) use the same single thread as this process, so
# results compared across processes (resume == uninterrupted) are bit-identical.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Tiny tensors: one thread is faster, and avoids oversubscription when tests spawn processes.
torch.set_num_threads(1)
register_resolvers()

# Property tests: examples that once failed are replayed first; the database lives outside
# the repo (a checkout stays clean, every clone on a machine shares it).
settings.register_profile(
    "attnexp",
    database=DirectoryBasedExampleDatabase(Path.home() / ".cache" / "attnexp-hypothesis"),
    deadline=None,
)
settings.load_profile("attnexp")


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Factory: ``make_cfg(*overrides)`` composed with the run dir set to a tmp folder."""

    def factory(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), run_dir or tmp_path / "run")

    return factory
