"""Aggregate runs (their metrics.json) into rows: one row per setting, mean +- std over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnexp.results import METRICS_FILE, find_run_dirs, read_metrics

IGNORED_OVERRIDE_KEYS = {"seed"}


@dataclass
class RunResult:
    run_dir: Path
    status: str
    setting: str
    seed: int | None
    record: dict[str, Any] = field(default_factory=dict)


def _setting_of(record: dict[str, Any]) -> str:
    overrides = record.get("hydra", {}).get("overrides", [])
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in IGNORED_OVERRIDE_KEYS]
    return " ".join(kept) or f"attention={record.get('attention', '?')}"


def collect(paths: Iterable[str | Path]) -> list[RunResult]:
    """Every run below ``paths``; runs without metrics.json are kept with status 'missing'."""
    runs = []
    for path in paths:
        for run_dir in find_run_dirs(path):
            if (run_dir / METRICS_FILE).exists():
                rec = read_metrics(run_dir)
                runs.append(RunResult(run_dir, rec.get("status", "completed"), _setting_of(rec), rec.get("seed"), rec))
            else:
                runs.append(RunResult(run_dir, "missing", run_dir.name, None))
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Rows in first-seen order: setting, n, params, MACs, top-1/top-5 test error mean/std."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.setting, []).append(run)
    rows = []
    for setting, members in groups.items():
        done = [r for r in members if r.status == "completed" and r.record.get("test", {}).get("top1_err") is not None]
        top1 = [r.record["test"]["top1_err"] for r in done]
        top5 = [r.record["test"]["top5_err"] for r in done]
        costs = done[0].record.get("costs", {}) if done else {}
        rows.append(
            {
                "setting": setting,
                "n": len(done),
                "failed": len(members) - len(done),
                "params": costs.get("params"),
                "macs": costs.get("macs"),
                "top1": mean_std(top1),
                "top5": mean_std(top5),
            }
        )
    return rows
