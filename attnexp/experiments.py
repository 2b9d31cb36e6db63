"""Experiment presets and sweeps: discovery helpers and the one-GPU-per-job launcher callback.

Presets live in ``conf/experiment/<name>.yaml``. A preset that reproduces a paper table sweeps
``variant`` (or plain groups such as ``model`` and ``attention``) through
``hydra.sweeper.params``; each variant is a config ``conf/variant/<table>/<row>.yaml`` that
sets the attention/placement/conv overrides of one row of the table and its ``table.row`` /
``table.label`` (see docs/reproduce.md, "How a preset is built").
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

_CONF = "attnexp.conf"


def conf_dir() -> Path:
    """The package's config directory (``attnexp/conf``)."""
    return Path(str(resources.files(_CONF)))


def available_presets() -> list[str]:
    """Names accepted by ``experiment=<name>``."""
    return sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def preset_sweep(name: str) -> dict[str, str]:
    """The preset's ``hydra.sweeper.params`` (key -> comma-separated values), {} if none."""
    text = (conf_dir() / "experiment" / f"{name}.yaml").read_text()
    data = yaml.safe_load(text) or {}
    params = ((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return {str(k): _resolve(str(v)) for k, v in params.items()}


def _resolve(value: str) -> str:
    """A sweep value with its resolvers applied (``${attnexp_zoo_sweep:}`` -> the zoo)."""
    if "${" not in value:
        return value
    from omegaconf import OmegaConf

    from attnexp.zoo_configs import install

    install()
    return str(OmegaConf.create({"value": value}).value)


def split_sweep_values(values: str) -> list[str]:
    """``"a,b,[3,5],c"`` -> ``["a", "b", "[3,5]", "c"]`` (commas inside brackets kept)."""
    out, depth, cur = [], 0, ""
    for ch in values:
        if ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def expand_sweep(
    params: dict[str, str], group_options: dict[str, list[str]] | None = None
) -> list[list[str]]:
    """Every job of a sweep as a list of overrides (cartesian product, first key outermost).

    ``glob(*)`` values are expanded with ``group_options[key]`` (the options of that group).
    """
    axes: list[list[str]] = []
    for key, values in params.items():
        match = re.fullmatch(r"glob\((.*)\)", values.strip())
        if match:
            import fnmatch

            options = (group_options or {}).get(key)
            if options is None:
                raise ValueError(f"sweep of {key!r} uses glob(); pass the group's options")
            pats = split_sweep_values(match.group(1))
            chosen = [o for o in options if any(fnmatch.fnmatch(o, p) for p in pats)]
        else:
            chosen = split_sweep_values(values)
        axes.append([f"{key}={v}" for v in chosen])
    jobs: list[list[str]] = [[]]
    for axis in axes:
        jobs = [job + [item] for job in jobs for item in axis]
    return jobs


def group_options(group: str) -> list[str]:
    """Option names of a config group (``attention`` -> ``[a2, bam, ...]``): its YAML files
    and the nodes generated from the attention registry (:mod:`attnexp.zoo_configs`)."""
    from hydra.core.config_store import ConfigStore

    from attnexp.zoo_configs import install

    install()
    names = {p.stem for p in (conf_dir() / group).glob("*.yaml")}
    try:
        stored = ConfigStore.instance().list(group)
    except OSError:  # no generated node in this group
        stored = []
    names |= {n.removesuffix(".yaml") for n in stored if n.endswith(".yaml")}
    return sorted(n for n in names if not n.startswith("_"))


# ----------------------------------------------------------------------------- launcher
try:  # Hydra is a dependency, but keep this module importable without it for notebooks
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]

_held_slot: tuple[str, Any] | None = None  # (gpu id, open lock file) of this process


def _visible_gpus() -> list[str]:
    """GPU ids this process may use, without initialising CUDA."""
    env = os.environ.get("ATTNEXP_GPU_POOL") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def acquire_gpu_slot(
    gpus: list[str],
    jobs_per_gpu: int = 1,
    lock_dir: str | Path | None = None,
    wait_s: float = 600.0,
) -> str | None:
    """Lock one free (GPU, slot) pair for the lifetime of this process; returns the GPU id.

    A process keeps the GPU it got first (CUDA cannot move once started), so a joblib worker
    that runs several jobs stays on one device. The lock is an ``flock`` on
    ``<lock_dir>/gpu<id>-<slot>.lock``, released by the OS when the process exits.
    Returns None when there are no GPUs.
    """
    global _held_slot
    if _held_slot is not None:
        return _held_slot[0]
    if not gpus:
        return None
    where = Path(lock_dir) if lock_dir else Path(tempfile.gettempdir()) / "attnexp-gpu-locks"
    where.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for slot in range(jobs_per_gpu):
            for gpu in gpus:
                fh = open(where / f"gpu{gpu}-{slot}.lock", "a+")  # noqa: SIM115 (held open)
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.close()
                    continue
                _held_slot = (gpu, fh)
                return gpu
        if time.monotonic() > deadline:
            log.warning("attnexp: no free GPU slot after %.0fs; the job shares a GPU", wait_s)
            return None
        time.sleep(1.0)


class OneGpuPerJob(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback (``launcher=joblib``): pin each worker process to its own GPU.

    On job start, before CUDA is initialised in the worker, it sets ``CUDA_VISIBLE_DEVICES``
    to one GPU of the pool (the GPUs visible when the sweep started) that no other worker
    holds. ``jobs_per_gpu`` > 1 lets that many workers share each GPU (small CIFAR jobs).
    """

    def __init__(self, jobs_per_gpu: int = 1, lock_dir: str | None = None) -> None:
        if jobs_per_gpu < 1:
            raise ValueError(f"jobs_per_gpu must be >= 1, got {jobs_per_gpu}")
        self.jobs_per_gpu = jobs_per_gpu
        self.lock_dir = lock_dir

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        # Remember the pool in the environment the workers inherit.
        os.environ.setdefault("ATTNEXP_GPU_POOL", ",".join(_visible_gpus()))

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        gpu = acquire_gpu_slot(_visible_gpus(), self.jobs_per_gpu, self.lock_dir)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            log.info("attnexp: this job runs on GPU %s (CUDA_VISIBLE_DEVICES=%s)", gpu, gpu)
