"""Loggers: a CSV log that survives resume, and a wandb logger that never stops a run.

* :class:`CSVLogger` writes ``<run dir>/csv/metrics.csv``. Lightning's own writer deletes an
  existing file; this one keeps it, so a resumed run appends to the same table, after
  dropping the rows of the steps that the resumed run computes again.
* :class:`WandbLogger` chooses its mode itself: ``WANDB_MODE`` if set, else online when an
  API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``),
  else offline with a hint to ``wandb sync`` later. An online start that fails (server
  unreachable, bad key, timeout) falls back to offline with a warning; the run goes on.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import netrc
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


# -- CSV ---------------------------------------------------------------------------------
class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer without the deletion of an existing ``metrics.csv``."""

    def __init__(self, log_dir: str, keep_until: tuple[int, int] | None) -> None:
        self._keep_until = keep_until
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
        if self._keep_until is not None:
            epoch, step = self._keep_until
            rows = [r for r in rows if _row_before(r, epoch, step)]
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = sorted(fields)

    def save(self) -> None:
        """Lightning's save, after taking in the columns already in the file: a writer that
        was copied into other processes (``ddp_spawn`` pickles the logger into its workers
        for fit and again for test) does not know the columns they added, and appending
        test rows with only its own header raised ``dict contains fields not in fieldnames``."""
        path = Path(self.metrics_file_path)
        if self.metrics and path.is_file():
            with open(path, newline="") as fh:
                on_disk = next(csv.reader(fh), [])
            merged = sorted(set(on_disk) | set(self.metrics_keys))
            if merged != on_disk:
                self._rewrite_with_new_header(merged)
            self.metrics_keys = merged
        super().save()


def _row_before(row: Mapping[str, str], epoch: int, step: int) -> bool:
    """A row logged before a checkpoint taken at (``epoch``, ``step``)."""

    def number(key: str) -> float | None:
        value = row.get(key)
        try:
            return float(value) if value not in (None, "") else None
        except ValueError:
            return None

    # Everything a checkpoint at global step G covers was logged at steps < G (epoch-end
    # rows use G - 1); the next epoch's first rows (lr at its start) carry step G.
    row_epoch, row_step = number("epoch"), number("step")
    if row_epoch is not None and row_epoch > epoch:
        return False
    return not (row_step is not None and row_step >= step)


class CSVLogger(_LightningCSVLogger):
    """``<save_dir>/<name>/metrics.csv`` (plus ``hparams.yaml`` with the resolved config)."""

    def __init__(
        self, save_dir: str | Path, name: str = "csv", version: str = "", **kwargs: Any
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)
        self._keep_until: tuple[int, int] | None = None

    def resume_from(self, epoch: int, step: int) -> None:
        """Keep only rows logged up to the checkpoint at (``epoch``, ``step``); later rows are
        logged again by the resumed run. Call before training starts."""
        self._keep_until = (int(epoch), int(step))

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._keep_until)
        return self._experiment


# -- wandb -------------------------------------------------------------------------------
MODES = ("auto", "online", "offline", "disabled")


def wandb_api_key_configured() -> bool:
    """Whether wandb could authenticate: ``WANDB_API_KEY`` or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_id_for(run_dir: str | Path) -> str:
    """A stable wandb run id per run dir, so a resumed run continues the same wandb run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with the mode chosen as described in the module docstring.

    ``mode``: auto | online | offline | disabled (``WANDB_MODE`` overrides it);
    ``init_timeout``: seconds an online start may take before falling back to offline.
    Other keyword arguments go to ``wandb.init`` (``group``, ``tags``, ``name``, ...).
    """

    def __init__(
        self,
        *,
        mode: str = "auto",
        init_timeout: float = 30.0,
        log_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"logger.wandb.mode must be one of {MODES}, got {mode!r}")
        if kwargs.get("id") is None and kwargs.get("version") is None and kwargs.get("save_dir"):
            kwargs["id"] = run_id_for(kwargs["save_dir"])
        # null names (conf/logger/wandb.yaml) are filled by attnexp.run; wandb.init wants
        # them absent rather than None
        for key in ("group", "tags", "job_type"):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        super().__init__(**kwargs)
        self._requested_mode = mode
        self._init_timeout = float(init_timeout)
        #: Upload the best checkpoint as a ``model`` artifact (``log_best_checkpoint``).
        self.log_checkpoint = bool(log_checkpoint)
        #: The mode the run actually started in (online | offline | disabled).
        self.mode: str | None = None

    def _choose_mode(self) -> str:
        env = os.environ.get("WANDB_MODE")
        if env:
            return {"dryrun": "offline", "run": "online"}.get(env, env)
        if self._requested_mode != "auto":
            return self._requested_mode
        return "online" if wandb_api_key_configured() else "offline"

    def _init(self, mode: str) -> Any:
        import wandb

        init = dict(self._wandb_init)
        settings = init.pop("settings", None) or wandb.Settings()
        settings.init_timeout = self._init_timeout
        return wandb.init(**init, mode=mode, settings=settings)

    def _start(self) -> Any:
        mode = self._choose_mode()
        if mode == "online":
            try:
                run = self._init("online")
            except Exception as err:  # unreachable server, bad key, timeout: keep training
                import wandb

                wandb.teardown()  # the failed attempt still holds the run id
                warnings.warn(
                    f"wandb could not start online ({type(err).__name__}: {err}); logging offline "
                    f"instead. Upload later with `wandb sync {self._save_dir}/wandb/offline-run-*`.",
                    stacklevel=2,
                )
                mode = "offline"
            else:
                self.mode = mode
                return run
        run = self._init(mode)
        self.mode = mode
        if mode == "offline":
            print(
                f"[attnexp] wandb is logging offline to {run.dir.rsplit('/files', 1)[0]} (no API key "
                f"or WANDB_MODE=offline); upload later with `wandb sync <that dir>`"
            )
        return run

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            import wandb

            attach_id = getattr(self, "_attach_id", None)
            if attach_id is not None and hasattr(wandb, "_attach"):
                # A copy in a ddp_spawn worker: join the run the main process started (one
                # wandb run per training, not one per process).
                self._experiment = wandb._attach(attach_id)
                return self._experiment
            if wandb.run is not None:  # a previous run of this process (sweep) was left open
                wandb.finish()
            self._experiment = self._start()
            if getattr(self._experiment, "define_metric", None):
                self._experiment.define_metric("trainer/global_step")
                self._experiment.define_metric(
                    "*", step_metric="trainer/global_step", step_sync=True
                )
        return self._experiment

    def log_summary(self, values: Mapping[str, Any]) -> None:
        """Put final numbers (test errors, params, MACs, status) in the run's summary."""
        if self._experiment is not None:
            self._experiment.summary.update(dict(values))

    def log_best_checkpoint(self, path: str | Path, metadata: Mapping[str, Any]) -> None:
        """The best checkpoint as a wandb ``model`` artifact (alias ``best``); offline runs
        keep it for ``wandb sync``."""
        if self._experiment is None:
            return
        import wandb

        artifact = wandb.Artifact(
            name=f"model-{self._experiment.id}", type="model", metadata=dict(metadata)
        )
        artifact.add_file(str(path), name=Path(path).name)
        self._experiment.log_artifact(artifact, aliases=["best", "latest"])

    def finish(self, exit_code: int = 0) -> None:
        """End the wandb run (flushes offline files); the next run of a sweep starts anew."""
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=exit_code)
        self._experiment = None
