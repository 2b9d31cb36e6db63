"""Paper-style tables from run directories (their ``metrics.json``) or from wandb.

>>> table = build_table(["outputs/cbam_table3_cifar/multirun/2026-..."])
>>> table.records()          # one dict per row, for notebooks / pandas
>>> print(table.to_markdown())

The package splits the job: :mod:`.collect` (runs from directories), :mod:`.wandb` (runs
from the wandb API or offline wandb files), :mod:`.stats` (mean ± std, Welch interval),
:mod:`.model` (rows, baselines, paper rows, mixing warnings), :mod:`.columns` (the one
column list) and :mod:`.render` (markdown, CSV, LaTeX, rich).
"""

from __future__ import annotations

from attnexp.analysis.table.collect import RunResult, collect, setting_from_overrides
from attnexp.analysis.table.columns import COLUMNS, Column, column
from attnexp.analysis.table.model import (
    METRICS,
    PaperTable,
    Row,
    aggregate,
    build_table,
    facets,
    mixing_warnings,
)
from attnexp.analysis.table.stats import Stat, WelchCI, welch_ci
from attnexp.analysis.table.wandb import (
    WandbRun,
    collect_runs,
    collect_wandb,
    collect_wandb_offline,
    read_offline_run,
    record_from_wandb,
)

__all__ = [
    "COLUMNS",
    "METRICS",
    "Column",
    "PaperTable",
    "Row",
    "RunResult",
    "Stat",
    "WandbRun",
    "WelchCI",
    "aggregate",
    "build_table",
    "collect",
    "collect_runs",
    "collect_wandb",
    "collect_wandb_offline",
    "column",
    "facets",
    "mixing_warnings",
    "read_offline_run",
    "record_from_wandb",
    "setting_from_overrides",
    "welch_ci",
]
