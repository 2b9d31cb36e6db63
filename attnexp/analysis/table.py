"""Paper-style tables from run directories (their ``metrics.json``) or from wandb.

One row per setting (the swept overrides of a run, seed ignored) with the mean ± sample std
over seeds of top-1/top-5 error, params and MACs, the difference to the row's baseline with
a 95% Welch confidence interval, and the published numbers beside ours.

>>> table = build_table(["outputs/cbam_table3_cifar/multirun/2026-..."])
>>> table.records()          # one dict per row, for notebooks / pandas
>>> print(table.to_markdown())

How a row finds its label, baseline and published numbers: presets carry a ``table`` node
(``reference``, ``row``, ``label``, ``baseline``), resolved into each run's metrics.json
(see docs/reproduce.md). Runs without it (ad-hoc sweeps) are labelled by their swept values
and compared against ``attention=none`` when the sweep has that row.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnexp.analysis.reference import ReferenceRow, ReferenceTable, reference_table
from attnexp.errors import ConfigError
from attnexp.results import METRICS_FILE, find_run_dirs, read_metrics

#: Override keys that never define a row: seeds (averaged over) and where/how runs ran.
IGNORED_KEYS: frozenset[str] = frozenset({"seed", "launcher", "resume"})
IGNORED_PREFIXES: tuple[str, ...] = ("hydra.", "paths.")
METRICS = ("test", "val")


# --------------------------------------------------------------------------- run records
@dataclass
class RunResult:
    """One run (or one expected run that left nothing behind)."""

    run_dir: Path | str
    status: str  # completed | failed | interrupted | missing (no metrics.json) | not_started
    setting: dict[str, str]  # the run's overrides minus seed and bookkeeping keys
    seed: int | None
    record: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)  # the config's resolved `table` node
    order: tuple[Any, ...] = ()  # (source index, sweep dir, job number) for stable ordering
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def _strip(key: str) -> str:
    return key.lstrip("+~")


def _is_ignored(key: str, extra: Iterable[str] = ()) -> bool:
    key = _strip(key)
    return key in IGNORED_KEYS or key in set(extra) or key.startswith(IGNORED_PREFIXES)


def setting_from_overrides(overrides: Sequence[str], ignore: Iterable[str] = ()) -> dict[str, str]:
    """``["variant=a/b", "seed=1", "+debug=smoke"]`` -> ``{"variant": "a/b", "debug": "smoke"}``."""
    out: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        if not _is_ignored(key, ignore):
            out[_strip(key)] = value
    return out


def _job_number(run_dir: Path, record: Mapping[str, Any]) -> int:
    num = (record.get("hydra") or {}).get("job_num")
    if isinstance(num, int):
        return num
    return int(run_dir.name) if run_dir.name.isdigit() else 0


def _resolve_table_node(cfg: Any) -> dict[str, Any]:
    """The ``table`` node of a saved (possibly unresolved) config, best effort."""
    from omegaconf import OmegaConf

    if not isinstance(cfg, Mapping) or "table" not in cfg:
        return {}
    conf = OmegaConf.create(dict(cfg))
    out: dict[str, Any] = {}
    for key in ("reference", "row", "label", "baseline", "protocol"):
        try:
            value = OmegaConf.select(conf, f"table.{key}", throw_on_resolution_failure=True)
        except Exception:  # an interpolation into hydra: runtime values; keep it raw
            value = OmegaConf.select(conf, f"table.{key}", throw_on_resolution_failure=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=False)
        out[key] = value
    return out


def _run_from_record(run_dir: Path, record: dict[str, Any], ignore: Iterable[str]) -> RunResult:
    hydra = record.get("hydra") or {}
    overrides = list(hydra.get("overrides") or [])
    setting = setting_from_overrides(overrides, ignore)
    table = _resolve_table_node(record.get("config") or {})
    if not overrides:  # not started by Hydra (tests, notebooks, wandb): fall back to what ran
        if table.get("label") is not None:
            setting = {"label": str(table["label"])}
        else:
            setting = {"model": str(record.get("model")), "attention": str(record.get("attention"))}
    status = str(record.get("status", "completed"))
    note = ""
    no_error_rate = (record.get("test") or {}).get("top1_err") is None and (
        record.get("best") or {}
    ).get("val_top1_err") is None
    if status == "completed" and no_error_rate:
        status, note = "failed", "completed without any error rate"
    error = record.get("error")
    if isinstance(error, Mapping):
        message = str(error.get("message", "")).strip().splitlines()
        note = f"{error.get('type', 'error')}: {message[0][:200] if message else ''}"
        if error.get("hint"):
            note += f"; {error['hint']}"
    return RunResult(
        run_dir=run_dir,
        status=status,
        setting=setting,
        seed=record.get("seed"),
        record=record,
        table=table,
        note=note,
    )


def _run_without_record(run_dir: Path, ignore: Iterable[str]) -> RunResult:
    """A run dir with Hydra's .hydra/ files but no metrics.json: crashed or still running."""
    overrides = _overrides_on_disk(run_dir)
    cfg: dict[str, Any] = {}
    with contextlib.suppress(OSError, yaml.YAMLError):
        cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    seed = None
    for item in overrides:
        if _strip(item.split("=", 1)[0]) == "seed":
            seed = int(item.split("=", 1)[1]) if item.split("=", 1)[1].isdigit() else None
    if seed is None and isinstance(cfg.get("seed"), int):
        seed = cfg["seed"]
    return RunResult(
        run_dir=run_dir,
        status="missing",
        setting=setting_from_overrides(overrides, ignore),
        seed=seed,
        table=_resolve_table_node(cfg),
        note="no metrics.json (crashed, killed or still running)",
    )


