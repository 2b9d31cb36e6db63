"""Fast defaults per device: memory format, precision, optimiser step kernel, compilation.

Every switch accepts ``"auto"`` (or ``None``), which means "what measured faster on this
kind of device"; an explicit ``true``/``false`` or precision string is always respected.
The CPU choices follow ``scripts/bench.py --defaults`` (figures in ``docs/benchmarks.md``);
the CUDA choices are the well-established ones (channels_last + bf16 autocast use the
tensor cores, fused optimiser kernels avoid one launch per parameter).

Wiring (``attnexp/builders.py``)::

    training, optimizer = fast_defaults.apply(training_cfg, optimizer_factory, accelerator)
    trainer_kwargs["precision"] = fast_defaults.resolve_precision(precision, accelerator)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from attnexp.errors import ConfigError
from attnexp.training import host_memory

#: channels_last for CPU training: ``scripts/bench.py`` section (d) on the 2-core dev machine
#: (2026-11-21, quiet): train step 0.76x the contiguous time for ResNet-20, 0.84x for ResNet-50.
CPU_CHANNELS_LAST: bool = True
#: Optimiser step kernel per device type (a keyword of torch.optim.SGD/Adam/AdamW/...). On
#: the CPU, section (d) measured fused 0.71x and foreach 1.11x the for-loop SGD step.
STEP_KERNEL: dict[str, str] = {"cuda": "fused", "cpu": "fused"}
AUTO = ("auto", None)


def device_type(accelerator: str | None = "auto") -> str:
    """``cuda``, ``mps`` or ``cpu`` for a Lightning ``accelerator`` value (auto: what exists)."""
    acc = str(accelerator or "auto").lower()
    if acc in ("gpu", "cuda"):
        return "cuda"
    if acc == "mps":
        return "mps"
    if acc == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
    return "cpu"


def _flag(name: str, value: Any) -> bool | None:
    if value in AUTO:
        return None
    if isinstance(value, bool):
        return value
    raise ConfigError(f"training.{name} must be true, false or auto, got {value!r}")


def resolve_channels_last(value: Any, device: str) -> bool:
    """``auto``: True on CUDA (tensor-core convs want NHWC), :data:`CPU_CHANNELS_LAST` on CPU."""
    flag = _flag("channels_last", value)
    if flag is not None:
        return flag
    return {"cuda": True, "cpu": CPU_CHANNELS_LAST}.get(device, False)


def resolve_retain_host_memory(value: Any, device: str) -> bool:
    """``auto``: on for CPU training (see :mod:`attnexp.training.host_memory`)."""
    flag = _flag("retain_host_memory", value)
    return device == "cpu" if flag is None else flag


def resolve_compile(value: Any) -> str | bool | dict[str, Any]:
    """``auto`` stays ``"auto"``: whether compiling pays depends on the run's length and step
    time, decided during fit by :class:`attnexp.training.compile.CompileWhenItPays`.
    ``true``/``false`` or a dict of ``torch.compile`` options pass through."""
    from attnexp.training.compile import parse

    mode, _ = parse(value)
    if isinstance(value, Mapping):
        return dict(value)
    return "auto" if mode == "auto" else mode == "on"


def resolve_precision(value: Any, accelerator: str | None = "auto") -> str:
    """Lightning precision; ``auto``: ``bf16-mixed`` on a CUDA device with bf16, else ``32-true``."""
    if value not in AUTO:
        return str(value)
    device = device_type(accelerator)
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def fast_optimizer(
    factory: Callable[..., torch.optim.Optimizer], device: str, precision: str = "32-true"
) -> Callable[..., torch.optim.Optimizer]:
    """Add the device's fastest step kernel (``fused=True`` on CUDA and CPU) to an optimiser
    factory.

    Nothing is added when the user already set ``fused`` or ``foreach``, or when the
    optimiser class does not take the keyword.
    """
    kernel = STEP_KERNEL.get(device)
    if kernel == "fused" and precision.startswith("16"):
        # fp16 loss scaling: a fused step unscales inside the kernel, and Lightning then
        # refuses gradient clipping; foreach keeps both working.
        kernel = "foreach"
    keywords = getattr(factory, "keywords", None) or {}
    if kernel is None or "fused" in keywords or "foreach" in keywords:
        return factory
    cls = getattr(factory, "func", factory)
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return factory
    if kernel not in accepted:
        return factory
    # A flat partial keeps `.keywords` readable (lr for linear scaling); Hydra's deferred
    # target is not a functools.partial, so wrapping it would hide its keywords.
    args = getattr(factory, "args", ())
    return functools.partial(cls, *args, **{**keywords, kernel: True})


def apply(
    training: Mapping[str, Any] | None,
    optimizer: Callable[..., torch.optim.Optimizer],
    accelerator: str | None = "auto",
    precision: str = "32-true",
) -> tuple[dict[str, Any], Callable[..., torch.optim.Optimizer]]:
    """Resolve ``training.channels_last`` / ``training.compile`` and the optimiser step kernel
    for the device ``accelerator`` selects.

    Returns the ``training`` options with ``channels_last`` a bool and ``compile`` ``"auto"``, a
    bool or an options dict, and the optimiser factory (with ``fused``/``foreach`` where it helps).
    """
    device = device_type(accelerator)
    options = dict(training or {})
    options["channels_last"] = resolve_channels_last(options.get("channels_last", "auto"), device)
    options["compile"] = resolve_compile(options.get("compile", "auto"))
    retain = resolve_retain_host_memory(options.get("retain_host_memory", "auto"), device)
    options["retain_host_memory"] = retain and host_memory.retain_freed_memory()
    return options, fast_optimizer(optimizer, device, precision)


def describe(accelerator: str | None = "auto", precision: Any = "auto") -> dict[str, Any]:
    """The resolved defaults for ``accelerator``, for printing (``attnexp-profile``)."""
    device = device_type(accelerator)
    return {
        "device": device,
        "precision": resolve_precision(precision, accelerator),
        "channels_last": resolve_channels_last("auto", device),
        "optimizer_step": STEP_KERNEL.get(device, "default"),
        "compile": "auto (compiled when the run is long enough to pay for it)",
        "retain_host_memory": resolve_retain_host_memory("auto", device),
    }
