"""Tiny trained runs shared by the visualisation tests (trained once per session)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.run import train

TINY = [
    "+debug=smoke",
    "data.num_train=64",
    "data.num_val=32",
    "data.num_test=32",
    "trainer.limit_train_batches=2",
]


def compose_config(overrides: list[str], run_dir: Path) -> DictConfig:
    """conf/train.yaml with ``overrides`` and the run dir set (as tests/conftest.py does)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return cfg


def train_run(run_dir: Path, *overrides: str) -> Path:
    """Train a tiny run into ``run_dir`` (in-process, as notebooks do)."""
    train(compose_config([*TINY, *overrides], run_dir))
    return run_dir


def untrained_run(run_dir: Path, *overrides: str) -> Path:
    """A run dir with a freshly initialised model saved as a Lightning-style checkpoint
    (no training: for tests that only need a loadable model)."""
    from attnexp.builders import build_backbone

    cfg = compose_config([*TINY, *overrides], run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / "checkpoints").mkdir()
    state = {f"model.{k}": v for k, v in build_backbone(cfg).state_dict().items()}
    torch.save({"state_dict": state}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, most of all on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Trained ``cbam`` (seed 0, with the attention-map callback) and ``cbam_seed1``; an
    untrained baseline ``none``."""
    root = tmp_path_factory.mktemp("viz_runs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            "none": untrained_run(root / "none", "attention=none"),
            "cbam": train_run(
                root / "cbam", "attention=cbam", "callbacks=[default,attention_maps]", "seed=0"
            ),
            "cbam_seed1": train_run(root / "cbam_seed1", "attention=cbam", "seed=1"),
        }
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def tiny_train() -> Callable[..., Path]:
    """:func:`train_run` as a fixture: ``tiny_train(run_dir, *overrides)``."""
    return train_run


@pytest.fixture
def untrained() -> Callable[..., Path]:
    """:func:`untrained_run` as a fixture: ``untrained(run_dir, *overrides)``."""
    return untrained_run


@pytest.fixture
def viz(tmp_path: Path) -> Callable[..., list[Path]]:
    """Run the attnexp-viz CLI logic in-process: ``viz("checkpoint=...", ...)``."""
    from attnexp.cli.viz import run

    def call(*argv: str) -> list[Path]:
        return run(list(argv))

    return call
