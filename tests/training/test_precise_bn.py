"""Precise BN: the statistics it computes, and that training itself is left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnexp.errors import ConfigError
from attnexp.run import train
from attnexp.training.precise_bn import recompute_bn_stats
from tests.data.datagen import CLASSES, write_image_folder
from tests.training.train_support import state_dict


def test_recompute_gives_the_equal_weight_average_of_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    model.eval()
    assert recompute_bn_stats(model, batches) == 3
    assert not model.training and model[1].momentum == 0.1  # mode and momentum restored
    with torch.no_grad():
        feats = [model[0](b) for b in batches]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, expected_mean)
    torch.testing.assert_close(model[1].running_var, expected_var)
    assert int(model[1].num_batches_tracked) == 3


def test_no_batches_leave_the_statistics_unchanged() -> None:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    assert recompute_bn_stats(nn.Sequential(bn), []) == 0
    assert bn.running_mean.eq(3.0).all()


def _folder_run(tmp_path, in_memory: bool) -> list[str]:
    root = write_image_folder(tmp_path / "folder", per_class=8, special=False)
    return [
        # not +debug=smoke: it switches to synthetic data and adds its keys to data
        "callbacks.progress=null",
        "trainer.deterministic=true",
        "trainer.accelerator=cpu",
        "attention=cbam",
        "trainer.max_epochs=2",
        "data=imagefolder",
        f"data.root={root}",
        f"data.num_classes={len(CLASSES)}",
        "data.batch_size=8",
        f"data.in_memory={str(in_memory).lower()}",
        "data.num_workers=0",
        "test=false",
        "callbacks.precise_bn.num_batches=2",
    ]


def test_training_is_unchanged_and_checkpoints_hold_recomputed_stats(make_cfg, tmp_path) -> None:
    """Same weights after two epochs with and without precise BN (training normalises with
    batch statistics and the training loader's order is not disturbed); only the BN running
    statistics differ."""
    common = _folder_run(tmp_path, in_memory=True)
    runs = {}
    for enabled in (False, True):
        run_dir = tmp_path / f"precise-{enabled}"
        cfg = make_cfg(
            *common, f"callbacks.precise_bn.enabled={str(enabled).lower()}", run_dir=run_dir
        )
        assert train(cfg)["status"] == "completed"
        runs[enabled] = state_dict(run_dir / "checkpoints" / "last.ckpt")
    plain, precise = runs[False], runs[True]
    stats = [k for k in plain if "running_" in k]
    weights = [k for k in plain if "running_" not in k and "num_batches" not in k]
    assert stats and weights
    for key in weights:
        torch.testing.assert_close(precise[key], plain[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(precise[k], plain[k]) for k in stats)


def test_streaming_data_is_refused_with_a_config_error(make_cfg, tmp_path) -> None:
    cfg = make_cfg(*_folder_run(tmp_path, in_memory=False), "callbacks.precise_bn.enabled=true")
    with pytest.raises(ConfigError, match="precise_bn needs the in-memory data path"):
        train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["global_step"] == 0
