"""What a run is and where it lives: the typed run record and the run directory layout.

* :class:`RunRecord` (:mod:`attnexp.results.record`): the record of one run, written to
  ``<run dir>/metrics.json`` (versioned JSON, ``RunRecord.to_dict`` / ``from_dict``; older
  schema versions are migrated on reading). ``record.attention`` is the full
  :class:`AttentionSpec` (module, options, placement, conv module and sites, extra
  placements); ``record.names`` the dashboard names (:class:`RunNames`).
* :class:`RunDir` (:mod:`attnexp.results.rundir`): the paths of a run (config, overrides,
  checkpoints, CSV log, metrics.json, eval records, pictures) and reading/writing them.
* :func:`run_names` (:mod:`attnexp.results.names`): group / name / tags of a run in a sweep.
* :func:`atomic_write_text`: crash-safe writes with the permissions the umask allows.

The lowest layer of the package, beside :mod:`attnexp.errors`: it imports nothing else of
attnexp.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from attnexp.results.atomic import atomic_write_bytes, atomic_write_text, default_file_mode
from attnexp.results.names import run_names
from attnexp.results.record import (
    SCHEMA_VERSION,
    AttentionSpec,
    BestMetrics,
    Costs,
    ErrorInfo,
    FinalMetrics,
    HydraInfo,
    ModuleSpec,
    RunNames,
    RunRecord,
    TestMetrics,
    Throughput,
    TrainingInfo,
    as_record,
    migrate,
)
from attnexp.results.rundir import METRICS_FILE, RunDir

__all__ = [
    "METRICS_FILE",
    "SCHEMA_VERSION",
    "AttentionSpec",
    "BestMetrics",
    "Costs",
    "ErrorInfo",
    "FinalMetrics",
    "HydraInfo",
    "ModuleSpec",
    "RunDir",
    "RunNames",
    "RunRecord",
    "TestMetrics",
    "Throughput",
    "TrainingInfo",
    "as_record",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_file_mode",
    "find_run_dirs",
    "migrate",
    "read_metrics",
    "run_names",
    "write_metrics",
]


def write_metrics(
    run_dir: str | Path, record: RunRecord | Mapping[str, Any], overwrite: bool = False
) -> Path:
    """Write the run record to ``<run_dir>/metrics.json`` (see :meth:`RunDir.write_record`)."""
    return RunDir(run_dir).write_record(as_record(record), overwrite=overwrite)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run record's JSON form, migrated to the current schema."""
    return migrate(json.loads(RunDir(run_dir).metrics_file.read_text()))


def find_run_dirs(root: str | Path) -> Iterator[Path]:
    """Paths of the run dirs below ``root`` (see :meth:`RunDir.find`)."""
    for run in RunDir.find(root):
        yield run.path
