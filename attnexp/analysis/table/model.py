"""The table model: runs grouped into rows, each with its statistics, baseline and paper row.

One row per setting (the swept overrides of a run, seed ignored) with the mean ± sample std
over seeds of top-1/top-5 error, params and MACs, the difference to the row's baseline with
a 95% Welch interval, and the published numbers beside ours. How a row finds its label,
baseline and published numbers: presets carry a ``table`` node (``reference``, ``row``,
``label``, ``baseline``) resolved into each run's config (docs/reproduce.md); runs without
it (ad-hoc sweeps) are labelled by their swept values and compared against
``attention=none`` when the sweep has that row.

:func:`mixing_warnings` says when one table mixes datasets, backbones or recipes: a
difference between such rows is not the effect of the attention module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnexp.analysis.reference import ReferenceRow, ReferenceTable, reference_table
from attnexp.analysis.table.collect import RunResult, collect
from attnexp.analysis.table.stats import Stat, WelchCI, welch_ci
from attnexp.errors import ConfigError
from attnexp.results import RunRecord

METRICS = ("test", "val")


@dataclass
class Row:
    """One line of the table."""

    label: str
    setting: dict[str, str]
    runs: list[RunResult]
    top1: Stat
    top5: Stat
    params: int | None = None
    macs: int | None = None
    dataset: str | None = None
    modules: str | None = None  # the full attention description (conv, extra placements)
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
    def train_images_per_s(self) -> Stat:
        """Measured training throughput of the completed runs (images per second over the
        whole fit: validation and any compile included, as a user waits for it)."""
        rates = [
            r.record.throughput.train_images_per_s
            for r in self.runs
            if r.ok and r.record is not None and r.record.throughput.train_images_per_s
        ]
        return Stat(tuple(float(x) for x in rates))

    @property
    def compiled_runs(self) -> int:
        """Completed runs that trained with ``torch.compile`` (``training.compile``)."""
        return sum(
            1
            for r in self.runs
            if r.ok and r.record is not None and (r.record.training.compile or {}).get("compiled")
        )

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
        """Plain values (the CSV columns of :mod:`attnexp.analysis.table.columns`)."""
        from attnexp.analysis.table.columns import plain_values

        return plain_values(self)


@dataclass
class PaperTable:
    """Rows plus what the footer needs; renders itself through one list of columns."""

    rows: list[Row]
    sources: list[str]
    metric: str = "test"
    confidence: float = 0.95
    #: Mixed datasets / backbones / recipes (:func:`mixing_warnings`).
    warnings: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """One plain dict per row, for notebooks and pandas."""
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

    def columns(self) -> list[str]:
        """Headers of the human-readable table."""
        from attnexp.analysis.table.columns import shown

        return [c.header(self) for c in shown(self)]

    def cells(self, row: Row) -> list[str]:
        """One row of formatted cells (plain text, no markup)."""
        from attnexp.analysis.table.columns import shown

        return [c.text(row) for c in shown(self)]

    def title(self) -> str:
        what = "test" if self.metric == "test" else "validation"
        return f"Top-1/top-5 {what} error (%) per setting, mean ± std (n seeds)"

    def footer(self) -> list[str]:
        from attnexp.analysis.table.render import footer

        return footer(self)

    def to_markdown(self) -> str:
        from attnexp.analysis.table.render import to_markdown

        return to_markdown(self)

    def to_csv(self) -> str:
        from attnexp.analysis.table.render import to_csv

        return to_csv(self)

    def to_latex(self) -> str:
        from attnexp.analysis.table.render import to_latex

        return to_latex(self)

    def to_rich(self) -> Any:
        from attnexp.analysis.table.render import to_rich

        return to_rich(self)


# --------------------------------------------------------------------------- rows
def _metric_values(runs: list[RunResult], metric: str) -> tuple[list[float], list[float]]:
    top1, top5 = [], []
    for run in runs:
        if not run.ok or run.record is None:
            continue
        t1, t5 = run.record.error_rates(metric)
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
            # runs read back without their overrides: rows are keyed by label
            target["label"] = _variant_label(str(value)) or target["label"]
            continue
        target[str(key)] = str(value)
    return next((other for other in rows if other.setting == target), None)


def _dataset(record: RunRecord) -> str | None:
    data = (record.config or {}).get("data")
    name = data.get("name") if isinstance(data, Mapping) else None
    return str(name) if name else record.dataset


def _make_row(setting: dict[str, str], members: list[RunResult], label: Any, metric: str) -> Row:
    top1, top5 = _metric_values(members, metric)
    done = [r.record for r in members if r.ok and r.record is not None]
    first = done[0] if done else None
    ref_key = _first(members, "reference")
    reference = reference_table(str(ref_key)) if ref_key else None
    return Row(
        label=str(label),
        setting=setting,
        runs=members,
        top1=Stat(tuple(top1)),
        top5=Stat(tuple(top5)),
        params=first.costs.params if first else None,
        macs=first.costs.macs if first else None,
        dataset=_dataset(first) if first else None,
        modules=first.attention.label() if first else None,
        reference=reference,
        ref_row=reference.row(_first(members, "row")) if reference else None,
    )


def _label(setting: dict[str, str], varying: list[str], members: list[RunResult]) -> Any:
    label = _first(members, "label")
    if label is not None:
        return label
    parts = [(k, _pretty_value(k, setting[k])) for k in varying if k in setting]
    if len(parts) == 1:
        return parts[0][1]
    return ", ".join(f"{k}={v}" for k, v in parts) or "(all runs)"


def _attach_baselines(rows: list[Row], confidence: float) -> None:
    """The row whose swept values equal this row's with the baseline spec applied."""
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


