"""EMA of weights, dynamic-conv temperature annealing, precision and memory-format switches,
SyncBN under DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from train_support import TINY, StepTrace, train_with

from attnexp.run import train
from attnexp.training.callbacks import EMA, ModuleEpochHooks


def test_ema_update_rule_and_eval_swap() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    pl_module = SimpleNamespace(model=model)
    ema = EMA(decay=0.5, warmup=False)
    trainer = SimpleNamespace(global_step=1)
    ema.on_train_start(trainer, pl_module)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.on_train_batch_end(trainer, pl_module, None, None, 0)
    weight = model[0].weight
    assert torch.allclose(ema.weights["0.weight"], start["0.weight"] + 0.5)  # halfway
    assert torch.allclose(ema.weights["1.running_mean"], torch.full((2,), 1.5))  # BN stats averaged
    model[1].num_batches_tracked.fill_(7)
    ema.on_train_batch_end(trainer, pl_module, None, None, 0)
    assert int(ema.weights["1.num_batches_tracked"]) == 7  # integer buffers copied
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(1.0)  # the raw weights move back; the EMA is 3/4 of the way to start + 1
    trained = weight.detach().clone()
    ema.on_validation_epoch_start(trainer, pl_module)
    assert torch.allclose(weight, start["0.weight"] + 0.75)  # evaluation sees the EMA
    ema.on_validation_epoch_end(trainer, pl_module)
    assert torch.equal(weight, trained)  # training continues on the raw weights
    assert EMA(decay=0.9999).current_decay() == pytest.approx(0.1)  # warm-up: (1+0)/(10+0)


def test_ema_changes_evaluation_and_is_checkpointed(make_cfg, tmp_path, monkeypatch) -> None:
    common = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=2"]
    plain = train(make_cfg(*common, run_dir=tmp_path / "plain"))
    with_ema = train(
        make_cfg(
            *common,
            "callbacks.ema.enabled=true",
            "callbacks.ema.decay=0.5",
            run_dir=tmp_path / "ema",
        )
    )
    assert plain["training"]["ema"] is False and with_ema["training"]["ema"] is True
    assert with_ema["training"]["ema_decay"] == 0.5
    # same seed and data, so training is identical; only the evaluated weights differ
    assert with_ema["final"]["train_loss"] == pytest.approx(plain["final"]["train_loss"])
    assert with_ema["final"]["val_loss"] != pytest.approx(plain["final"]["val_loss"])
    ckpt = torch.load(tmp_path / "ema/checkpoints/last.ckpt", weights_only=False)
    state = ckpt["callbacks"]["EMA"]
    assert state["num_updates"] == 4
    key = next(
        k for k in state["weights"] if k.endswith("weight") and state["weights"][k].ndim == 2
    )
    raw = ckpt["state_dict"][f"model.{key}"]
    assert not torch.equal(raw, state["weights"][key])


def test_dynamic_conv_temperature_is_annealed_each_epoch() -> None:
    from attnexp.attention.branch import DynamicConv

    model = nn.Sequential(DynamicConv(8, 8, 1), DynamicConv(8, 8, 2, anneal_epochs=4))
    logged = {}
    pl_module = SimpleNamespace(
        modules=model.modules, log=lambda name, value, **kw: logged.update({name: value})
    )
    callback = ModuleEpochHooks()
    seen = []
    for epoch in (0, 5, 10, 20):
        trainer = SimpleNamespace(current_epoch=epoch, max_epochs=30)
        callback.on_train_epoch_start(trainer, pl_module)
        seen += [float(m.temperature) for m in model]
    # the paper's 30 -> 1 over 10 epochs, and a module with its own 4-epoch schedule
    assert seen == pytest.approx([30.0, 30.0, 15.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert logged["dyconv_temperature"] == pytest.approx(1.0)


def test_module_hooks_are_on_by_default(make_cfg) -> None:
    from attnexp.builders import build_callbacks

    names = [type(c).__name__ for c in build_callbacks(make_cfg())]
    assert "ModuleEpochHooks" in names and "EMA" not in names
    names = [
        type(c).__name__ for c in build_callbacks(make_cfg("callbacks.module_hooks.enabled=false"))
    ]
    assert "ModuleEpochHooks" not in names


def test_bf16_mixed_channels_last_and_compile_run_on_cpu(make_cfg, monkeypatch) -> None:
    """trainer.precision=bf16-mixed (CPU autocast), NHWC tensors and an in-place
    torch.compile (eager backend: no C++ toolchain needed) all train and evaluate."""

    class Inspect(StepTrace):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            conv = next(m for m in pl_module.model.modules() if isinstance(m, nn.Conv2d))
            self.channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last)
            self.compiled = getattr(pl_module.model, "_compiled_call_impl", None) is not None

    inspect = Inspect()
    record = train_with(
        make_cfg(
            *TINY,
            "trainer.precision=bf16-mixed",
            "training.channels_last=true",
            "training.compile={backend: eager}",
        ),
        inspect,
        monkeypatch=monkeypatch,
    )
    assert record["status"] == "completed" and record["throughput"]["precision"] == "bf16-mixed"
    assert record["test"]["top1_err"] is not None
    assert inspect.channels_last and inspect.compiled


def test_unknown_precision_is_a_config_error(make_cfg) -> None:
    from attnexp.builders import build_trainer
    from attnexp.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.precision"):
        build_trainer(make_cfg("trainer.precision=fp8"), [], [])


def test_sync_bn_is_refused_on_cpu_ddp(make_cfg) -> None:
    """torch's SyncBatchNorm only runs on GPUs: say so when the trainer is built."""
    from attnexp.builders import build_trainer
    from attnexp.errors import ConfigError

    with pytest.raises(ConfigError, match="sync_bn"):
        build_trainer(
            make_cfg("training.sync_bn=true", "trainer.strategy=ddp", "trainer.accelerator=cpu"),
            [],
            [],
        )
    # one process without DDP: nothing to synchronise, no conversion, no error
    trainer = build_trainer(make_cfg("training.sync_bn=true", "trainer.accelerator=cpu"), [], [])
    assert trainer.world_size == 1 and type(trainer.strategy).__name__ == "SingleDeviceStrategy"
    assert getattr(trainer.strategy, "_layer_sync", None) is None  # Lightning's SyncBN hook


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sync_bn_under_ddp(make_cfg, monkeypatch) -> None:
    """training.sync_bn=true with trainer.strategy=ddp converts every BatchNorm to
    SyncBatchNorm for training (one GPU process here) and back afterwards."""
    import lightning as L

    class Check(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.kinds = {
                type(m).__name__ for m in pl_module.modules() if "BatchNorm" in type(m).__name__
            }

    check = Check()
    cfg = make_cfg(
        "+debug=smoke",
        "callbacks.progress=null",
        "trainer.accelerator=gpu",
        "training.sync_bn=true",
        "trainer.strategy=ddp",
        "trainer.devices=1",
        "test=false",
    )
    record = train_with(cfg, check, monkeypatch=monkeypatch)
    assert record["status"] == "completed"
    assert check.kinds == {"SyncBatchNorm"}
