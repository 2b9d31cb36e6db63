"""Profile a config or the whole attention zoo: params, MACs, activation memory, images/s.

Used by ``attnexp-profile`` (:mod:`attnexp.cli.profile`), the golden cost file
(``scripts/update_golden_costs.py``) and the benchmarks (``scripts/bench.py``).

* Costs come from :func:`attnexp.models.costs.count_costs` (conv+linear MACs, attention
  ops separately), per image at the config's ``data.image_size``.
* Activation memory of a training step: on CUDA the peak of
  ``torch.cuda.max_memory_allocated`` during forward+backward above the memory held before
  the step; elsewhere the bytes of the tensors autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``, unique storages, parameters excluded),
  measured on a meta-device copy so that nothing is allocated.
* Throughput: forward+backward+optimiser step (train) and a no-grad forward (inference) on
  the chosen device, with the precision, memory format and optimiser step kernel that
  ``attnexp-train`` would use there (:mod:`attnexp.training.fast_defaults`); warm-up steps,
  then the median of timed steps.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from attnexp.models.costs import (
    ATTENTION_OPS_CONVENTION,
    MACS_CONVENTION,
    Costs,
    _meta_copy,
    count_costs,
)
from attnexp.training import fast_defaults

SAVED_TENSORS_METHOD = "autograd saved tensors (saved_tensors_hooks, unique storages, no params)"
CUDA_PEAK_METHOD = "torch.cuda.max_memory_allocated during fwd+bwd, above memory before"


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """How to measure. ``None`` fields are filled from the config (what training would use)."""

    device: str | None = None  # cpu | cuda | mps
    precision: str | None = None  # Lightning precision string
    channels_last: bool | None = None
    compile: bool = False
    batch: int | None = None  # None: a small default for the device and image size
    steps: int = 5
    warmup: int = 2
    speed: bool = True
    memory: bool = True
    #: Skip the speed measurement when the saved activations exceed this many bytes.
    max_activation_bytes: int = 8 * 1024**3

    def resolved(self, cfg: DictConfig | None = None, image_size: int = 224) -> Settings:
        """Fill ``None`` fields from ``cfg`` (trainer.accelerator/precision, training.*)."""
        trainer = cfg.get("trainer", {}) if cfg is not None else {}
        training = cfg.get("training", {}) if cfg is not None else {}
        accelerator = self.device or trainer.get("accelerator", "auto")
        device = fast_defaults.device_type(accelerator)
        precision = self.precision or fast_defaults.resolve_precision(
            trainer.get("precision", "auto"), device
        )
        channels_last = (
            self.channels_last
            if self.channels_last is not None
            else fast_defaults.resolve_channels_last(training.get("channels_last", "auto"), device)
        )
        # training.compile=auto decides during fit; profiling compiles only when forced.
        compile_ = self.compile or fast_defaults.resolve_compile(
            training.get("compile", "auto")
        ) not in ("auto", False)
        batch = self.batch or default_batch(device, image_size, cfg)
        return replace(
            self,
            device=device,
            precision=precision,
            channels_last=channels_last,
            compile=compile_,
            batch=batch,
        )

    def describe(self) -> str:
        fmt = "channels_last" if self.channels_last else "contiguous (NCHW)"
        step = fast_defaults.STEP_KERNEL.get(str(self.device), "default")
        compiled = ", torch.compile" if self.compile else ""
        return (
            f"device {self.device} ({device_name(str(self.device))}), precision {self.precision}, "
            f"memory format {fmt}, SGD step {step}{compiled}, batch {self.batch}, "
            f"{self.warmup} warm-up + median of {self.steps} steps"
        )


def default_batch(device: str, image_size: int, cfg: DictConfig | None = None) -> int:
    """The config's batch size on GPUs; on CPU at most 32 (CIFAR sizes) or 8 (ImageNet)."""
    batch = None
    if cfg is not None and cfg.get("data") is not None:
        batch = cfg.data.get("batch_size")
    batch = int(batch or 64)
    if device == "cuda":
        return batch
    return min(batch, 32 if image_size <= 64 else 8)


def device_name(device: str) -> str:
    """CPU model or GPU name, for the printed report."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    if device == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads"
    return device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------- measuring
def saved_activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes autograd keeps for backward in one training forward (+ loss) at ``input_shape``.

    Runs a meta-device copy in train mode (nothing is allocated, the model is untouched);
    falls back to a real CPU forward when the model cannot run on meta tensors. Unique
    storages are summed once; parameter storages (weights saved by convs and linears) are
    excluded. fp32 sizes: mixed precision roughly halves the conv activations.
    """
    try:
        copy_ = _meta_copy(model)
        device = torch.device("meta")
        return _saved_bytes(copy_, input_shape, device)
    except Exception:  # noqa: BLE001 - not meta-compatible: measure for real on CPU
        import copy

        return _saved_bytes(copy.deepcopy(model).cpu(), input_shape, torch.device("cpu"))


