"""training.compile: the auto decision, the fallback to eager, the persistent caches."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from train_support import TINY, train_with

from attnexp.errors import ConfigError
from attnexp.training import compile as compile_mod
from attnexp.training import fast_defaults
from attnexp.training.compile import decide, parse
from attnexp.training.module import ClassificationModule


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compile records go to a tmp dir, never to the user's cache."""
    monkeypatch.setenv("ATTNEXP_CACHE_DIR", str(tmp_path / "cache"))
    # torch writes its /tmp default here on import; restored after each test
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- the decision
def test_decide_compiles_long_runs_only() -> None:
    # 3,900 steps of 0.1 s: 390 s eager, 15% saved = 58 s > 1.2 x 30 s
    long = decide(0.1, 3900, compile_s=30.0, ratio=0.85)
    assert long.compile and "390 s" in long.reason and "3900 steps" in long.reason
    short = decide(0.1, 100, compile_s=30.0, ratio=0.85)  # 1.5 s saved for 30 s of compiling
    assert not short.compile and "expected saving -28 s" in short.reason
    assert decide(0.1, math.inf, 30.0, 0.85).compile
    assert "(measured)" in decide(0.1, 10, 5.0, 0.8, how="measured").line()


def test_compile_estimate_prefers_the_warm_start() -> None:
    """A model compiled before starts from the warm caches: its measured warm start, else a
    fraction of its cold compile (a slow first compile must not keep auto off for good)."""
    net = _Net()
    guess, how = compile_mod.expected_compile_seconds({}, net)
    assert how == "estimated" and guess == pytest.approx(
        compile_mod.SECONDS_PER_LEAF * 3
    )  # conv, bn, fc
    seconds, how = compile_mod.expected_compile_seconds({"compile_s": 100.0}, net)
    assert seconds == pytest.approx(100.0 * compile_mod.WARM_FRACTION)
    assert "cold 100 s measured" in how
    record = {"compile_s": 100.0, "warm_compile_s": 7.0}
    assert compile_mod.expected_compile_seconds(record, net) == (7.0, "measured, warm caches")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", ("auto", {})),
        (None, ("auto", {})),
        (True, ("on", {})),
        ("true", ("on", {})),
        (False, ("off", {})),
        ({"mode": "max-autotune"}, ("on", {"mode": "max-autotune"})),
        ({"when": "auto", "dynamic": False}, ("auto", {"dynamic": False})),
    ],
)
def test_parse_values(value: object, expected: tuple[str, dict]) -> None:
    assert parse(value) == expected


def test_bad_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="training.compile must be auto, true, false"):
        parse("sometimes")
    with pytest.raises(ConfigError):
        fast_defaults.resolve_compile(3)


def test_fast_defaults_keep_auto() -> None:
    assert fast_defaults.resolve_compile("auto") == "auto"
    assert fast_defaults.resolve_compile(False) is False
    assert fast_defaults.resolve_compile({"dynamic": False}) == {"dynamic": False}


def test_schema_accepts_auto_true_false(make_cfg) -> None:
    from attnexp.validation import validate_config

    for value in ("auto", "true", "false", "{backend: eager}"):
        validate_config(make_cfg(*TINY, f"training.compile={value}"))
    assert make_cfg(*TINY).training.compile == "auto"  # the default


def test_records_round_trip(_cache_dir: Path) -> None:
    compile_mod.write_record("k", {"compile_s": 12.5})
    compile_mod.write_record("k", {"ratio": 0.8})
    record = compile_mod.read_records()["k"]
    assert record["compile_s"] == 12.5 and record["ratio"] == 0.8
    assert json.loads((_cache_dir / compile_mod.RECORD_FILE).read_text())["k"]["torch"]


def test_persistent_cache_dir(_cache_dir: Path, monkeypatch) -> None:
    """The inductor caches move from torch's /tmp default to the user cache dir; a
    directory the user chose is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch sets
    assert compile_mod.enable_persistent_cache() == _cache_dir / "inductor"
    assert (_cache_dir / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(_cache_dir / "mine"))
    assert compile_mod.enable_persistent_cache() == _cache_dir / "mine"


def test_many_models_compiled_in_one_process_all_run_compiled() -> None:
    """A sweep on the basic launcher compiles one model per job in one process; past dynamo's
    default limit of 8 entries per code object the later ones would silently run eagerly."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)  # (monkeypatch would delete the config entry on undo)
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    try:
        setattr(dynamo_config, name, 8)  # torch's default, whatever ran before
        torch._dynamo.reset()
        compile_mod.allow_many_compiled_models()
        x = torch.randn(2, 3, 8, 8)
        for depth in range(1, 13):  # 12 architectures (the same one is not recompiled)
            net = nn.Sequential(*(nn.Conv2d(3, 3, 1) for _ in range(depth)))
            compile_mod.compile_in_place(net, {"backend": counting_backend})
            net(x)
    finally:
        torch._dynamo.reset()
        setattr(dynamo_config, name, before)
    assert len(graphs) == 12


