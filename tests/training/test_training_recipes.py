"""Training recipes (conf/recipe/): they compose, and their schedules land where the papers
put them."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from train_support import TINY

from attnexp.compose import compose_config
from attnexp.run import train
from attnexp.training.optim import lr_lambda, scaled_lr

RECIPES = ["cifar_he2016", "imagenet_resnet", "cifar_fast"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_sets_the_whole_recipe(recipe: str, tmp_path) -> None:
    cfg = compose_config([f"recipe={recipe}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("optimizer", "scheduler", "trainer", "data"):
        assert resolved[key]
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9


def test_he2016_decays_at_32k_and_48k_iterations_and_stops_at_64k() -> None:
    cfg = compose_config(["recipe=cifar_he2016", "data=cifar10"])
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.optimizer.nesterov is False and cfg.data.batch_size == 128
    assert cfg.trainer.max_steps == 64000 and cfg.trainer.max_epochs == -1
    sched = OmegaConf.to_container(cfg.scheduler)
    # The milestones are in optimizer steps, so they do not depend on the split size:
    for steps_per_epoch in (math.ceil(45000 / 128), math.ceil(50000 / 128)):  # 352, 391
        lr = lr_lambda(sched, 64000, steps_per_epoch)
        assert [lr(s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx(
            [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
        )
    # The epochs the recipe's comment documents, from the composed values: decays at 90.9
    # and 136.4 epochs and the end at 181.8 on the 45k split, 81.8 / 122.8 / 163.7 on 50k.
    marks = [*cfg.scheduler.milestones, cfg.trainer.max_steps]
    for images, epochs in ((45000, [90.9, 136.4, 181.8]), (50000, [81.8, 122.8, 163.7])):
        per_epoch = math.ceil(images / cfg.data.batch_size)
        assert [m / per_epoch for m in marks] == pytest.approx(epochs, abs=0.05)


def test_imagenet_recipe_steps_at_30_60_80_and_scales_lr() -> None:
    cfg = compose_config(["recipe=imagenet_resnet"])
    assert cfg.trainer.max_epochs == 90 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.training.base_batch_size == 256
    per_epoch = math.ceil(1_281_167 / 256)  # 5005 steps on ImageNet-1k at batch 256
    lr = lr_lambda(OmegaConf.to_container(cfg.scheduler), 90 * per_epoch, per_epoch)
    boundaries = [30 * per_epoch, 60 * per_epoch, 80 * per_epoch]
    assert [lr(b - 1) for b in boundaries] == pytest.approx([1.0, 0.1, 0.01])
    assert [lr(b) for b in boundaries] == pytest.approx([0.1, 0.01, 0.001])
    assert scaled_lr(0.1, 8 * 64, 256) == pytest.approx(0.2)  # 8 GPUs x 64 images
    cosine = compose_config(["recipe=imagenet_resnet", "scheduler=cosine"])
    assert cosine.scheduler.name == "cosine" and cosine.trainer.max_epochs == 90


def test_cifar_fast_is_short_onecycle_nesterov() -> None:
    cfg = compose_config(["recipe=cifar_fast"])
    assert cfg.scheduler.name == "onecycle" and cfg.trainer.max_epochs == 30
    assert cfg.optimizer.nesterov is True and cfg.optimizer.weight_decay == 5e-4
    assert cfg.data.batch_size == 128 and cfg.training.no_decay_bn_bias is True


def test_experiment_and_command_line_override_a_recipe() -> None:
    cfg = compose_config(["recipe=cifar_he2016", "trainer.max_steps=10", "optimizer.lr=0.05"])
    assert cfg.trainer.max_steps == 10 and cfg.optimizer.lr == 0.05


def test_linear_scaling_uses_the_global_batch(make_cfg) -> None:
    """imagenet_resnet on tiny data: 16 images x 2 accumulated batches -> lr 0.1 x 32/256."""
    record = train(
        make_cfg(
            *TINY,
            "recipe=imagenet_resnet",
            "data.batch_size=16",
            "trainer.max_epochs=1",
            "trainer.accumulate_grad_batches=2",
            "trainer.limit_train_batches=2",
            "test=false",
        )
    )
    assert record["status"] == "completed"
    assert record["training"]["lr"] == pytest.approx(0.1 * 32 / 256)
