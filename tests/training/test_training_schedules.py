"""Optimisers and learning-rate schedules: the curves, the parameter groups, clipping,
label smoothing, and that the trainer really applies the schedule step by step."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn
from train_support import TINY, StepTrace, train_with

from attnexp.compose import compose_config
from attnexp.errors import ConfigError
from attnexp.training.module import ClassificationModule
from attnexp.training.optim import build_optimizer, lr_lambda, parameter_groups, scaled_lr


def curve(cfg: dict, total: int, per_epoch: int) -> list[float]:
    fn = lr_lambda(cfg, total, per_epoch)
    return [fn(s) for s in range(total)]


def test_multistep_in_epochs_and_steps() -> None:
    epochs = curve({"name": "multistep", "milestones": [2, 3], "gamma": 0.1}, 40, 10)
    assert (
        epochs[19] == 1.0 and epochs[20] == pytest.approx(0.1) and epochs[29] == pytest.approx(0.1)
    )
    assert epochs[30] == pytest.approx(0.01)
    steps = curve({"name": "multistep", "unit": "step", "milestones": [7, 9]}, 12, 5)
    assert [round(v, 6) for v in steps[6:10]] == [1.0, 0.1, 0.1, 0.01]
    # fractional epochs land on the nearest step
    frac = curve({"name": "multistep", "milestones": [1.5]}, 40, 10)
    assert frac[14] == 1.0 and frac[15] == pytest.approx(0.1)


def test_cosine_endpoints_and_floor() -> None:
    values = curve({"name": "cosine"}, 100, 10)
    assert values[0] == 1.0 and values[50] == pytest.approx(0.5)
    assert 0 < values[99] < 0.001  # reaches the floor after the last step
    assert lr_lambda({"name": "cosine"}, 100, 10)(100) == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone
    floor = lr_lambda({"name": "cosine", "final_lr_ratio": 0.1}, 100, 10)
    assert floor(100) == pytest.approx(0.1) and floor(99) > 0.1


def test_linear_warmup_then_schedule() -> None:
    values = curve({"name": "cosine", "warmup": 2, "warmup_start": 0.1}, 100, 10)
    assert values[0] == pytest.approx(0.1)
    assert values[10] == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert values[20] == pytest.approx(1.0)  # cosine starts at the end of the warm-up
    assert values[19] < values[20]
    steps = curve({"name": "constant", "unit": "step", "warmup": 4, "warmup_start": 0.0}, 10, 3)
    assert steps[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and steps[9] == 1.0


def test_onecycle_rises_to_peak_then_decays() -> None:
    values = curve({"name": "onecycle", "pct_start": 0.25, "div_start": 0.04}, 100, 10)
    assert values[0] == pytest.approx(0.04)
    assert max(values) == pytest.approx(1.0) and values.index(max(values)) == 25
    assert values[99] < 0.01
    assert all(a <= b for a, b in zip(values[:25], values[1:26]))


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"name": "triangle"}, "scheduler.name"),
        ({"name": "cosine", "unit": "hour"}, "scheduler.unit"),
        ({"name": "cosine", "warmup": 10}, "covers the whole run"),
        ({"name": "multistep", "milestones": []}, "milestones"),
    ],
)
def test_schedule_config_errors(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        lr_lambda(cfg, 100, 10)


def test_no_decay_bn_bias_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Linear(4, 2))
    one = parameter_groups(model, 5e-4, False)
    assert len(one) == 1 and "weight_decay" not in one[0]
    decay, no_decay = parameter_groups(model, 5e-4, True)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {p.shape for p in decay["params"]} == {torch.Size([4, 3, 3, 3]), torch.Size([2, 4])}
    assert len(no_decay["params"]) == 3  # BN weight, BN bias, linear bias


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_optimizer_configs_build(name: str) -> None:
    cfg = compose_config([f"optimizer={name}"])
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(instantiate(cfg.optimizer), model, no_decay_bn_bias=True)
    assert type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[name]
    group = opt.param_groups[0]
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is True
    else:
        assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.05
    assert opt.param_groups[1]["weight_decay"] == 0.0
    scaled = build_optimizer(instantiate(cfg.optimizer), model, lr=0.5)
    assert scaled.param_groups[0]["lr"] == 0.5


def test_bad_optimizer_options_are_config_errors() -> None:
    cfg = compose_config(["optimizer.momentum=0", "optimizer.nesterov=true"])
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer(instantiate(cfg.optimizer), nn.Linear(2, 2))


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert scaled_lr(0.1, 128, None) == 0.1
    with pytest.raises(ConfigError):
        scaled_lr(0.1, 128, 0)


def test_label_smoothing_changes_only_the_training_loss() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    target = torch.tensor([0, 1])

    def module(smoothing: float) -> ClassificationModule:
        return ClassificationModule(nn.Identity(), 3, torch.optim.SGD, label_smoothing=smoothing)

    plain, smooth = module(0.0), module(0.1)
    assert smooth.criterion(logits, target) > plain.criterion(logits, target)
    expected = (
        0.9 * nn.functional.cross_entropy(logits, target)
        + 0.1 * (-logits.log_softmax(1).mean(1)).mean()
    )
    assert smooth.criterion(logits, target) == pytest.approx(float(expected), rel=1e-5)
    assert smooth.eval_criterion(logits, target) == plain.criterion(logits, target)


def test_trainer_applies_the_schedule_per_step(make_cfg, monkeypatch) -> None:
    """The lr seen by each optimizer step equals the schedule (multistep in steps here)."""
    cfg = make_cfg(
        *TINY,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "data.num_train=96",
        "scheduler=multistep",
        "scheduler.unit=step",
        "scheduler.milestones=[2,4]",
        "scheduler.warmup=1",
        "scheduler.warmup_start=0.5",
        "test=false",
    )
    trace = StepTrace()
    train_with(cfg, trace, monkeypatch=monkeypatch)
    lrs = [round(lr, 8) for _, _, lr, _ in trace.rows]
    assert lrs == [0.05, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert [step for _, step, _, _ in trace.rows] == list(range(6))


def test_gradient_clipping_bounds_the_update(make_cfg, monkeypatch) -> None:
    """trainer.gradient_clip_val: with plain SGD one step moves the weights by at most
    lr x clip (the clipped gradient norm)."""
    import lightning as L

    class Snapshot(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.before = [p.detach().clone() for p in pl_module.model.parameters()]

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            after = [p.detach() for p in pl_module.model.parameters()]
            self.moved = math.sqrt(
                sum(float((a - b).pow(2).sum()) for a, b in zip(after, self.before))
            )

    cfg = make_cfg(
        *TINY,
        "trainer.limit_train_batches=1",
        "trainer.gradient_clip_val=0.001",
        "optimizer.momentum=0",
        "optimizer.nesterov=false",
        "optimizer.weight_decay=0",
        "scheduler=constant",
        "test=false",
        "callbacks=none",
    )
    snap = Snapshot()
    train_with(cfg, snap, monkeypatch=monkeypatch)
    assert 0 < snap.moved <= 0.1 * 0.001 * 1.0001
