"""The attention-map callback and the wandb sweep table (no wandb server needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from attnexp.analysis.checkpoints import load_model
from attnexp.analysis.wandb_viz import AttentionMapLogger, log_sweep_table, sweep_table


class RecordingWandb(WandbLogger):
    """A WandbLogger that records log_image calls instead of talking to wandb."""

    def __init__(self) -> None:  # no super().__init__: no wandb run
        self.calls: list[dict[str, Any]] = []

    def log_image(
        self, key: str, images: list[Any], step: int | None = None, **kwargs: Any
    ) -> None:
        self.calls.append({"key": key, "images": images, "step": step, **kwargs})


def test_callback_png_written_during_training(runs: dict[str, Path]) -> None:
    """The cbam fixture run was trained with callbacks=[default,attention_maps]."""
    pixels = np.asarray(Image.open(runs["cbam"] / "attention_maps.png").convert("RGB"))
    assert pixels.std() > 0
    assert not (runs["cbam_seed1"] / "attention_maps.png").exists()


def test_callback_logs_images_to_wandb_logger(runs: dict[str, Path], tmp_path: Path) -> None:
    from attnexp.builders import to_dict
    from attnexp.data import build_datamodule

    loaded = load_model(runs["cbam"])
    dm = build_datamodule(to_dict(loaded.cfg.data))
    logger = RecordingWandb()
    trainer = SimpleNamespace(
        loggers=[logger],
        is_global_zero=True,
        datamodule=dm,
        val_dataloaders=dm.val_dataloader(),
        global_step=7,
        current_epoch=0,
    )
    module = SimpleNamespace(model=loaded.model)
    callback = AttentionMapLogger(
        n=3, cams=["gradcam", "gradcam++"], save_path=str(tmp_path / "maps.png")
    )
    callback.on_train_end(trainer, module)  # type: ignore[arg-type]
    keys = {c["key"] for c in logger.calls}
    assert keys == {"attention_maps", "attention_maps/channel"}
    grid = next(c for c in logger.calls if c["key"] == "attention_maps")
    assert grid["step"] == 7 and grid["images"][0].ndim == 3 and grid["images"][0].std() > 0
    assert callback.saved == tmp_path / "maps.png"
    callback.on_train_end(trainer, module)  # type: ignore[arg-type]
    assert callback.saved == tmp_path / "maps-1.png"  # never replaces a file


def test_callback_is_quiet_without_wandb_or_path(tmp_path: Path) -> None:
    """No wandb logger and no save path (or not rank 0): nothing is drawn at all."""

    class Spy(AttentionMapLogger):
        rendered = 0

        def render(self, trainer: Any, pl_module: Any, save: bool = True) -> dict[str, Any]:
            Spy.rendered += 1
            return {}

    quiet = SimpleNamespace(loggers=[], is_global_zero=True, current_epoch=0)
    Spy().on_train_epoch_end(quiet, None)  # type: ignore[arg-type]
    Spy(save_path=str(tmp_path / "m.png")).on_train_epoch_end(quiet, None)  # type: ignore[arg-type]
    Spy().on_train_end(quiet, None)  # type: ignore[arg-type]
    rank1 = SimpleNamespace(loggers=[RecordingWandb()], is_global_zero=False)
    Spy(save_path=str(tmp_path / "m.png")).on_train_end(rank1, None)  # type: ignore[arg-type]
    assert Spy.rendered == 0
    rank0 = SimpleNamespace(loggers=[], is_global_zero=True)
    Spy(save_path=str(tmp_path / "m.png")).on_train_end(rank0, None)  # type: ignore[arg-type]
    assert Spy.rendered == 1  # the spy does count: with a path, rank 0 draws


def test_callback_logs_every_n_epochs_without_saving(runs: dict[str, Path], tmp_path: Path) -> None:
    from attnexp.builders import to_dict
    from attnexp.data import build_datamodule

    loaded = load_model(runs["cbam"])
    dm = build_datamodule(to_dict(loaded.cfg.data))
    logger = RecordingWandb()
    callback = AttentionMapLogger(n=2, cams=[], save_path=str(tmp_path / "m.png"), every_n_epochs=2)
    module = SimpleNamespace(model=loaded.model)
    for epoch in range(4):
        trainer = SimpleNamespace(
            loggers=[logger],
            is_global_zero=True,
            datamodule=dm,
            val_dataloaders=dm.val_dataloader(),
            global_step=10 * epoch,
            current_epoch=epoch,
        )
        callback.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    grids = [c for c in logger.calls if c["key"] == "attention_maps"]
    assert [c["step"] for c in grids] == [10, 30]  # after epochs 2 and 4
    assert callback.saved is None and not list(tmp_path.glob("*.png"))  # PNG only at the end
    with pytest.raises(ValueError, match="every_n_epochs"):
        AttentionMapLogger(every_n_epochs=-1)


def test_sweep_table() -> None:
    rows = [
        {"setting": "attention=none", "top1": 7.1, "n": 3},
        {"setting": "attention=se", "top1": 6.5, "extra": [1]},
    ]
    table = sweep_table(rows)
    assert table.columns == ["setting", "top1", "n", "extra"]
    assert table.data[1] == ["attention=se", 6.5, None, "[1]"]
    logged: dict[str, Any] = {}
    run = SimpleNamespace(log=logged.update)
    log_sweep_table(rows, key="ablation", run=run)
    assert list(logged) == ["ablation"]


def test_log_sweep_table_needs_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setattr(wandb, "run", None)
    with pytest.raises(RuntimeError, match="wandb.init"):
        log_sweep_table([{"a": 1}])


@pytest.mark.slow
def test_offline_wandb_run_gets_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_train
) -> None:
    """End to end with a real (offline) wandb run: the grid lands in the run's media."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tiny_train(
        tmp_path / "run",
        "attention=cbam",
        "logger=wandb",
        "logger.wandb.log_checkpoint=true",
        "callbacks=[default,attention_maps]",
        "trainer.max_epochs=2",
    )
    assert (run_dir / "attention_maps.png").is_file()
    media = list((run_dir / "wandb").rglob("media/images/attention_maps_*.png"))
    # after each of the 2 epochs and at the end of training
    assert len(media) == 3, sorted(str(p) for p in (run_dir / "wandb").rglob("*"))[:30]
    # the best checkpoint as a model artifact (logger.wandb.log_checkpoint=true)
    from wandb.proto import wandb_internal_pb2 as pb

    from attnexp.analysis.table.wandb import _payloads

    (log,) = (run_dir / "wandb").rglob("run-*.wandb")
    artifacts = []
    for payload in _payloads(log.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == "artifact":
            artifacts.append(rec.artifact)
    (artifact,) = artifacts
    assert artifact.type == "model" and "best" in artifact.aliases
    assert any(e.path.startswith("best-epoch") for e in artifact.manifest.contents)
