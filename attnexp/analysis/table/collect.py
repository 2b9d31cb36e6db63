"""Collecting runs for a table: run directories (their typed records) and sweeps' expectations.

Every run becomes a :class:`RunResult`: its typed record, its *setting* (the overrides that
define its row: the seed and bookkeeping keys removed) and a status. Runs that left no
record are kept (``missing``) and jobs a multirun asked for but never started are added
(``not_started``), so a table never silently drops a seed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnexp.errors import ConfigError
from attnexp.results import RunDir, RunRecord
from attnexp.results.names import MULTIRUN_FILE, is_ignored

#: Config keys of the ``table`` node that presets resolve into each run's config.
TABLE_KEYS: tuple[str, ...] = ("reference", "row", "label", "baseline", "protocol")


@dataclass
class RunResult:
    """One run (or one expected run that left nothing behind)."""

    run_dir: Path | str
    status: str  # completed | failed | interrupted | missing (no metrics.json) | not_started
    setting: dict[str, str]  # the run's overrides minus seed and bookkeeping keys
    seed: int | None
    record: RunRecord | None = None
    table: dict[str, Any] = field(default_factory=dict)  # the config's resolved `table` node
    order: tuple[Any, ...] = ()  # (source index, sweep dir, job number) for stable ordering
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.record is not None


def _strip(key: str) -> str:
    return key.lstrip("+~")


def setting_from_overrides(overrides: Sequence[str], ignore: Iterable[str] = ()) -> dict[str, str]:
    """``["variant=a/b", "seed=1", "+debug=smoke"]`` -> ``{"variant": "a/b", "debug": "smoke"}``."""
    extra = set(ignore)
    out: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        if not is_ignored(key) and _strip(key) not in extra:
            out[_strip(key)] = value
    return out


def resolve_table_node(cfg: Any) -> dict[str, Any]:
    """The ``table`` node of a saved (possibly unresolved) config, best effort."""
    from omegaconf import OmegaConf

    if cfg is None:
        return {}
    if not OmegaConf.is_config(cfg) and not isinstance(cfg, Mapping):
        return {}
    if "table" not in cfg:
        return {}
    conf = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(dict(cfg))
    out: dict[str, Any] = {}
    for key in TABLE_KEYS:
        try:
            value = OmegaConf.select(conf, f"table.{key}", throw_on_resolution_failure=True)
        except Exception:  # an interpolation into hydra: runtime values; keep it raw
            value = OmegaConf.select(conf, f"table.{key}", throw_on_resolution_failure=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=False)
        out[key] = value
    return out


def run_from_record(run_dir: Path | str, record: RunRecord, ignore: Iterable[str]) -> RunResult:
    """A :class:`RunResult` from a typed record (read from disk or rebuilt from wandb)."""
    overrides = list(record.hydra.overrides)
    setting = setting_from_overrides(overrides, ignore)
    table = resolve_table_node(record.config)
    if not overrides:  # not started by Hydra (tests, notebooks): fall back to what ran
        if table.get("label") is not None:
            setting = {"label": str(table["label"])}
        else:  # the full description, so conv modules and extra placements keep their rows
            setting = {"model": str(record.model), "attention": record.attention.label()}
    status, note = record.status, ""
    if status == "completed" and record.test.top1_err is None and record.best.val_top1_err is None:
        status, note = "failed", "completed without any error rate"
    if record.error is not None:
        message = record.error.message.strip().splitlines()
        note = f"{record.error.type}: {message[0][:200] if message else ''}"
        if record.error.hint:
            note += f"; {record.error.hint}"
    return RunResult(run_dir, status, setting, record.seed, record, table, note=note)


def _run_without_record(run: RunDir, ignore: Iterable[str]) -> RunResult:
    """A run dir with Hydra's .hydra/ files but no metrics.json: crashed or still running."""
    overrides = run.overrides()
    cfg: dict[str, Any] = {}
    with contextlib.suppress(OSError, yaml.YAMLError):
        cfg = yaml.safe_load(run.config_file.read_text()) or {}
    seed = None
    for item in overrides:
        key, _, value = item.partition("=")
        if _strip(key) == "seed":
            seed = int(value) if value.isdigit() else None
    if seed is None and isinstance(cfg.get("seed"), int):
        seed = cfg["seed"]
    return RunResult(
        run_dir=run.path,
        status="missing",
        setting=setting_from_overrides(overrides, ignore),
        seed=seed,
        table=resolve_table_node(cfg),
        note="no metrics.json (crashed, killed or still running)",
    )


