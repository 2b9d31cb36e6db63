"""What this machine has against what the config asks for, and where a process sits in a run.

A request for hardware that is not there fails in Lightning only after the data is loaded
(38 s for a GPU run on a CPU machine), with a traceback that does not say what the machine
has. :func:`check_hardware` answers first, from the config alone, with a ConfigError that
names the machine's devices. :func:`apply_global_batch` turns ``data.global_batch`` (the
papers' 256, fixed whatever the device count) into the per-device ``data.batch_size``.

Multirun + DDP: Lightning's ``ddp`` on one node starts ranks 1..N-1 by re-executing the
command line; inside a Hydra sweep that re-runs the whole sweep once per extra rank.
:class:`RefuseMultirunDdp` (a Hydra callback of ``launcher=local`` and ``launcher=joblib``)
refuses such a sweep before its first job, and :func:`check_not_reexecuting_sweep` refuses it
again per job for sweeps whose strategy only a preset sets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.errors import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")
#: Strategies whose extra ranks Lightning starts by re-running the command (one node).
REEXECUTING = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
#: Strategies that fork/spawn workers from inside the job: safe in a sweep.
IN_PROCESS = ("ddp_spawn", "ddp_fork", "ddp_notebook")

WHAT_WORKS = (
    "what works: launcher=slurm (one SLURM job per run; srun starts its ranks, so nothing is "
    "re-executed), launcher=joblib with one device per job (trainer.devices=1, "
    "hydra.launcher.n_jobs=<GPUs>), or trainer.strategy=ddp_spawn (each job spawns its ranks "
    "itself); or drop -m and start each run on its own"
)


def cuda_devices() -> int:
    """CUDA devices visible to this process (no CUDA context is created)."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken driver counts as no GPU
        return 0


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def machine() -> str:
    """One phrase for messages: ``2 CPU cores and no CUDA GPU``."""
    gpus = cuda_devices()
    gpu_text = f"{gpus} CUDA GPU{'s' if gpus != 1 else ''}" if gpus else "no CUDA GPU"
    return f"{cpu_cores()} CPU cores and {gpu_text}"


def _accelerator(trainer: Mapping[str, Any]) -> str:
    """The accelerator Lightning will use: ``auto`` becomes gpu when a GPU is visible."""
    name = str(trainer.get("accelerator", "auto"))
    if name == "auto":
        return "gpu" if cuda_devices() else "cpu"
    return "gpu" if name in GPU_ACCELERATORS else name


def devices_per_node(trainer: Mapping[str, Any]) -> int:
    """How many processes (devices) one node runs: ``trainer.devices`` resolved."""
    devices = trainer.get("devices", 1)
    accelerator = _accelerator(trainer)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices != "auto":
        ids = [d for d in devices.split(",") if d.strip()]
        # "2" means two devices, "1,3" the devices with ids 1 and 3 (Lightning's parsing)
        return int(ids[0]) if len(ids) == 1 and "," not in devices else len(ids)
    if devices in ("auto", -1):
        return max(cuda_devices(), 1) if accelerator == "gpu" else 1
    return int(devices)


def world_size(cfg: DictConfig | Mapping[str, Any]) -> int:
    """Processes of the whole run: devices per node x nodes."""
    trainer = cfg.get("trainer") or {}
    return devices_per_node(trainer) * int(trainer.get("num_nodes", 1) or 1)


def check_hardware(cfg: DictConfig | Mapping[str, Any]) -> None:
    """ConfigError when the config asks for devices this machine does not have, or for DDP
    with a single process. Run before any data is loaded."""
    trainer = cfg.get("trainer") or {}
    requested = str(trainer.get("accelerator", "auto"))
    accelerator = _accelerator(trainer)
    if accelerator == "gpu" and cuda_devices() == 0:
        raise ConfigError(
            f"trainer.accelerator={requested} but this machine has {machine()} (PyTorch sees "
            "no CUDA device). Use trainer.accelerator=cpu (or auto), or run on a GPU node"
        )
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)) and accelerator == "gpu":
        missing = [d for d in devices if int(d) >= cuda_devices()]
        if missing:
            raise ConfigError(
                f"trainer.devices={list(devices)} names GPU id(s) {missing}, but this machine "
                f"has {machine()} (ids 0..{cuda_devices() - 1})"
            )
    wanted = devices_per_node(trainer)
    have = cuda_devices() if accelerator == "gpu" else cpu_cores()
    unit = "CUDA GPUs" if accelerator == "gpu" else "CPU cores (one process each)"
    if accelerator in ("gpu", "cpu") and wanted > have:
        raise ConfigError(
            f"trainer.devices={devices} asks for {wanted} {unit} per node, but this machine has "
            f"{machine()}. Use trainer.devices<={have}"
            + ("" if accelerator == "gpu" else " (several nodes: trainer.num_nodes)")
        )
    strategy = str(trainer.get("strategy", "auto"))
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if strategy.startswith("ddp") and wanted * nodes < 2:
        raise ConfigError(
            f"trainer.strategy={strategy} with trainer.devices={devices} and "
            f"trainer.num_nodes={nodes} is a single process: DDP needs at least 2. Set "
            f"trainer.devices=N (this machine has {machine()}) or drop trainer.strategy"
        )


