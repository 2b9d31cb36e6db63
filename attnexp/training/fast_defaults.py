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

#: channels_last for CPU training, from ``scripts/bench.py --defaults`` on the dev machine.
CPU_CHANNELS_LAST: bool = False
#: Optimiser step kernel per device type (a keyword of torch.optim.SGD/Adam/AdamW/...).
STEP_KERNEL: dict[str, str] = {"cuda": "fused", "cpu": "foreach"}
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


def resolve_compile(value: Any) -> bool | dict[str, Any]:
    """``auto`` is off on every device: compiling costs minutes per model and is opt-in.
    ``true`` or a dict of ``torch.compile`` options pass through."""
    if value in AUTO:
        return False
    if isinstance(value, Mapping):
        return dict(value)
    return bool(_flag("compile", value))


def resolve_precision(value: Any, accelerator: str | None = "auto") -> str:
    """Lightning precision; ``auto``: ``bf16-mixed`` on a CUDA device with bf16, else ``32-true``."""
    if value not in AUTO:
        return str(value)
    device = device_type(accelerator)
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def fast_optimizer(
    factory: Callable[..., torch.optim.Optimizer], device: str
) -> Callable[..., torch.optim.Optimizer]:
    """Add ``fused=True`` (CUDA) or ``foreach=True`` (CPU) to an optimiser factory.

    Nothing is added when the user already set ``fused`` or ``foreach``, or when the
    optimiser class does not take the keyword.
    """
    kernel = STEP_KERNEL.get(device)
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
    return functools.partial(factory, **{kernel: True})


def apply(
    training: Mapping[str, Any] | None,
    optimizer: Callable[..., torch.optim.Optimizer],
    accelerator: str | None = "auto",
) -> tuple[dict[str, Any], Callable[..., torch.optim.Optimizer]]:
    """Resolve ``training.channels_last`` / ``training.compile`` and the optimiser step kernel
    for the device ``accelerator`` selects.

    Returns the ``training`` options with ``channels_last`` a bool and ``compile`` a bool or
    an options dict, and the optimiser factory (with ``fused``/``foreach`` where it helps).
    """
    device = device_type(accelerator)
    options = dict(training or {})
    options["channels_last"] = resolve_channels_last(options.get("channels_last", "auto"), device)
    options["compile"] = resolve_compile(options.get("compile", "auto"))
    return options, fast_optimizer(optimizer, device)


def describe(accelerator: str | None = "auto", precision: Any = "auto") -> dict[str, Any]:
    """The resolved defaults for ``accelerator``, for printing (``attnexp-profile``)."""
    device = device_type(accelerator)
    return {
        "device": device,
        "precision": resolve_precision(precision, accelerator),
        "channels_last": resolve_channels_last("auto", device),
        "optimizer_step": STEP_KERNEL.get(device, "default"),
        "compile": False,
    }