def _expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The jobs a multirun was asked for, from its ``multirun.yaml`` (None if unknown)."""
    from attnexp.experiments import expand_sweep, group_options

    path = sweep_dir / MULTIRUN_FILE
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
        hydra = data.get("hydra") or {}
        params: dict[str, str] = {
            str(k): str(v) for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()
        }
        for item in (hydra.get("overrides") or {}).get("task") or []:
            key, value = str(item).split("=", 1)
            params.pop(_strip(key), None)
            params[key] = value
        if any(
            re.match(r"\s*(range|choice|interval|tag|sort|shuffle)\(", v) for v in params.values()
        ):
            return None
        options = {
            _strip(k): group_options(_strip(k))
            for k, v in params.items()
            if v.strip().startswith("glob(")
        }
        return expand_sweep(params, options)
    except Exception:  # an unusual sweep: skip the completeness check, never fail the table
        return None


def _read(run: RunDir, ignore: Iterable[str]) -> RunResult:
    if not run.has_record():
        return _run_without_record(run, ignore)
    try:
        record = run.read_record()
    except (OSError, ValueError, TypeError) as err:
        result = _run_without_record(run, ignore)
        result.status, result.note = "failed", f"unreadable metrics.json: {err}"
        return result
    return run_from_record(run.path, record, ignore)


def _not_started(sweep_dir: Path, found: list[RunResult], index: int, ignore: Iterable[str]):
    expected = _expected_jobs(sweep_dir)
    if expected is None:
        return []
    mine = [r for r in found if Path(r.run_dir).parent == sweep_dir]
    have = {frozenset(r.record.hydra.overrides) for r in mine if r.record is not None}
    have |= {frozenset(RunDir(r.run_dir).overrides()) for r in mine}
    missing = []
    for job_num, job in enumerate(expected):
        if frozenset(job) in have:
            continue
        seed = next((o.split("=", 1)[1] for o in job if _strip(o.split("=")[0]) == "seed"), None)
        missing.append(
            RunResult(
                run_dir=sweep_dir / f"<job {job_num}>",
                status="not_started",
                setting=setting_from_overrides(job, ignore),
                seed=int(seed) if seed is not None and seed.isdigit() else None,
                order=(index, str(sweep_dir), job_num),
                note="asked for by the sweep, but no run directory exists",
            )
        )
    return missing


def collect(paths: Iterable[str | Path], ignore: Iterable[str] = ()) -> list[RunResult]:
    """Every run below ``paths``, in sweep order. Runs without metrics.json are kept with
    status ``missing``; jobs of a multirun that never started are added as ``not_started``."""
    ignore = tuple(ignore)
    runs: list[RunResult] = []
    for index, path in enumerate(paths):
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        found: list[RunResult] = []
        for run in RunDir.find(path):
            result = _read(run, ignore)
            job = result.record.hydra.job_num if result.record is not None else None
            if not isinstance(job, int):
                job = int(run.path.name) if run.path.name.isdigit() else 0
            result.order = (index, str(run.path.parent), job)
            found.append(result)
        for sweep_dir in sorted({p.parent for p in path.rglob(MULTIRUN_FILE)}):
            found += _not_started(sweep_dir, found, index, ignore)
        runs.extend(sorted(found, key=lambda r: r.order))
    return runs
