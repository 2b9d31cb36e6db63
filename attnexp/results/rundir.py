"""The layout of a run directory, in one place.

::

    <run dir>/
      .hydra/config.yaml       the composed config (Hydra writes it; runs started outside
      .hydra/overrides.yaml    Hydra get config.yaml from attnexp.run)
      .hydra/hydra.yaml        Hydra's runtime (choices, overrides, job number)
      checkpoints/last.ckpt    after every epoch (and on SIGTERM): what resume continues
      checkpoints/best-epochNNN.ckpt   the best by validation top-1: what test/eval use
      csv/metrics.csv          the CSV log (csv/hparams.yaml: the logged config and names)
      metrics.json             the run record (:class:`~attnexp.results.record.RunRecord`)
      eval-<name>.json         records of later evaluations (attnexp-eval)
      attention_maps.png       pictures (the attention-map callback, attnexp-viz)
      wandb/                   wandb's files (offline runs: wandb/offline-run-*)

Every tool that reads or writes a run goes through :class:`RunDir` instead of typing these
names; the config files in ``conf/`` that place checkpoints and logs use the same names
(a test checks that they agree).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnexp.results.atomic import atomic_write_text
from attnexp.results.record import RunRecord

HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
HYDRA_FILE = f"{HYDRA_DIR}/hydra.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_PREFIX = "best"
CSV_DIR = "csv"
CSV_METRICS = "metrics.csv"
METRICS_FILE = "metrics.json"
EVAL_PREFIX = "eval-"
WANDB_DIR = "wandb"
ATTENTION_MAPS = "attention_maps.png"
#: Files or dirs whose presence makes a directory a run directory.
MARKERS: tuple[str, ...] = (METRICS_FILE, CONFIG_FILE)


@dataclass(frozen=True)
class RunDir:
    """A run directory (it need not exist yet). Paths are attributes; I/O are methods."""

    path: Path

    def __init__(self, path: str | Path | RunDir) -> None:
        object.__setattr__(self, "path", Path(path.path if isinstance(path, RunDir) else path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # -- layout ----------------------------------------------------------------------------
    @property
    def hydra_dir(self) -> Path:
        return self.path / HYDRA_DIR

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def overrides_file(self) -> Path:
        return self.path / OVERRIDES_FILE

    @property
    def hydra_file(self) -> Path:
        return self.path / HYDRA_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / LAST_CHECKPOINT

    @property
    def csv_dir(self) -> Path:
        return self.path / CSV_DIR

    @property
    def metrics_csv(self) -> Path:
        return self.csv_dir / CSV_METRICS

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def wandb_dir(self) -> Path:
        return self.path / WANDB_DIR

    @property
    def attention_maps(self) -> Path:
        return self.path / ATTENTION_MAPS

    def picture(self, name: str) -> Path:
        """Where a picture of this run called ``name`` (e.g. ``curves.png``) goes."""
        return self.path / name

    def eval_file(self, name: str) -> Path:
        """``eval-<name>.json``: one evaluation record (attnexp-eval)."""
        return self.path / f"{EVAL_PREFIX}{name}.json"

    def eval_files(self) -> list[Path]:
        return sorted(self.path.glob(f"{EVAL_PREFIX}*.json"))

    def best_checkpoints(self) -> list[Path]:
        """``best*.ckpt`` files, oldest first (by modification time, then name)."""
        found = self.checkpoint_dir.glob(f"{BEST_PREFIX}*.ckpt")
        return sorted(found, key=lambda f: (f.stat().st_mtime, f.name))

    def best_checkpoint(self) -> Path | None:
        """The newest best-by-validation checkpoint, or None."""
        best = self.best_checkpoints()
        return best[-1] if best else None

    def checkpoint(self, which: str = "best") -> Path | None:
        """``best`` (falling back to last) or ``last`` (falling back to best); None if none."""
        if which not in ("best", "last"):
            raise ValueError(f"which={which!r}: expected 'best' or 'last'")
        last = self.last_checkpoint if self.last_checkpoint.is_file() else None
        best = self.best_checkpoint()
        return (best or last) if which == "best" else (last or best)

    # -- what it holds ---------------------------------------------------------------------
    def is_run(self) -> bool:
        """Holds a run record or a saved config."""
        return any((self.path / marker).is_file() for marker in MARKERS)

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def has_record(self) -> bool:
        return self.metrics_file.is_file()

    def read_record(self) -> RunRecord:
        """The run record (migrated to the current schema). Raises OSError/ValueError."""
        return RunRecord.from_json(self.metrics_file.read_text())

    def read_record_dict(self) -> dict[str, Any]:
        """The run record as stored (JSON, not migrated)."""
        return json.loads(self.metrics_file.read_text())

    def write_record(self, record: RunRecord, overwrite: bool = False) -> Path:
        """Write ``metrics.json`` atomically; a second writer for the same run dir is an
        error (FileExistsError) unless ``overwrite``."""
        if self.metrics_file.exists() and not overwrite:
            raise FileExistsError(
                f"{self.metrics_file} already exists; a run directory holds exactly one run"
            )
        return atomic_write_text(self.metrics_file, record.to_json())

    def status(self) -> str | None:
        """The recorded status; None without a record, ``unreadable`` for a broken file."""
        if not self.metrics_file.is_file():
            return None
        try:
            return str(self.read_record_dict().get("status"))
        except (OSError, ValueError):
            return "unreadable"

    def overrides(self) -> list[str]:
        """The command-line overrides: Hydra's overrides.yaml, else the record's."""
        import yaml

        try:
            return [str(o) for o in yaml.safe_load(self.overrides_file.read_text()) or []]
        except (OSError, yaml.YAMLError):
            pass
        try:
            return [
                str(o) for o in (self.read_record_dict().get("hydra") or {}).get("overrides") or []
            ]
        except (OSError, ValueError):
            return []

    def load_config(self) -> Any:
        """The saved config (``.hydra/config.yaml``, else the record's ``config``) as an
        unresolved OmegaConf DictConfig; None when the run has neither."""
        from omegaconf import OmegaConf

        if self.config_file.is_file():
            return OmegaConf.load(self.config_file)
        try:
            config = self.read_record_dict().get("config")
        except (OSError, ValueError):
            return None
        return OmegaConf.create(config) if isinstance(config, dict) else None

    def save_config(self, cfg: Any) -> Path:
        """Write ``.hydra/config.yaml`` unless Hydra already did (runs started outside
        Hydra: tests, notebooks)."""
        from omegaconf import OmegaConf

        if not self.config_file.exists():
            atomic_write_text(self.config_file, OmegaConf.to_yaml(cfg))
        return self.config_file

    # -- finding runs ----------------------------------------------------------------------
    @classmethod
    def find(cls, root: str | Path) -> Iterator[RunDir]:
        """Run dirs at or below ``root`` (holding metrics.json or .hydra/config.yaml), in
        path order, each once."""
        root = Path(root)
        seen: set[Path] = set()
        hits: list[Path] = []
        for marker in MARKERS:
            for hit in root.rglob(marker):
                run = hit.parent if marker == METRICS_FILE else hit.parent.parent
                if run not in seen:
                    seen.add(run)
                    hits.append(run)
        for run in sorted(hits):
            yield cls(run)

    @classmethod
    def of(cls, path: str | Path) -> RunDir | None:
        """The run dir that ``path`` (a checkpoint, a CSV log, any file of a run, or the run
        dir itself) belongs to: the nearest ancestor that is a run; None if there is none."""
        p = Path(path).expanduser().resolve()
        for candidate in (p, *p.parents):
            if cls(candidate).is_run():
                return cls(candidate)
        return None
