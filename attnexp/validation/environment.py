"""Checks against this machine: devices asked vs present, precision vs device, and a
writable output root (before any directory is created)."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attnexp.errors import ConfigError
from attnexp.validation.problems import Problem

GPU = ("gpu", "cuda")


def _cuda_devices() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken driver counts as no GPU
        return 0


def _accelerator(trainer: Mapping[str, Any]) -> str:
    name = str(trainer.get("accelerator", "auto"))
    if name == "auto":
        return "gpu" if _cuda_devices() else "cpu"
    return "gpu" if name in GPU else name


def check_hardware(cfg: Mapping[str, Any]) -> list[Problem]:
    """Hardware asked for vs present: :func:`attnexp.hardware.check_hardware` (devices,
    GPU ids, DDP with one process)."""
    try:
        from attnexp import hardware
    except ImportError:  # hook: without attnexp.hardware, only a GPU asked on a CPU machine
        return _gpu_present(cfg)
    try:
        hardware.check_hardware(cfg)
    except ConfigError as err:
        text = str(err)
        key = text.split("=", 1)[0].split()[0] if "=" in text.split()[0] else "trainer.devices"
        return [Problem(key, text, "hardware")]
    return []


def _gpu_present(cfg: Mapping[str, Any]) -> list[Problem]:
    trainer = cfg["trainer"]
    if _accelerator(trainer) == "gpu" and not _cuda_devices():
        value = trainer.get("accelerator")
        return [
            Problem(
                "trainer.accelerator",
                f"`trainer.accelerator={value}`: this machine has no CUDA GPU; valid here: "
                "cpu or auto",
                "hardware",
            )
        ]
    return []


def check_precision(cfg: Mapping[str, Any]) -> list[Problem]:
    """Precisions the device cannot run (Lightning would silently substitute or crash)."""
    trainer = cfg["trainer"]
    precision = str(trainer.get("precision", "auto"))
    accelerator = _accelerator(trainer)
    key = "trainer.precision"
    if precision in ("16-mixed", "16-true") and accelerator == "cpu":
        return [
            Problem(
                key,
                f"`{key}={precision}`: float16 needs a CUDA GPU and the run is on the CPU "
                "(Lightning would silently switch 16-mixed to bf16-mixed); valid on CPU: auto, "
                "32-true, bf16-mixed, bf16-true, 64-true",
                "precision",
            )
        ]
    if precision == "transformer-engine":
        if accelerator != "gpu":
            return [
                Problem(
                    key,
                    f"`{key}=transformer-engine`: FP8 through NVIDIA Transformer Engine needs a "
                    "CUDA GPU (Hopper or newer); valid on this device: auto, 32-true, "
                    "bf16-mixed, bf16-true, 64-true",
                    "precision",
                )
            ]
        import importlib.util

        if importlib.util.find_spec("transformer_engine") is None:
            return [
                Problem(
                    key,
                    f"`{key}=transformer-engine` needs the transformer_engine package "
                    "(pip install transformer_engine); or use bf16-mixed",
                    "precision",
                )
            ]
    if precision.startswith("bf16") and accelerator == "gpu" and _cuda_devices():
        import torch

        if not torch.cuda.is_bf16_supported():
            return [
                Problem(
                    key,
                    f"`{key}={precision}`: this GPU ({torch.cuda.get_device_name(0)}) has no "
                    "bfloat16 support; valid: 32-true or 16-mixed",
                    "precision",
                )
            ]
    return []


def writable_problem(path: str | Path, key: str) -> Problem | None:
    """Why a directory cannot be created at ``path`` (None when it can), without creating
    anything: the nearest existing ancestor must be a writable directory."""
    path = Path(os.path.expandvars(str(path))).expanduser()
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return Problem(
            key,
            f"`{key}={path}`: cannot create the directory: {probe} is a file, not a directory",
            "output",
        )
    cause = None
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            cause = f"{probe} is on a read-only file system ({errno.errorcode[errno.EROFS]})"
    except OSError:
        pass
    if cause is None and not os.access(probe, os.W_OK | os.X_OK):
        cause = f"{probe} is not writable by this user ({errno.errorcode[errno.EACCES]})"
    if cause is None:
        return None
    return Problem(
        key,
        f"`{key}={path}`: cannot write the run directory there: {cause}; point paths.root "
        "(or ATTNEXP_OUTPUT_ROOT) at a writable folder",
        "output",
    )


def check_output(cfg: Mapping[str, Any]) -> list[Problem]:
    from attnexp.validation.resolve import UNRESOLVED_HYDRA

    paths = cfg["paths"]
    output = paths.get("output_dir")
    if output and output != UNRESOLVED_HYDRA:
        problem = writable_problem(output, "paths.output_dir")
    else:
        problem = writable_problem(paths["root"], "paths.root")
    return [problem] if problem else []