def _saved_bytes(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # opaque tensors (mkldnn, nested)
            seen[id(t)] = t.numel() * t.element_size()
            return t
        key = storage._cdata
        if key not in params and key not in seen:
            seen[key] = storage.nbytes()
        return t

    model.train()
    x = torch.zeros(tuple(input_shape), device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(x)
        F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=device))
    return sum(seen.values())


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _precision_context(precision: str, device: str) -> Iterator[None]:
    if precision.endswith("-mixed"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        with torch.autocast(device_type=device, dtype=dtype):
            yield
    else:
        yield


def _input_dtype(precision: str) -> torch.dtype:
    return {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}.get(
        precision, torch.float32
    )


def prepare_model(model: nn.Module, settings: Settings) -> nn.Module:
    """Move ``model`` to the device, dtype and memory format of ``settings`` (in place)."""
    model = model.to(settings.device, dtype=_input_dtype(str(settings.precision)))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.compile()
    return model


def make_batch(
    settings: Settings, image_size: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(settings.batch, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, num_classes, (settings.batch,), generator=gen)
    x = x.to(settings.device, dtype=_input_dtype(str(settings.precision)))
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(settings.device)


def train_step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: Settings
) -> Callable[[], None]:
    """One SGD training step (forward, cross-entropy, backward, step) as a closure."""
    factory = fast_defaults.fast_optimizer(torch.optim.SGD, str(settings.device))
    optimizer = factory(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    precision, device = str(settings.precision), str(settings.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _precision_context(precision, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def infer_step_fn(model: nn.Module, x: torch.Tensor, settings: Settings) -> Callable[[], None]:
    precision, device = str(settings.precision), str(settings.device)

    def step() -> None:
        with torch.no_grad(), _precision_context(precision, device):
            model(x)

    return step


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: str) -> list[float]:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def cuda_peak_bytes(step: Callable[[], None]) -> int:
    """Peak CUDA memory allocated during ``step`` above what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


# --------------------------------------------------------------------------- results
@dataclass
class ProfileResult:
    """Everything ``attnexp-profile`` prints for one model."""

    label: str
    model: str
    attention: str
    image_size: int
    num_classes: int
    costs: Costs
    activation_bytes: int | None = None
    activation_method: str | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    train_step_times: list[float] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["costs"] = self.costs.as_dict()
        out["macs_convention"] = MACS_CONVENTION
        out["attention_ops_convention"] = ATTENTION_OPS_CONVENTION
        return out


def profile_model(
    model: nn.Module,
    *,
    image_size: int,
    num_classes: int,
    settings: Settings,
    label: str = "",
    model_name: str = "",
    attention: str = "",
) -> ProfileResult:
    """Costs, activation memory and throughput of ``model`` (``settings`` must be resolved)."""
    costs = count_costs(model, (1, 3, image_size, image_size))
    result = ProfileResult(label, model_name, attention, image_size, num_classes, costs)
    batch_shape = (int(settings.batch), 3, image_size, image_size)
    if settings.memory or settings.speed:
        result.activation_bytes = saved_activation_bytes(model, batch_shape)
        result.activation_method = SAVED_TENSORS_METHOD
    if not settings.speed:
        return result
    if result.activation_bytes and result.activation_bytes > settings.max_activation_bytes:
        result.note = (
            f"speed skipped: {result.activation_bytes / 1024**3:.1f} GiB of saved activations "
            f"at batch {settings.batch} (use a smaller --batch)"
        )
        return result
    try:
        model = prepare_model(model, settings)
        x, y = make_batch(settings, image_size, num_classes)
        train = train_step_fn(model, x, y, settings)
        if settings.device == "cuda" and settings.memory:
            train()  # optimizer state exists before the peak is taken
            result.activation_bytes = cuda_peak_bytes(train)
            result.activation_method = CUDA_PEAK_METHOD
        model.train()
        times = time_steps(train, settings.steps, settings.warmup, str(settings.device))
        result.train_step_times = times
        result.train_images_per_s = settings.batch / statistics.median(times)
        model.eval()
        infer = infer_step_fn(model, x, settings)
        times = time_steps(infer, settings.steps, settings.warmup, str(settings.device))
        result.infer_images_per_s = settings.batch / statistics.median(times)
    except (RuntimeError, MemoryError) as err:  # out of memory, unsupported kernel
        result.note = f"speed failed: {str(err).splitlines()[0][:160]}"
        if settings.device == "cuda":
            torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- configs
@contextlib.contextmanager
def hydra_session() -> Iterator[Callable[[Sequence[str]], DictConfig]]:
    """Initialise Hydra on ``attnexp.conf`` once; yields ``compose(overrides)``, which builds
    ``conf/train.yaml`` with ``overrides`` exactly as ``attnexp-train`` would (no run
    directory is created; ``paths.output_dir`` is left unresolved)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from attnexp.runtime import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        yield lambda overrides: hydra_compose(config_name="train", overrides=list(overrides))


def compose(overrides: Sequence[str]) -> DictConfig:
    """One config, as :func:`hydra_session` composes it."""
    with hydra_session() as compose_:
        return compose_(overrides)


def config_image_size(cfg: DictConfig) -> int:
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    return int(data.get("image_size") or model.get("image_size") or 224)


def _gives_data(overrides: Sequence[str]) -> bool:
    """True when the overrides choose the data (``data=``, ``data.image_size=``, a preset)."""
    keys = [o.lstrip("+~").partition("=")[0] for o in overrides]
    return any(k.split(".")[0].split("@")[0] in ("data", "experiment") for k in keys)


def choose_image_size(
    cfg: DictConfig, overrides: Sequence[str], image_size: int | None = None
) -> tuple[int, str]:
    """The input size to profile at and why, and ``cfg`` set to it (``data.image_size``, so
    ``model.image_size`` and size-bound modules follow).

    An explicit ``image_size`` wins; then a config whose data the overrides chose (``data=``,
    ``data.image_size=``, an ``experiment=`` preset); otherwise the model family's size (224
    for ImageNet backbones, 32 for CIFAR ones), not the default synthetic data's 32.
    """
    from omegaconf import open_dict

    model = str((cfg.get("model") or {}).get("name"))
    family = _family(model)
    if image_size is not None:
        size, why = image_size, "--image-size"
    elif _gives_data(overrides):
        size = config_image_size(cfg)
        why = f"data.image_size of data={cfg.data.get('name')}"
    elif family is not None:
        size, why = family
        why = f"{why} default of {model}; data=... or --image-size to change"
    else:
        size, why = config_image_size(cfg), "data.image_size"
    with open_dict(cfg):
        cfg.data.image_size = size
    return size, why


def _family(model: str) -> tuple[int, str] | None:
    from attnexp.models import model_info

    try:
        info = model_info(model)
    except Exception:  # noqa: BLE001 - unknown model: the config decides
        return None
    kind = "ImageNet" if info.family == "imagenet" else "CIFAR"
    return info.default_image_size, f"the {kind}-family"


def build_from_config(cfg: DictConfig, meta: bool = False) -> nn.Module:
    """The backbone ``attnexp-train`` builds for ``cfg`` (on the meta device if ``meta``:
    instant, enough for costs; falls back to a real build)."""
    from attnexp import builders

    if meta:
        try:
            with torch.device("meta"):
                return builders.build_backbone(cfg)
        except Exception:  # noqa: BLE001 - an init that needs real data: build normally
            pass
    return builders.build_backbone(cfg)


def config_costs(cfg: DictConfig) -> Costs:
    """Costs of the backbone of ``cfg`` at ``data.image_size`` (batch 1), built on meta."""
    size = config_image_size(cfg)
    return count_costs(build_from_config(cfg, meta=True), (1, 3, size, size))


def attention_label(cfg: DictConfig) -> str:
    """``se``, ``sk``, ``se+bam`` ...: the modules a config places."""
    from attnexp import builders

    names = [p["module"]["name"] if isinstance(p["module"], dict) else str(p["module"])
             for p in builders.placements_from_config(cfg)]  # fmt: skip
    conv = builders.to_dict(cfg.get("conv"))
    if conv:
        names.append(conv["name"] if isinstance(conv, dict) else str(conv))
    return "+".join(names) or "none"


def profile_config(cfg: DictConfig, settings: Settings, label: str = "") -> ProfileResult:
    """Build the backbone of ``cfg`` and profile it."""
    size = config_image_size(cfg)
    resolved = (
        settings.resolved(cfg, size)
        if settings.device is None or settings.batch is None
        else settings
    )
    model = build_from_config(cfg)
    num_classes = int(cfg.model.get("num_classes") or cfg.data.get("num_classes") or 1000)
    result = profile_model(
        model,
        image_size=size,
        num_classes=num_classes,
        settings=resolved,
        label=label or attention_label(cfg),
        model_name=str(cfg.model.name),
        attention=attention_label(cfg),
    )
    usual = _usual_size(str(cfg.model.name))
    if usual and usual != size:
        hint = (
            f"profiled at {size}x{size} (data.image_size of data={cfg.data.get('name')}); "
            f"{cfg.model.name} is usually run at {usual}x{usual}: add data=imagenet or "
            f"data.image_size={usual}"
        )
        result.note = f"{result.note}; {hint}" if result.note else hint
    return result


def _usual_size(model: str) -> int | None:
    from attnexp.models import model_info

    try:
        return model_info(model).default_image_size
    except Exception:  # noqa: BLE001 - unknown model: no hint
        return None


def is_sweep(override: str) -> bool:
    """True for ``key=a,b`` and ``key=glob(...)`` (commas inside brackets do not count)."""
    from attnexp.experiments import split_sweep_values

    _, sep, value = override.partition("=")
    if not sep:
        return False
    return value.strip().startswith("glob(") or len(split_sweep_values(value)) > 1


def sweep_jobs(overrides: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """The jobs ``attnexp-train -m <overrides>`` would run: ``(swept, overrides)`` per job,
    from the command-line sweeps and the preset's ``hydra.sweeper.params`` (the command
    line wins), ``swept`` being the job's values of the swept keys."""
    from attnexp.experiments import expand_sweep, group_options, preset_sweep

    fixed = [o for o in overrides if not is_sweep(o)]
    params: dict[str, str] = {}
    for o in fixed:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "experiment":
            params.update(preset_sweep(value))
    fixed_keys = {o.partition("=")[0].lstrip("+~") for o in fixed}
    params = {k: v for k, v in params.items() if k not in fixed_keys}
    for o in overrides:
        if is_sweep(o):
            key, _, value = o.partition("=")
            params[key] = value
    options = {k: group_options(k.lstrip("+")) for k in params}
    return [(job, fixed + job) for job in expand_sweep(params, options)]


def zoo_jobs(overrides: Sequence[str], model: str = "resnet50") -> list[tuple[str, list[str]]]:
    """``(module, overrides)`` for every registered module on one backbone: the module's
    ``attention/<name>.yaml`` (paper options, placement auto). Without a ``model=`` override
    the backbone is ``model`` at ImageNet size (224, 1000 classes)."""
    from attnexp.attention import available
    from attnexp.experiments import group_options

    base = [o for o in overrides if o.partition("=")[0].lstrip("+") != "attention"]
    if not any(o.partition("=")[0].lstrip("+") == "model" for o in base):
        base = [f"model={model}", "data=imagenet", *base] if model != "resnet20" else base
    configs = set(group_options("attention"))
    jobs = []
    for name in sorted(available(), key=lambda n: n != "none"):  # the baseline first
        choice = f"attention={name}" if name in configs else f"attention.name={name}"
        jobs.append((name, [*base, choice]))
    return jobs


# --------------------------------------------------------------------------- golden costs
#: Backbones on which every attention and conv config is listed in the golden file.
def backbone_spec(cfg: DictConfig) -> dict[str, Any]:
    """What decides the architecture and its costs: the model node, the placements, the conv
    module and the image size (everything :func:`attnexp.builders.build_backbone` reads)."""
    from attnexp import builders

    return {
        # model.pretrained says where weights come from, not what the architecture is
        "model": {k: v for k, v in builders.to_dict(cfg.model).items() if k != "pretrained"},
        "placements": builders.placements_from_config(cfg),
        "conv": builders.to_dict(cfg.get("conv")),
        "image_size": config_image_size(cfg),
    }


def spec_costs(spec: dict[str, Any]) -> Costs:
    """Costs of a :func:`backbone_spec` (built on the meta device, batch 1)."""
    from attnexp.models import build_model

    model_cfg = dict(spec["model"])
    name = model_cfg.pop("name")
    size = int(spec["image_size"])
    try:
        with torch.device("meta"):
            model = build_model(name, placements=spec["placements"], conv=spec["conv"], **model_cfg)
    except Exception:  # noqa: BLE001 - an init that needs real data: build normally
        model = build_model(name, placements=spec["placements"], conv=spec["conv"], **model_cfg)
    return count_costs(model, (1, 3, size, size))