def apply_global_batch(cfg: DictConfig) -> None:
    """``data.global_batch`` (images per optimizer step over all devices) sets the per-device
    ``data.batch_size`` = global / (world size x gradient accumulation); null leaves
    ``data.batch_size`` as the per-device batch."""
    data = cfg.get("data") or {}
    global_batch = data.get("global_batch")
    if global_batch is None:
        return
    world = world_size(cfg)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1) or 1)
    share = world * accumulate
    if int(global_batch) % share:
        raise ConfigError(
            f"data.global_batch={global_batch} is not divisible by world size {world} x "
            f"trainer.accumulate_grad_batches={accumulate}; choose a global batch that is a "
            f"multiple of {share} (or set data.global_batch=null and data.batch_size per device)"
        )
    with open_dict(cfg):
        cfg.data.batch_size = int(global_batch) // share


def env_global_rank(devices: int) -> int | None:
    """This process's global rank from the launcher's environment (torchrun: RANK; SLURM:
    SLURM_PROCID; Lightning's own launcher: NODE_RANK x devices + LOCAL_RANK), or None
    outside a distributed launch. Lightning knows the rank only once the trainer is set up;
    a run needs it earlier (the loggers' config, the run dir)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        return int(env["SLURM_PROCID"])
    if "NODE_RANK" in env or "GROUP_RANK" in env:
        node = int(env.get("NODE_RANK", env.get("GROUP_RANK", 0)))
        return node * devices + int(env.get("LOCAL_RANK", 0))
    return None


def sync_rank_zero_only(cfg: DictConfig) -> None:
    """Tell Lightning's ``rank_zero_only`` this process's global rank before the trainer
    exists (node 1's local rank 0 would otherwise act as rank 0: a second wandb run, a
    second summary line)."""
    rank = env_global_rank(devices_per_node(cfg.get("trainer") or {}))
    if rank is None:
        return
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only.rank = rank


# -- multirun + DDP ----------------------------------------------------------------------
def reexecutes_command(trainer: Mapping[str, Any]) -> bool:
    """Whether Lightning would start this run's extra ranks by re-running the command line
    (``ddp`` / ``auto`` with several processes and no external launcher)."""
    strategy = str(trainer.get("strategy", "auto"))
    processes = devices_per_node(trainer) * int(trainer.get("num_nodes", 1) or 1)
    if strategy in IN_PROCESS or processes < 2:
        return False
    if strategy != "auto" and strategy not in REEXECUTING:
        return False
    return not _external_launcher()


def _external_launcher() -> bool:
    """torchrun (RANK + LOCAL_RANK + WORLD_SIZE) or srun (SLURM_NTASKS > 1) started the ranks."""
    env = os.environ
    if {"RANK", "LOCAL_RANK", "WORLD_SIZE"} <= set(env):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env


def _sweep_values(overrides: list[str], key: str) -> list[Any]:
    """Values a command line gives ``key`` (several for a sweep ``key=a,b``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values: list[Any] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.get_key_element() != key:
            continue
        values = (
            list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        )
    return values


def multirun_ddp_problem(config: DictConfig) -> str | None:
    """Why this multirun would re-execute itself under DDP (None: it would not).

    Looks at the composed config and at the values the command line sweeps for
    ``trainer.strategy`` / ``devices`` / ``num_nodes``."""
    trainer = OmegaConf.to_container(config.trainer, resolve=True) if "trainer" in config else {}
    overrides = list(OmegaConf.select(config, "hydra.overrides.task") or [])
    axes = {
        k: _sweep_values(overrides, f"trainer.{k}") for k in ("strategy", "devices", "num_nodes")
    }
    combos: list[dict[str, Any]] = [dict(trainer)]
    for key, values in axes.items():
        if values:
            combos = [{**c, key: v} for c in combos for v in values]
    for combo in combos:
        if reexecutes_command(combo):
            return (
                f"a multirun (-m) with trainer.strategy={combo.get('strategy')} and "
                f"trainer.devices={combo.get('devices')} (num_nodes={combo.get('num_nodes', 1)}) "
                "would make Lightning re-run the whole sweep once per extra process (DDP starts "
                f"its ranks by re-executing the command line). Nothing was run; {WHAT_WORKS}"
            )
    return None


def check_not_reexecuting_sweep(cfg: DictConfig, multirun: bool) -> None:
    """Per-job guard: refuse a job of a multirun whose trainer would re-execute the command."""
    if multirun and reexecutes_command(cfg.get("trainer") or {}):
        trainer = cfg.trainer
        raise ConfigError(
            f"this job of a multirun asks for trainer.strategy={trainer.get('strategy')} with "
            f"trainer.devices={trainer.get('devices')}: Lightning would re-run the whole sweep "
            f"per extra process. {WHAT_WORKS}"
        )


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - Hydra is a dependency
    _HydraCallback = object  # type: ignore[assignment,misc]


def launcher_problem(config: DictConfig) -> str | None:
    """What is wrong with the launcher's own settings (None: nothing we know of).

    joblib reads ``n_jobs=0`` as nothing to run in parallel and fails deep inside the
    launcher; say so before the sweep starts."""
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if n_jobs is None:
        return None
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
        return (
            f"hydra.launcher.n_jobs={n_jobs!r}: the number of jobs run in parallel must be a "
            "positive integer (e.g. the number of GPUs), or negative to count back from the "
            "CPUs (-1 = one job per CPU). Nothing was run."
        )
    return None


class RefuseMultirunDdp(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback: stop a multirun that cannot run as configured before its first job
    (message on stderr, exit code 2: a config error): one that would re-execute itself under
    DDP, or a launcher setting the launcher would reject mid-sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = multirun_ddp_problem(config) or launcher_problem(config)
        if problem:
            sys.stderr.write(f"attnexp-train: config error: {problem}\n")
            sys.stderr.flush()
            sys.exit(2)
