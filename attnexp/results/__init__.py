"""The run record that every later tool reads: ``<run dir>/metrics.json``.

Written atomically (temporary file + rename), so a crash never leaves half a record, and
never silently replaced: a second writer for the same run dir is an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
SCHEMA_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(run_dir: str | Path, record: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write the run record; refuses to replace an existing one unless ``overwrite``."""
    path = Path(run_dir) / METRICS_FILE
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; a run directory holds exactly one run")
    payload = {"schema_version": SCHEMA_VERSION, **record}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def find_run_dirs(root: str | Path) -> Iterator[Path]:
    """Run dirs below ``root``: directories holding ``.hydra/config.yaml`` or metrics.json."""
    root = Path(root)
    seen: set[Path] = set()
    for marker in ("metrics.json", ".hydra/config.yaml"):
        for hit in sorted(root.rglob(marker)):
            run = hit.parent if marker == "metrics.json" else hit.parent.parent
            if run not in seen:
                seen.add(run)
                yield run