# --------------------------------------------------------------------------- mixing
def facets(record: RunRecord) -> dict[str, str]:
    """What must agree between runs for their errors to be comparable: dataset, backbone and
    recipe (recipe preset, optimizer, schedule, epochs, image size)."""
    config = record.config or {}
    choices = record.hydra.choices or {}

    def node(key: str) -> Mapping[str, Any]:
        value = config.get(key)
        return value if isinstance(value, Mapping) else {}

    def what(group: str) -> Any:
        chosen = choices.get(group)
        if chosen is not None:
            return chosen
        target = node(group).get("_target_") or node(group).get("name")
        return str(target).rsplit(".", 1)[-1] if target else None

    recipe = {
        "recipe": choices.get("recipe"),
        "optimizer": what("optimizer"),
        "scheduler": what("scheduler"),
        "epochs": node("trainer").get("max_epochs"),
        "image_size": node("data").get("image_size"),
    }
    return {
        "dataset": str(_dataset(record)),
        "backbone": str(record.model),
        "recipe": " ".join(f"{k}={v}" for k, v in recipe.items() if v is not None) or "-",
    }


def _names(labels: Iterable[str], most: int = 3) -> str:
    labels = list(dict.fromkeys(labels))
    more = f" and {len(labels) - most} more" if len(labels) > most else ""
    return ", ".join(repr(label) for label in labels[:most]) + more


def mixing_warnings(rows: list[Row]) -> list[str]:
    """One line per facet (dataset, backbone, recipe) that differs within a row or between
    rows of one table; empty when every completed run agrees."""
    out: list[str] = []
    for facet in ("dataset", "backbone", "recipe"):
        by_value: dict[str, list[str]] = {}
        for row in rows:
            values = {facets(r.record)[facet] for r in row.runs if r.ok and r.record}
            if len(values) > 1:
                out.append(
                    f"row {row.label!r} averages runs of different {facet}s: "
                    + "; ".join(sorted(values))
                )
            for value in values:
                by_value.setdefault(value, []).append(row.label)
        if len(by_value) > 1:
            parts = [f"{value} (rows {_names(labels)})" for value, labels in by_value.items()]
            out.append(
                f"this table mixes runs of different {facet}s: {'; '.join(parts)}. Differences "
                "between these rows are not the effect of the attention module alone"
            )
    return out


# --------------------------------------------------------------------------- the table
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
    rows = [
        _make_row(dict(key), members, _label(dict(key), varying, members), metric)
        for key, members in groups.items()
    ]
    _attach_baselines(rows, confidence)
    return PaperTable(rows, sources, metric, confidence, mixing_warnings(rows))


def aggregate(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Rows as plain dicts (kept for callers of the first table version)."""
    return build_table(runs).records()