# ----------------------------------------------------------------------------- real fits
def test_smoke_run_does_not_compile(make_cfg, monkeypatch) -> None:
    """+debug=smoke (2 steps) with the default training.compile=auto stays eager."""
    record = train_with(make_cfg(*TINY), monkeypatch=monkeypatch)
    decision = record["training"]["compile"]
    assert decision["setting"] == "auto" and decision["compiled"] is False
    assert "steps planned" in decision["reason"]


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class _Compiled(L.Callback):
    """Which forward calls ran compiled (the model's _compiled_call_impl when training ends)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.impl = pl_module.model.__dict__.get("_compiled_call_impl")
        (self.compile_callback,) = (
            c for c in trainer.callbacks if isinstance(c, compile_mod.CompileWhenItPays)
        )


def _fit(
    compile_setting: object, steps: int = 6, batch: int = 8
) -> tuple[ClassificationModule, _Compiled]:
    torch.manual_seed(0)
    x, y = torch.randn(steps * batch + 3, 3, 8, 8), torch.randint(0, 4, (steps * batch + 3,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    module = ClassificationModule(
        _Net(),
        num_classes=4,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        compile=compile_setting,
    )
    seen = _Compiled()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[seen],
    )
    trainer.fit(module, loader, loader)
    return module, seen


def _failing_backend(gm: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("no C++ compiler here")


def test_compile_failure_falls_back_to_eager(capsys) -> None:
    module, seen = _fit({"backend": _failing_backend})
    decision = module.compile_decision
    assert decision["compiled"] is False and "no C++ compiler here" in decision["failed"]
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "compile failed" in line]
    assert len(lines) == 1 and "training continues eagerly" in lines[0]
    assert seen.impl is None  # eager from then on


def test_forced_compile_trains_and_matches_eager() -> None:
    """compile={backend: aot_eager}: the whole compile + autograd path without a C++ build;
    the trained weights equal the eager run's (the probe leaves BN statistics and RNG alone;
    the last partial batch runs eagerly)."""
    compiled, seen = _fit({"backend": "aot_eager"})
    eager, _ = _fit(False)
    assert compiled.compile_decision["compiled"] is True
    assert seen.impl is not None and seen.impl.shapes[True] == (8, 3, 8, 8)
    for (name, a), b in zip(compiled.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_speed_is_measured_on_alternating_steps() -> None:
    """After compiling, compiled and eager steps alternate for the remembered speed-up (both
    sides under the same conditions); the last partial batch is not timed, and validation
    runs compiled whatever the last training step was."""
    calls: list[bool] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        def run(*args: Any) -> Any:
            calls.append(torch.is_grad_enabled())
            return gm.forward(*args)

        return run

    module, seen = _fit({"backend": counting_backend}, steps=8)  # + 1 partial batch
    callback = seen.compile_callback
    assert len(callback.compiled_times) == 4 and len(callback.interleaved_eager_times) == 4
    # grad-mode compiled calls: the probe and the 4 compiled steps; no-grad: validation
    assert calls.count(True) == 5 and calls.count(False) == 8, calls
    ratio = module.compile_decision["compiled_vs_eager"]
    assert ratio == pytest.approx(
        statistics.median(callback.compiled_times[1:])
        / statistics.median(callback.interleaved_eager_times)
    )
    (record,) = compile_mod.read_records().values()
    assert record["ratios"] == [ratio]


def test_auto_decides_from_timed_steps(monkeypatch) -> None:
    """auto times eager steps, then compiles when the (here: free) compile pays off, and
    remembers the measured compile time and speed ratio for the next run of the model."""
    monkeypatch.setattr(compile_mod, "SECONDS_PER_LEAF", 0.0)
    monkeypatch.setattr(compile_mod, "WARMUP_STEPS", 1)
    auto = {"when": "auto", "backend": "aot_eager"}  # auto, with a backend needing no C++
    module, seen = _fit(auto, steps=8)
    decision = module.compile_decision
    assert decision["setting"] == "auto" and decision["compiled"] is True, decision
    assert "compile ~0.0 s (estimated)" in decision["reason"]
    assert decision["eager_step_s"] > 0 and decision["compiled_step_s"] > 0
    (record,) = compile_mod.read_records().values()
    assert record["compile_s"] >= 0 and record["ratio"] > 0 and "warm_compile_s" not in record
    assert module.compile_decision["warm_caches"] is False
    # Later runs are too short to pay even for a warm start: force the decision to "on" to
    # follow what they record (the reason still states the real estimate).
    real_decide = compile_mod.decide
    monkeypatch.setattr(
        compile_mod,
        "decide",
        lambda *a, **k: dataclasses.replace(real_decide(*a, **k), compile=True),
    )
    module, _ = _fit(auto, steps=8)  # the second run starts from the caches the first filled
    assert "warm caches, cold" in module.compile_decision["reason"]
    assert module.compile_decision["warm_caches"] is True
    (record,) = compile_mod.read_records().values()
    assert record["warm_compile_s"] >= 0
    module, _ = _fit(auto, steps=8)  # and the third uses the measured warm start
    assert "(measured, warm caches)" in module.compile_decision["reason"]
    (record,) = compile_mod.read_records().values()
    assert len(record["ratios"]) == 3 and record["ratio"] == statistics.median(record["ratios"])


def test_speed_ratio_is_the_median_of_recent_measurements() -> None:
    """One noisy measurement must not decide for every later run (a run that stays eager
    measures nothing new), and a lone legacy ``ratio`` (2 timed steps per side) is not
    trusted."""
    assert compile_mod.measured_ratio({}) == compile_mod.ASSUMED_RATIO
    assert compile_mod.measured_ratio({"ratio": 1.01}) == compile_mod.ASSUMED_RATIO
    assert compile_mod.measured_ratio({"ratios": [0.8, 1.3, 0.82]}) == 0.82
    # one or two unlucky measurements are outvoted by the prior until a third one exists
    assert compile_mod.measured_ratio({"ratios": [1.03]}) == compile_mod.ASSUMED_RATIO
    assert compile_mod.measured_ratio({"ratios": [1.03, 1.05]}) == 1.03
