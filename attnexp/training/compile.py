"""``training.compile``: compile the backbone when the run is long enough to pay for it.

``auto`` (the default) times a few eager training steps, estimates the compile time (the
one measured for this model before, else a size-based guess) and compiles only when the
expected saving over the remaining steps exceeds it. ``true`` (or a dict of
``torch.compile`` options) always compiles, ``false`` never does. Whatever was decided is
printed as one ``[attnexp] compile: ...`` line and kept in ``metrics.json``.

Compiling happens in a probe: one forward + backward on the current batch with BN
statistics, gradients and RNG state restored afterwards, so a compiler failure (no C++
toolchain, an unsupported op) is caught before it can break a training step; the run then
continues eagerly after a one-line warning. Later calls go through :class:`GuardedCompiled`:
only the first batch shape of each mode (train, eval) runs compiled, other shapes (the last
partial batch of an epoch) run eagerly instead of triggering a recompilation. The speed-up
remembered for the model comes from the steps right after compiling, where the compiled and
the eager call alternate (:data:`RATIO_STEPS` each), so both see the same conditions.

Compiled artefacts persist across runs and processes in PyTorch's own caches (inductor's
FX graph cache and the AOTAutograd cache), kept under ``~/.cache/attnexp/inductor``
(``$ATTNEXP_CACHE_DIR/inductor``; an explicit ``TORCHINDUCTOR_CACHE_DIR`` wins), so the
runs of a sweep after the first one per model load their kernels instead of generating
them. Measured compile times and speed-ups are remembered there too (``compile_times.json``)
and feed the next decision for the same model: the first (cold) compile time and, separately,
the time of a start from the warm caches, which is what every later run of that model pays.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

#: Eager steps timed before an ``auto`` decision (the step before them is not timed: the first
#: step pays for lazy initialisation). Their median is also the eager side of the measured
#: speed-up; with 2 steps, one slow step on a shared machine moved it by 10%.
WARMUP_STEPS = 8
#: Steps per side timed after compiling for the speed-up remembered for the model: the
#: compiled and the eager call alternate step by step, so both sides see the same machine
#: state and the same point of the run. The eager steps timed before the decision cannot be
#: used for that: the first steps of a CPU run fault their buffers in (ResNet-20 on CIFAR-10:
#: 318 ms per eager step there, ~220 ms a hundred steps later), which made compiling look
#: faster than it is; a 2-step median the other way measured 0.97 where the run ran at 0.82.
RATIO_STEPS = 30
#: Measured speed-ups kept per model; the decision uses their median.
RATIO_HISTORY = 5
#: Below this many measurements the median is padded with ASSUMED_RATIO.
TRUSTED_RATIOS = 3
#: Compiled step time / eager step time assumed before one was measured for the model:
#: ``scripts/bench.py --sections e`` measured 0.69-0.89 on the 2-core CPU (ResNet-20) and the
#: same range is typical on GPUs; the upper end keeps the decision conservative.
ASSUMED_RATIO = 0.85
#: Seconds of compilation per leaf module (conv, BN, ReLU, ...) assumed for a model never
#: compiled here (ResNet-20 without attention: ~65 leaves, 25-70 s cold on the 2-core CPU),
#: train graph plus eval graph.
SECONDS_PER_LEAF = 0.6
#: Compile only when the expected saving exceeds the compile time by this factor.
MARGIN = 1.2
#: A start from warm caches / the cold compile of the same model, assumed until a warm start
#: was measured: ResNet-20 + SE took 219 s cold and 21 s warm on the 2-core CPU (0.10).
WARM_FRACTION = 0.2
RECORD_FILE = "compile_times.json"


def cache_root() -> Path:
    """``$ATTNEXP_CACHE_DIR`` or ``$XDG_CACHE_HOME/attnexp`` or ``~/.cache/attnexp``."""
    if os.environ.get("ATTNEXP_CACHE_DIR"):
        return Path(os.environ["ATTNEXP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnexp"


def enable_persistent_cache() -> Path:
    """Point inductor's on-disk caches at a user directory that survives reboots (PyTorch's
    default is under /tmp) and make sure the FX graph and AOTAutograd caches are on.
    Returns the directory. Must run before the first compilation of the process."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # Importing Lightning already makes torch write its /tmp default into the environment;
    # only a directory the user chose is kept.
    if path is None or os.path.abspath(path) == os.path.abspath(default_cache_dir()):
        path = os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_root() / "inductor")
    Path(path).mkdir(parents=True, exist_ok=True)

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    allow_many_compiled_models()
    return Path(path)