def _expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The jobs a multirun was asked for, from its ``multirun.yaml`` (None if unknown)."""
    from attnexp.experiments import expand_sweep, group_options

    path = sweep_dir / "multirun.yaml"
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
        for run_dir in find_run_dirs(path):
            if (run_dir / METRICS_FILE).exists():
                try:
                    record = read_metrics(run_dir)
                except (OSError, json.JSONDecodeError) as err:
                    run = _run_without_record(run_dir, ignore)
                    run.status, run.note = "failed", f"unreadable metrics.json: {err}"
                else:
                    run = _run_from_record(run_dir, record, ignore)
            else:
                run = _run_without_record(run_dir, ignore)
            run.order = (index, str(run_dir.parent), _job_number(run_dir, run.record))
            found.append(run)
        # jobs a multirun asked for that left no directory at all
        for sweep_dir in sorted({p.parent for p in path.rglob("multirun.yaml")}):
            expected = _expected_jobs(sweep_dir)
            if expected is None:
                continue
            have = {
                frozenset((r.record.get("hydra") or {}).get("overrides") or [])
                for r in found
                if Path(r.run_dir).parent == sweep_dir
            }
            have |= {
                frozenset(_overrides_on_disk(Path(r.run_dir)))
                for r in found
                if Path(r.run_dir).parent == sweep_dir
            }
            for job_num, job in enumerate(expected):
                if frozenset(job) in have:
                    continue
                seed = next(
                    (o.split("=", 1)[1] for o in job if _strip(o.split("=")[0]) == "seed"), None
                )
                found.append(
                    RunResult(
                        run_dir=sweep_dir / f"<job {job_num}>",
                        status="not_started",
                        setting=setting_from_overrides(job, ignore),
                        seed=int(seed) if seed is not None and seed.isdigit() else None,
                        order=(index, str(sweep_dir), job_num),
                        note="asked for by the sweep, but no run directory exists",
                    )
                )
        runs.extend(sorted(found, key=lambda r: r.order))
    return runs


def _overrides_on_disk(run_dir: Path) -> list[str]:
    try:
        return list(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def collect_wandb(
    project: str, group: str | None = None, ignore: Iterable[str] = ()
) -> list[RunResult]:
    """Runs of a wandb project (``entity/project``), optionally one group, read from the API.

    Uses the run's uploaded ``metrics.json`` when it has one (the same record as on disk),
    otherwise rebuilds the fields from the run's config and summary. Needs network access
    and a wandb login; raises ConfigError with what to do otherwise.
    """
    import tempfile

    try:
        import wandb

        api = wandb.Api(timeout=30)
        found = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as err:
        raise ConfigError(
            f"cannot read runs of wandb project {project!r}"
            + (f" group {group!r}" if group else "")
            + f" ({type(err).__name__}: {err}). attnexp-table --wandb needs network access and "
            "a wandb login (`wandb login` or WANDB_API_KEY); offline, pass the run or sweep "
            "directories instead"
        ) from None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, wrun in enumerate(found):
            record: dict[str, Any] | None = None
            try:
                path = wrun.file(METRICS_FILE).download(root=f"{tmp}/{wrun.id}", replace=True).name
                record = json.loads(Path(path).read_text())
            except Exception:
                record = None
            if record is None:
                record = _record_from_wandb(wrun)
            run = _run_from_record(Path(f"wandb:{project}/{wrun.id}"), record, ignore)
            if wrun.state != "finished" and run.status == "completed":
                run.status = _wandb_status(wrun.state)
                run.note = f"wandb run state {wrun.state!r}"
            run.order = (0, group or "", i)
            runs.append(run)
    return runs


def _wandb_status(state: str) -> str:
    """A wandb run state as a metrics.json status."""
    if state == "finished":
        return "completed"
    return "failed" if state in ("crashed", "failed", "killed") else "missing"


def _record_from_wandb(wrun: Any) -> dict[str, Any]:
    """The metrics.json fields attnexp-table needs, from a wandb run's config and summary."""
    summary = dict(wrun.summary)
    logged = dict(wrun.config)
    config = dict(logged.get("config") or logged)  # attnexp logs {"config": ..., "costs": ...}

    def get(*keys: str) -> Any:
        for key in keys:
            if summary.get(key) is not None:
                return summary[key]
        return None

    return {
        "status": _wandb_status(wrun.state),
        "seed": config.get("seed"),
        "model": (config.get("model") or {}).get("name"),
        "attention": (config.get("attention") or {}).get("name"),
        "test": {"top1_err": get("test/top1_err"), "top5_err": get("test/top5_err")},
        "best": {"val_top1_err": get("val/top1_err_best", "best/val_top1_err")},
        "final": {"val_top1_err": get("val/top1_err"), "val_top5_err": get("val/top5_err")},
        "costs": {"params": get("costs/params", "params"), "macs": get("costs/macs", "macs")},
        "hydra": {"overrides": list(logged.get("overrides") or [])},
        "config": config,
    }


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) over the completed runs of a row."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class WelchCI:
    """Confidence interval of mean(a) - mean(b) by Welch's t (unequal variances)."""

    diff: float
    low: float
    high: float
    df: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchCI | None:
    """CI of ``mean(a) - mean(b)``: diff ± t_{(1+c)/2, df} * sqrt(s_a²/n_a + s_b²/n_b), with the
    Welch–Satterthwaite df. None when either side has fewer than 2 values."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    na, nb = len(a), len(b)
    va, vb = statistics.variance(a), statistics.variance(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se2 = va / na + vb / nb
    if se2 == 0.0:  # both sides constant: the interval collapses onto the difference
        return WelchCI(diff, diff, diff, math.inf, confidence)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * math.sqrt(se2)
    return WelchCI(diff, diff - half, diff + half, df, confidence)


# --------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One line of the table."""

    label: str
    setting: dict[str, str]
    runs: list[RunResult]
    top1: Stat
    top5: Stat
    params: int | None
    macs: int | None
    dataset: str | None
    baseline: Row | None = None
    is_baseline: bool = False
    ci: WelchCI | None = None
    reference: ReferenceTable | None = None
    ref_row: ReferenceRow | None = None
    ref_baseline: ReferenceRow | None = None

    @property
    def n(self) -> int:
        return self.top1.n

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for run in self.runs:
            out[run.status] = out.get(run.status, 0) + 1
        return out

    @property
    def problems(self) -> list[RunResult]:
        return [r for r in self.runs if not r.ok]

    @property
    def delta_top1(self) -> float | None:
        if self.baseline is None or self.top1.mean is None or self.baseline.top1.mean is None:
            return None
        return self.top1.mean - self.baseline.top1.mean

    @property
    def verdict(self) -> str:
        """'baseline', 'yes'/'no' (CI of the difference excludes 0), or 'n/a'."""
        if self.is_baseline:
            return "baseline"
        if self.ci is None:
            return "n/a"
        return "yes" if self.ci.excludes_zero else "no"

    @property
    def ref_delta_top1(self) -> float | None:
        if self.ref_row is None or self.ref_baseline is None:
            return None
        if self.ref_row.top1_err is None or self.ref_baseline.top1_err is None:
            return None
        if self.ref_row.key == self.ref_baseline.key:
            return None
        return round(self.ref_row.top1_err - self.ref_baseline.top1_err, 4)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for CSV, notebooks and pandas."""
        return {
            "label": self.label,
            "setting": " ".join(f"{k}={v}" for k, v in self.setting.items()),
            "n": self.n,
            "runs": len(self.runs),
            "failed": sum(1 for r in self.runs if r.status in ("failed", "interrupted")),
            "missing": sum(1 for r in self.runs if r.status in ("missing", "not_started")),
            "problems": "; ".join(f"{r.status}: {r.run_dir}" for r in self.problems),
            "seeds": sorted(r.seed for r in self.runs if r.ok and r.seed is not None),
            "params": self.params,
            "macs": self.macs,
            "top1_err_mean": self.top1.mean,
            "top1_err_std": self.top1.std,
            "top5_err_mean": self.top5.mean,
            "top5_err_std": self.top5.std,
            "baseline": self.baseline.label if self.baseline else None,
            "delta_top1": self.delta_top1,
            "ci_low": self.ci.low if self.ci else None,
            "ci_high": self.ci.high if self.ci else None,
            "ci_df": self.ci.df if self.ci else None,
            "beyond_seed_noise": self.verdict,
            "reference": self.reference.key if self.reference else None,
            "reference_row": self.ref_row.key if self.ref_row else None,
            "paper_top1_err": self.ref_row.top1_err if self.ref_row else None,
            "paper_top5_err": self.ref_row.top5_err if self.ref_row else None,
            "paper_delta_top1": self.ref_delta_top1,
            "paper_dataset": self.reference.dataset if self.reference else None,
        }


def _metric_values(runs: list[RunResult], metric: str) -> tuple[list[float], list[float]]:
    top1, top5 = [], []
    for run in runs:
        if not run.ok:
            continue
        rec = run.record
        if metric == "test":
            t1, t5 = (
                (rec.get("test") or {}).get("top1_err"),
                (rec.get("test") or {}).get("top5_err"),
            )
        else:
            t1 = (rec.get("best") or {}).get("val_top1_err")
            if t1 is None:
                t1 = (rec.get("final") or {}).get("val_top1_err")
            t5 = (rec.get("final") or {}).get("val_top5_err")
        if t1 is not None:
            top1.append(float(t1))
        if t5 is not None:
            top5.append(float(t5))
    return top1, top5


def _pretty_value(key: str, value: str) -> str:
    return value.split("/", 1)[1] if key == "variant" and "/" in value else value


def _first(runs: list[RunResult], key: str) -> Any:
    for run in runs:
        value = run.table.get(key)
        if value is not None:
            return value
    return None


def _variant_label(variant: str) -> str | None:
    """``table.label`` of ``conf/variant/<variant>.yaml`` (None if there is no such file)."""
    from attnexp.experiments import conf_dir

    path = conf_dir() / "variant" / f"{variant}.yaml"
    try:
        return str(((yaml.safe_load(path.read_text()) or {}).get("table") or {}).get("label"))
    except (OSError, yaml.YAMLError):
        return None


def _find_baseline(row: Row, rows: list[Row], spec: Mapping[str, Any] | None) -> Row | None:
    if not spec:
        return None
    target = dict(row.setting)
    for key, value in spec.items():
        if key == "variant" and "variant" not in target and "label" in target:
            # runs read back without their overrides (wandb): rows are keyed by label
            target["label"] = _variant_label(str(value)) or target["label"]
            continue
        target[str(key)] = str(value)
    for other in rows:
        if other.setting == target:
            return other
    return None


# --------------------------------------------------------------------------- the table
@dataclass
class PaperTable:
    """Rows plus what the footer needs. ``records()`` gives plain dicts."""

    rows: list[Row]
    sources: list[str]
    metric: str = "test"
    confidence: float = 0.95

    # -- data ----------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        return [row.as_dict() for row in self.rows]

    @property
    def references(self) -> list[ReferenceTable]:
        seen: dict[str, ReferenceTable] = {}
        for row in self.rows:
            if row.reference is not None:
                seen.setdefault(row.reference.key, row.reference)
        return list(seen.values())

    @property
    def problems(self) -> list[RunResult]:
        return [run for row in self.rows for run in row.problems]

    @property
    def datasets(self) -> list[str]:
        return sorted({row.dataset for row in self.rows if row.dataset})

    # -- layout --------------------------------------------------------------------------
    def _paper_suffix(self) -> str:
        refs = self.references
        datasets = sorted({r.dataset for r in refs if r.dataset})
        return f" [{', '.join(datasets)}]" if datasets else ""

    def columns(self) -> list[str]:
        """Header of the human-readable table."""
        ours = f" ({', '.join(self.datasets)})" if self.datasets else ""
        pct = int(round(self.confidence * 100))
        cols = [
            "setting",
            "runs",
            "params",
            "MACs",
            f"top-1 err %{ours}",
            f"top-5 err %{ours}",
            "Δ top-1",
            f"{pct}% CI of Δ (Welch)",
            "beyond seed noise?",
        ]
        if self.references:
            suffix = self._paper_suffix()
            cols += [f"paper top-1{suffix}", f"paper top-5{suffix}", f"paper Δ top-1{suffix}"]
        return cols

    def cells(self, row: Row) -> list[str]:
        """One row of formatted cells (plain text, no markup)."""

        def err(stat: Stat) -> str:
            if stat.mean is None:
                return "n/a"
            std = f" ± {stat.std:.2f}" if stat.std is not None else ""
            return f"{stat.mean:.2f}{std} ({stat.n})"

        def num(v: float | None, signed: bool = False) -> str:
            if v is None:
                return "–"
            return f"{v:+.2f}" if signed else f"{v:.2f}"

        counts = row.counts
        runs = str(row.n)
        extra = [f"{c} {s.replace('_', ' ')}" for s, c in counts.items() if s != "completed"]
        if extra:
            runs = f"{row.n} ⚠ {', '.join(extra)}"
        if row.is_baseline:
            delta, ci = "(baseline)", "–"
        elif row.baseline is None:
            delta, ci = "no baseline", "–"
        else:
            delta = num(row.delta_top1, signed=True)
            ci = f"[{row.ci.low:+.2f}, {row.ci.high:+.2f}]" if row.ci else "n/a (n<2)"
        cells = [
            row.label,
            runs,
            _fmt_count(row.params),
            _fmt_count(row.macs),
            err(row.top1),
            err(row.top5),
            delta,
            ci,
            "–" if row.verdict == "baseline" else row.verdict,
        ]
        if self.references:
            ref = row.ref_row
            cells += [
                num(ref.top1_err) if ref else "–",
                num(ref.top5_err) if ref else "–",
                num(row.ref_delta_top1, signed=True),
            ]
        return cells

    def title(self) -> str:
        what = "test" if self.metric == "test" else "validation"
        return f"Top-1/top-5 {what} error (%) per setting, mean ± std (n seeds)"

    def footer(self) -> list[str]:
        pct = int(round(self.confidence * 100))
        if self.metric == "test":
            kinds = {
                (r.record.get("test") or {}).get("checkpoint")
                for row in self.rows
                for r in row.runs
                if r.ok
            } - {None}
            weights = {
                frozenset({"best"}): "the best checkpoint by val top-1",
                frozenset({"final"}): "the final weights",
            }.get(
                frozenset(kinds),
                "the best checkpoint by val top-1 (final weights without checkpoints)",
            )
            what = f"test error of {weights}"
        else:
            what = "best validation top-1 error and final validation top-5 error"
        lines = [
            f"Ours: {what}; mean ± sample std (ddof=1) over seeds, (n) = completed runs. "
            f"Sources: {', '.join(self.sources)}.",
            f"Δ top-1 = row mean − baseline mean. {pct}% CI of Δ by Welch's t-test (unequal "
            "variances, Welch–Satterthwaite df, scipy.stats.t); beyond seed noise? = yes when "
            "the interval excludes 0; n/a when the row or its baseline has fewer than 2 "
            "completed runs.",
            "Params and MACs per model (MACs = conv + linear multiply-adds for one image at "
            "the run's input size, attnexp.models.costs).",
        ]
        for ref in self.references:
            lines.append(f"Paper: {ref.source}.")
        our = set(self.datasets)
        if self.references and our and not our & {r.dataset.lower() for r in self.references}:
            names = ", ".join(sorted({r.dataset for r in self.references}))
            lines.append(
                f"The paper columns are {names} numbers beside a different dataset/backbone "
                "(an analogue): compare the sign and size of Δ, not absolute errors."
            )
        for run in self.problems:
            lines.append(
                f"⚠ {run.status.replace('_', ' ').upper()}: {run.run_dir} ({run.note or 'no result'})"
            )
        return lines

    # -- renderers -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        cols = self.columns()
        out = [f"**{self.title()}**", "", "| " + " | ".join(cols) + " |"]
        out.append("|" + "|".join(":--" if i == 0 else "--:" for i in range(len(cols))) + "|")
        for row in self.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in self.cells(row)) + " |")
        out.append("")
        out += [f"- {line}" for line in self.footer()]
        return "\n".join(out) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        records = self.records()
        fields = (
            list(records[0])
            if records
            else list(Row("", {}, [], Stat(()), Stat(()), None, None, None).as_dict())
        )
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow(
                {k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in rec.items()}
            )
        return buf.getvalue()

    def to_latex(self) -> str:
        cols = self.columns()
        spec = "l" + "r" * (len(cols) - 1)
        out = [
            "% Generated by attnexp-table; needs \\usepackage{booktabs}.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{_tex(self.title())}}}",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_tex(c) for c in cols) + " \\\\",
            "\\midrule",
        ]
        for row in self.rows:
            out.append(" & ".join(_tex(c) for c in self.cells(row)) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\par\\smallskip"]
        out += [f"{{\\footnotesize {_tex(line)}}}\\par" for line in self.footer()]
        out.append("\\end{table}")
        return "\n".join(out) + "\n"

    def to_rich(self) -> Any:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=self.title(), caption="\n".join(self.footer()), caption_justify="left")
        width = min(40, max((len(r.label) for r in self.rows), default=10))
        for i, col in enumerate(self.columns()):
            if i == 0:
                table.add_column(col, justify="left", min_width=width, overflow="fold")
            else:
                table.add_column(col, justify="right", overflow="fold")
        for row in self.rows:
            cells = self.cells(row)
            cells[0] = escape(cells[0])
            if row.problems:
                cells[1] = f"[bold red]{cells[1]}[/bold red]"
            if row.verdict == "yes":
                cells[8] = f"[green]{cells[8]}[/green]"
            table.add_row(*cells, style="bold" if row.is_baseline else None)
        return table


def _fmt_count(value: int | None) -> str:
    if value is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.2f}{unit}"
    return str(value)


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "–": r"--",
    "⚠": r"(!)",
    "²": r"$^2$",
    "<": r"$<$",
    ">": r"$>$",
}


def _tex(text: str) -> str:
    text = text.replace("->", "\x00")
    out = "".join(_TEX.get(ch, ch) for ch in text)
    return out.replace("\x00", r"$\rightarrow$")


def build_table(
    source: Iterable[str | Path] | list[RunResult],
    metric: str = "test",
    confidence: float = 0.95,
    ignore: Iterable[str] = (),
) -> PaperTable:
    """Group runs by setting and compute every column; ``source`` is paths or runs."""
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    items = list(source)
    if items and all(isinstance(i, RunResult) for i in items):
        runs: list[RunResult] = items  # type: ignore[assignment]
        sources = sorted({str(Path(str(r.run_dir)).parent) for r in runs})
    else:
        runs = collect(items, ignore)  # type: ignore[arg-type]
        sources = [str(p) for p in items]
    groups: dict[tuple[tuple[str, str], ...], list[RunResult]] = {}
    for run in runs:
        groups.setdefault(tuple(sorted(run.setting.items())), []).append(run)

    # keys that vary between rows make the fallback labels
    all_keys = {k for key in groups for k, _ in key}
    varying = [k for k in sorted(all_keys) if len({dict(key).get(k) for key in groups}) > 1]
    rows: list[Row] = []
    for key, members in groups.items():
        setting = dict(key)
        top1, top5 = _metric_values(members, metric)
        done = [r for r in members if r.ok]
        costs = (done[0].record.get("costs") or {}) if done else {}
        label = _first(members, "label")
        if label is None:
            parts = [(k, _pretty_value(k, setting[k])) for k in varying if k in setting]
            label = (
                parts[0][1]
                if len(parts) == 1
                else ", ".join(f"{k}={v}" for k, v in parts) or "(all runs)"
            )
        dataset = None
        if done:
            dataset = ((done[0].record.get("config") or {}).get("data") or {}).get("name")
            dataset = dataset or done[0].record.get("dataset")
        ref_key = _first(members, "reference")
        reference = reference_table(str(ref_key)) if ref_key else None
        ref_row_key = _first(members, "row")
        rows.append(
            Row(
                label=str(label),
                setting=setting,
                runs=members,
                top1=Stat(tuple(top1)),
                top5=Stat(tuple(top5)),
                params=costs.get("params"),
                macs=costs.get("macs"),
                dataset=dataset,
                reference=reference,
                ref_row=reference.row(ref_row_key) if reference else None,
            )
        )

    # baselines: the row whose swept values equal this row's with the spec applied
    for row in rows:
        spec = _first(row.runs, "baseline")
        if spec is None and any(r.setting.get("attention") == "none" for r in rows):
            spec = {"attention": "none"}
        if not isinstance(spec, Mapping):
            continue
        base = _find_baseline(row, rows, spec)
        if base is None:
            continue
        row.baseline = base
        row.is_baseline = base is row
        if not row.is_baseline:
            row.ci = welch_ci(row.top1.values, base.top1.values, confidence)
        if row.reference is not None:
            same = base.reference is not None and base.reference.key == row.reference.key
            ref_base = base.ref_row if same else None
            if ref_base is None and row.reference.baseline:
                ref_base = row.reference.row(row.reference.baseline)
            row.ref_baseline = ref_base
    return PaperTable(rows=rows, sources=sources, metric=metric, confidence=confidence)


# --------------------------------------------------------------------------- legacy API
def aggregate(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Rows as plain dicts (kept for callers of the first table version)."""
    return build_table(runs).records()