#: Compiled entries per code object before dynamo silently runs it eagerly (torch's default
#: is 8). Every model compiled in one process adds entries to the same code object
#: (``nn.Module._call_impl`` / the model's ``forward``): train, eval and no-grad graphs. A
#: sweep on the basic launcher runs all its jobs in one process, so with the default the
#: fourth or fifth job would train eagerly while its log said "compile: on".
RECOMPILE_LIMIT = 64


def allow_many_compiled_models(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise dynamo's per-code-object recompile limit to at least ``limit``."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(int(getattr(dynamo_config, name)), limit))


# ----------------------------------------------------------------------------- decisions
@dataclass
class Decision:
    compile: bool
    reason: str

    def line(self) -> str:
        return f"[attnexp] compile: {'on' if self.compile else 'off'} ({self.reason})"


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if abs(seconds) >= 10 else f"{seconds:.1f} s"


def decide(
    step_s: float,
    remaining_steps: float,
    compile_s: float,
    ratio: float,
    how: str = "estimated",
) -> Decision:
    """Compile when ``remaining x step x (1 - ratio)`` exceeds ``MARGIN x compile_s``;
    ``how`` says where ``compile_s`` came from (for the log line)."""
    if not math.isfinite(remaining_steps):
        return Decision(True, f"no step limit, eager step {step_s * 1e3:.0f} ms")
    eager = step_s * remaining_steps
    saving = eager * (1.0 - ratio)
    reason = (
        f"est. eager {_fmt(eager)} for {int(remaining_steps)} steps at {step_s * 1e3:.0f} ms, "
        f"compile ~{_fmt(compile_s)} ({how}), expected saving {_fmt(saving - compile_s)}"
    )
    return Decision(saving > MARGIN * compile_s, reason)


def model_key(model: nn.Module, example: torch.Tensor, options: Mapping[str, Any]) -> str:
    """What makes two compilations the same: the module tree, input shape/dtype/layout,
    device type, torch version and compile options."""
    layout = "cl" if example.is_contiguous(memory_format=torch.channels_last) else "c"
    text = "|".join(
        (
            repr(model),
            str(tuple(example.shape)),
            str(example.dtype),
            layout,
            example.device.type,
            torch.__version__,
            json.dumps(dict(options), sort_keys=True, default=str),
        )
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_records(root: Path | None = None) -> dict[str, Any]:
    path = (root or cache_root()) / RECORD_FILE
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def write_record(key: str, values: Mapping[str, Any], root: Path | None = None) -> None:
    """Merge ``values`` into the record of ``key`` (atomic replace; last writer wins)."""
    root = root or cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        records = read_records(root)
        records[key] = {**records.get(key, {}), **values, "torch": torch.__version__}
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".compile_times.")
        with os.fdopen(fd, "w") as fh:
            json.dump(records, fh, indent=1, sort_keys=True)
        os.replace(tmp, root / RECORD_FILE)
    except OSError:  # a read-only home must not stop training
        pass


def guess_compile_seconds(model: nn.Module) -> float:
    leaves = sum(1 for m in model.modules() if not list(m.children()))
    return SECONDS_PER_LEAF * max(leaves, 1)


def expected_compile_seconds(record: Mapping[str, Any], model: nn.Module) -> tuple[float, str]:
    """(seconds, where the figure comes from) for compiling ``model`` now.

    A model compiled here before starts from the warm caches: its measured warm start, else
    ``WARM_FRACTION`` of its cold compile. Keeping the cold figure alone would stop ``auto``
    from ever compiling a model whose first compile was slow (e.g. on a busy machine), and a
    run that does not compile never measures anything better."""
    if "warm_compile_s" in record:
        return float(record["warm_compile_s"]), "measured, warm caches"
    if "compile_s" in record:
        cold = float(record["compile_s"])
        return WARM_FRACTION * cold, f"warm caches, cold {_fmt(cold)} measured"
    return guess_compile_seconds(model), "estimated"


def measured_ratio(record: Mapping[str, Any]) -> float:
    """The median of the model's measured compiled / eager step ratios, padded with
    :data:`ASSUMED_RATIO` up to :data:`TRUSTED_RATIOS` values. A run that stays eager
    measures nothing, so one unlucky measurement alone must not keep ``auto`` off for good
    (one measured 1.03 on a busy machine, before ``retain_host_memory``, for a model that runs
    at 0.85-0.90). A lone legacy ``ratio`` (from 2 steps per side) is not trusted at all."""
    ratios = list(record.get("ratios") or [])
    ratios += [ASSUMED_RATIO] * max(0, TRUSTED_RATIOS - len(ratios))
    return float(statistics.median(ratios))


# ----------------------------------------------------------------------------- compiled call
class GuardedCompiled:
    """The compiled ``_call_impl`` of a module with an eager fallback.

    The first input shape seen in each mode (training / eval) runs compiled; other shapes run
    eagerly (no recompilation for the last partial batch). If the compiled call raises and the
    eager call does not, compilation is switched off for good with a one-line warning.
    """

    def __init__(self, module: nn.Module, options: Mapping[str, Any]) -> None:
        self.module = module
        self.eager = module._call_impl
        self.compiled = torch.compile(self.eager, **dict(options))
        self.shapes: dict[bool, tuple[int, ...]] = {}
        self.failed: BaseException | None = None
        self.first_call_s: dict[bool, float] = {}
        #: run the eager call for now (the interleaved speed measurement sets it)
        self.eager_now = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else None
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
        mode = bool(self.module.training)
        if self.failed is not None or self.shapes.setdefault(mode, shape) != shape:
            return self.eager(*args, **kwargs)
        if self.eager_now:
            return self.eager(*args, **kwargs)
        first = mode not in self.first_call_s
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:
            result = self.eager(*args, **kwargs)  # a genuine error raises here, as eagerly
            self.fail(err)
            return result
        if first:
            self.first_call_s[mode] = time.perf_counter() - start
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        # A copy of the module (EMA, analysis) runs eagerly: this wrapper is bound to the
        # original's compiled code.
        return None

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _none, ()

    def fail(self, err: BaseException) -> None:
        self.failed = err
        self.module.__dict__["_compiled_call_impl"] = None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(
            f"[attnexp] WARNING compile failed ({type(err).__name__}: {first[:160]}); "
            "training continues eagerly (training.compile=false hides this)",
            file=sys.stderr,
            flush=True,
        )


def compile_in_place(module: nn.Module, options: Mapping[str, Any]) -> GuardedCompiled:
    """Like ``nn.Module.compile`` (parameter names and checkpoints unchanged), guarded."""
    guarded = GuardedCompiled(module, options)
    module._compiled_call_impl = guarded  # what nn.Module.compile sets
    return guarded


def parse(value: Any) -> tuple[str, dict[str, Any]]:
    """``training.compile`` -> (``auto`` | ``on`` | ``off``, torch.compile options).

    A dict is ``torch.compile`` options and forces compilation, unless it has
    ``when: auto`` (e.g. ``{when: auto, mode: max-autotune}``: decide, compile with those)."""
    from attnexp.errors import ConfigError

    if isinstance(value, Mapping):
        options = dict(value)
        when = options.pop("when", "always")
        if when not in ("auto", "always"):
            raise ConfigError(f"training.compile.when must be auto or always, got {when!r}")
        return ("auto" if when == "auto" else "on"), options
    if value in ("auto", None):
        return "auto", {}
    if value in (True, "true", "True"):
        return "on", {}
    if value in (False, "false", "False"):
        return "off", {}
    raise ConfigError(
        f"training.compile must be auto, true, false or a dict of torch.compile options, "
        f"got {value!r}"
    )


# ----------------------------------------------------------------------------- the callback
class CompileWhenItPays(L.Callback):
    """Decides and applies ``training.compile`` during ``fit`` (see the module docstring)."""

    def __init__(self, setting: Any = "auto", warmup_steps: int | None = None) -> None:
        self.mode, self.options = parse(setting)
        self.warmup_steps = WARMUP_STEPS if warmup_steps is None else warmup_steps
        self.decision: Decision | None = None
        self.eager_times: list[float] = []
        self.compiled_times: list[float] = []
        #: eager steps timed after compiling, alternating with the compiled ones
        self.interleaved_eager_times: list[float] = []
        self.key: str | None = None
        self.guarded: GuardedCompiled | None = None
        self.probe_s: float | None = None
        #: whether this model was compiled here before (its kernels are in the caches)
        self.warm_start = False
        self._train_compile_s: float | None = None
        self._speed_remembered = False
        self._start = 0.0
        self._remaining = 0.0

    # the summary kept in metrics.json
    def summary(self) -> dict[str, Any]:
        return {
            "setting": self.mode,
            "compiled": bool(self.guarded is not None and self.guarded.failed is None),
            "reason": self.decision.reason if self.decision else None,
            "failed": repr(self.guarded.failed) if self.guarded and self.guarded.failed else None,
            "eager_step_s": statistics.median(self.eager_times) if self.eager_times else None,
            "compiled_step_s": statistics.median(self.compiled_times)
            if self.compiled_times
            else None,
            "compiled_vs_eager": self._interleaved_ratio(),
            "probe_s": self.probe_s,
            "warm_caches": self.warm_start,
        }

    def _announce(self, trainer: L.Trainer, pl_module: L.LightningModule, d: Decision) -> None:
        self.decision = d
        pl_module.compile_decision = self.summary()
        if trainer.is_global_zero:
            print(d.line(), flush=True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode == "off":
            self._announce(trainer, pl_module, Decision(False, "training.compile=false"))
        elif self.mode == "auto" and trainer.fast_dev_run:
            self._announce(trainer, pl_module, Decision(False, "fast_dev_run"))
        elif self.mode == "auto" and trainer.strategy.root_device.type == "mps":
            self._announce(trainer, pl_module, Decision(False, "auto is off on MPS"))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = float(trainer.estimated_stepping_batches)
        self._remaining = total - trainer.global_step
        short = self._remaining <= self.warmup_steps + 1
        if self.decision is None and self.mode == "auto" and short:
            reason = f"only {int(self._remaining)} steps planned"
            self._announce(trainer, pl_module, Decision(False, reason))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.decision is None and self.mode == "on":
            self._announce(trainer, pl_module, Decision(True, "training.compile=true"))
            self._compile(trainer, pl_module, batch)
        if self._measuring and self._compiled_shape(batch):
            # Alternate by step count, so every DDP rank takes the same path.
            timed = len(self.compiled_times) + len(self.interleaved_eager_times)
            self.guarded.eager_now = timed % 2 == 1  # type: ignore[union-attr]
        self._start = time.perf_counter()

    def _compiled_shape(self, batch: Any) -> bool:
        """Whether ``batch`` has the shape the training graph was compiled for (the last
        partial batch runs eagerly whatever is measured, so it is not timed)."""
        g = self.guarded
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return g is not None and tuple(getattr(x, "shape", ())) == g.shapes.get(True)

    @property
    def _measuring(self) -> bool:
        """Timing compiled and eager steps alternately (right after compiling)."""
        g = self.guarded
        return (
            g is not None
            and g.failed is None
            and not self._speed_remembered
            and len(self.interleaved_eager_times) < RATIO_STEPS
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.decision is not None and not (self._measuring and self._compiled_shape(batch)):
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = time.perf_counter() - self._start
        self._remaining -= 1
        if self.decision is None:
            self.eager_times.append(elapsed)
            if len(self.eager_times) > self.warmup_steps:  # the first one is not counted
                self._decide(trainer, pl_module, batch)
            return
        g = self.guarded
        assert g is not None
        (self.interleaved_eager_times if g.eager_now else self.compiled_times).append(elapsed)
        g.eager_now = False  # validation and everything else between steps runs compiled
        if len(self.interleaved_eager_times) == RATIO_STEPS:
            self._remember_speed(pl_module)

    # -- internals ---------------------------------------------------------------------------
    def _decide(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        step_s = statistics.median(self.eager_times[1:])
        self.key = model_key(pl_module.model, _input_of(pl_module, batch), self.options)
        record = read_records().get(self.key, {})
        compile_s, how = expected_compile_seconds(record, pl_module.model)
        ratio = measured_ratio(record)
        decision = decide(step_s, self._remaining, compile_s, ratio, how)
        # Every rank must do the same (rank 0's timing decides).
        decision = trainer.strategy.broadcast(decision, src=0)
        self._announce(trainer, pl_module, decision)
        if decision.compile:
            self._compile(trainer, pl_module, batch)

    def _compile(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
        enable_persistent_cache()
        model = pl_module.model
        if self.key is None:
            self.key = model_key(model, _input_of(pl_module, batch), self.options)
        self.warm_start = "compile_s" in read_records().get(self.key, {})
        self.guarded = compile_in_place(model, self.options)
        start = time.perf_counter()
        try:
            _probe(trainer, pl_module, batch)
        except Exception as err:
            self.guarded.fail(err)
        self.probe_s = time.perf_counter() - start
        pl_module.compile_decision = self.summary()

    def _remember_speed(self, pl_module: L.LightningModule) -> None:
        """Record the compile time and the compiled / eager step ratio (called after
        ``RATIO_STEPS`` compiled steps, or at the end of a shorter fit)."""
        self._speed_remembered = True
        g = self.guarded
        if g is None or g.failed is not None or self.key is None or len(self.compiled_times) < 2:
            return
        g.eager_now = False
        compiled = statistics.median(self.compiled_times[1:])
        values: dict[str, Any] = {}
        if self.probe_s is not None:
            step = statistics.median(self.eager_times[1:]) if self.eager_times else compiled
            self._train_compile_s = max(self.probe_s - step, 0.0)
            values[self._compile_field] = self._train_compile_s
        ratio = self._interleaved_ratio()
        if ratio is not None:
            record = read_records().get(self.key, {})
            history = [*record.get("ratios", []), ratio][-RATIO_HISTORY:]
            values.update(ratios=history, ratio=statistics.median(history))
        write_record(self.key, values)
        pl_module.compile_decision = self.summary()

    def _interleaved_ratio(self) -> float | None:
        """Compiled / eager step time from the alternating steps (the first compiled step,
        which still allocates its buffers, is left out); None below 2 steps per side."""
        compiled, eager = self.compiled_times[1:], self.interleaved_eager_times
        if len(compiled) < 2 or len(eager) < 2:
            return None
        return statistics.median(compiled) / statistics.median(eager)

    @property
    def _compile_field(self) -> str:
        return "warm_compile_s" if self.warm_start else "compile_s"

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._speed_remembered:
            self._remember_speed(pl_module)
        g = self.guarded
        train_s = self._train_compile_s
        if g is not None and g.failed is None and self.key and train_s is not None:
            # The eval graph is compiled at the first validation: it is part of the cost.
            total = train_s + g.first_call_s.get(False, 0.0)
            write_record(self.key, {self._compile_field: total})
        pl_module.compile_decision = self.summary()


def _input_of(pl_module: L.LightningModule, batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if getattr(pl_module, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _probe(trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> None:
    """One compiled forward + backward on ``batch`` in the training step's precision context,
    leaving buffers (BN statistics), gradients and RNG state as they were."""
    x, y = batch[0], batch[1]
    buffers = {n: b.detach().clone() for n, b in pl_module.named_buffers()}
    grads = {p: p.grad for p in pl_module.parameters()}
    device = pl_module.device
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            with trainer.precision_plugin.train_step_context():
                loss = pl_module.criterion(pl_module(x), y)
            loss.backward()
    finally:
        with torch.no_grad():
            for name, buf in pl_module.named_buffers():
                if name in buffers:
                    buf.copy_(buffers[name])
        for p, g in grads.items():
            p.grad = g


def _none() -> None:
    return None
