"""The one list of table columns. Markdown, LaTeX, rich, CSV, ``records()`` and the plot
all read :data:`COLUMNS`; adding a column is one entry here.

Each :class:`Column` has a ``key``, a ``header`` (it may depend on the table: the dataset
in the error headers, the paper's dataset in the paper columns), a ``value`` (the plain
value of a row: a number, a :class:`Stat`, a string), a ``text`` formatter for the
human-readable tables, the CSV ``fields`` it expands into, and optionally a rich style.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnexp.analysis.table.stats import Stat

if TYPE_CHECKING:
    from attnexp.analysis.table.model import PaperTable, Row


def _dash(value: Any, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def count(value: int | None) -> str:
    """1234567 -> ``1.23M``."""
    if value is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.2f}{unit}"
    return str(value)


def err(stat: Stat) -> str:
    """``27.13 ± 0.32 (3)``; ``n/a`` without completed runs."""
    if stat.mean is None:
        return "n/a"
    std = f" ± {stat.std:.2f}" if stat.std is not None else ""
    return f"{stat.mean:.2f}{std} ({stat.n})"


def _throughput(row: Row) -> str:
    """``412 ± 9``, with how many of the runs were compiled when not all or none."""
    stat = row.train_images_per_s
    if stat.mean is None:
        return "–"
    text = f"{stat.mean:.0f}" + (f" ± {stat.std:.0f}" if stat.std is not None else "")
    compiled = row.compiled_runs
    if compiled == stat.n:
        return f"{text} (compiled)"
    return text if compiled == 0 else f"{text} ({compiled}/{stat.n} compiled)"


def _runs(row: Row) -> str:
    extra = [f"{c} {s.replace('_', ' ')}" for s, c in row.counts.items() if s != "completed"]
    return f"{row.n} ⚠ {', '.join(extra)}" if extra else str(row.n)


def _seeds(row: Row) -> list[int]:
    return sorted(x.seed for x in row.runs if x.ok and x.seed is not None)


def _delta(row: Row) -> str:
    if row.is_baseline:
        return "(baseline)"
    return "no baseline" if row.baseline is None else _dash(row.delta_top1, "{:+.2f}")


def _ci(row: Row) -> str:
    if row.is_baseline or row.baseline is None:
        return "–"
    return f"[{row.ci.low:+.2f}, {row.ci.high:+.2f}]" if row.ci else "n/a (n<2)"


def _ours(table: PaperTable) -> str:
    return f" ({', '.join(table.datasets)})" if table.datasets else ""


def _paper(table: PaperTable) -> str:
    datasets = sorted({r.dataset for r in table.references if r.dataset})
    return f" [{', '.join(datasets)}]" if datasets else ""


def _has_paper(table: PaperTable) -> bool:
    return bool(table.references)


def _has_combined_modules(table: PaperTable) -> bool:
    """Show the module description when some row has more than one module (conv, extras)."""
    return any(row.modules and " + " in row.modules for row in table.rows)


def _pct(table: PaperTable) -> int:
    return int(round(table.confidence * 100))


def _always(table: PaperTable) -> bool:
    return True


@dataclass(frozen=True)
class Column:
    """One column: see the module docstring."""

    key: str
    header: Callable[[PaperTable], str]
    value: Callable[[Row], Any]
    text: Callable[[Row], str]
    #: CSV / records() fields and their plain values (default: ``key`` -> ``value``).
    fields: tuple[str, ...] = ()
    plain: Callable[[Row], Sequence[Any]] | None = None
    #: In the human-readable tables (markdown, LaTeX, rich) when this holds.
    show: Callable[[PaperTable], bool] = _always
    human: bool = True
    #: rich style of a cell (None: plain).
    style: Callable[[Row], str | None] = lambda row: None
    align: str = "right"

    def csv_fields(self) -> tuple[str, ...]:
        return self.fields or (self.key,)

    def csv_values(self, row: Row) -> Sequence[Any]:
        return self.plain(row) if self.plain is not None else (self.value(row),)


def _const(text: str) -> Callable[[PaperTable], str]:
    return lambda table: text


COLUMNS: tuple[Column, ...] = (
    Column("label", _const("setting"), lambda r: r.label, lambda r: r.label, align="left"),
    Column(
        "setting",
        _const("overrides"),
        lambda r: " ".join(f"{k}={v}" for k, v in r.setting.items()),
        lambda r: " ".join(f"{k}={v}" for k, v in r.setting.items()),
        human=False,
    ),
    Column(
        "n",
        _const("runs"),
        lambda r: r.n,
        _runs,
        fields=("n", "runs", "failed", "missing", "problems"),
        plain=lambda r: (
            r.n,
            len(r.runs),
            sum(1 for x in r.runs if x.status in ("failed", "interrupted")),
            sum(1 for x in r.runs if x.status in ("missing", "not_started")),
            "; ".join(f"{x.status}: {x.run_dir}" for x in r.problems),
        ),
        style=lambda r: "bold red" if r.problems else None,
    ),
    Column(
        "seeds",
        _const("seeds"),
        _seeds,
        lambda r: " ".join(map(str, _seeds(r))),
        human=False,
    ),
    Column(
        "modules",
        _const("modules"),
        lambda r: r.modules,
        lambda r: r.modules or "–",
        show=_has_combined_modules,
        align="left",
    ),
    Column(
        "dataset", _const("dataset"), lambda r: r.dataset, lambda r: r.dataset or "–", human=False
    ),
    Column("params", _const("params"), lambda r: r.params, lambda r: count(r.params)),
    Column("macs", _const("MACs"), lambda r: r.macs, lambda r: count(r.macs)),
    Column(
        "top1_err",
        lambda t: f"top-1 err %{_ours(t)}",
        lambda r: r.top1,
        lambda r: err(r.top1),
        fields=("top1_err_mean", "top1_err_std"),
        plain=lambda r: (r.top1.mean, r.top1.std),
    ),
    Column(
        "top5_err",
        lambda t: f"top-5 err %{_ours(t)}",
        lambda r: r.top5,
        lambda r: err(r.top5),
        fields=("top5_err_mean", "top5_err_std"),
        plain=lambda r: (r.top5.mean, r.top5.std),
    ),
    Column(
        "train_images_per_s",
        _const("train img/s"),
        lambda r: r.train_images_per_s,
        _throughput,
        fields=("train_images_per_s_mean", "train_images_per_s_std", "compiled_runs"),
        plain=lambda r: (r.train_images_per_s.mean, r.train_images_per_s.std, r.compiled_runs),
    ),
    Column(
        "baseline",
        _const("baseline"),
        lambda r: r.baseline.label if r.baseline else None,
        lambda r: r.baseline.label if r.baseline else "–",
        human=False,
    ),
    Column("delta_top1", _const("Δ top-1"), lambda r: r.delta_top1, _delta),
    Column(
        "ci",
        lambda t: f"{_pct(t)}% CI of Δ (Welch)",
        lambda r: r.ci,
        _ci,
        fields=("ci_low", "ci_high", "ci_df"),
        plain=lambda r: (r.ci.low, r.ci.high, r.ci.df) if r.ci else (None, None, None),
    ),
    Column(
        "beyond_seed_noise",
        _const("beyond seed noise?"),
        lambda r: r.verdict,
        lambda r: "–" if r.verdict == "baseline" else r.verdict,
        style=lambda r: "green" if r.verdict == "yes" else None,
    ),
    Column(
        "reference",
        _const("reference"),
        lambda r: r.reference.key if r.reference else None,
        lambda r: r.reference.key if r.reference else "–",
        fields=("reference", "reference_row"),
        plain=lambda r: (
            r.reference.key if r.reference else None,
            r.ref_row.key if r.ref_row else None,
        ),
        human=False,
    ),
    Column(
        "paper_top1_err",
        lambda t: f"paper top-1{_paper(t)}",
        lambda r: r.ref_row.top1_err if r.ref_row else None,
        lambda r: _dash(r.ref_row.top1_err if r.ref_row else None),
        show=_has_paper,
    ),
    Column(
        "paper_top5_err",
        lambda t: f"paper top-5{_paper(t)}",
        lambda r: r.ref_row.top5_err if r.ref_row else None,
        lambda r: _dash(r.ref_row.top5_err if r.ref_row else None),
        show=_has_paper,
    ),
    Column(
        "paper_delta_top1",
        lambda t: f"paper Δ top-1{_paper(t)}",
        lambda r: r.ref_delta_top1,
        lambda r: _dash(r.ref_delta_top1, "{:+.2f}"),
        show=_has_paper,
    ),
    Column(
        "paper_dataset",
        _const("paper dataset"),
        lambda r: r.reference.dataset if r.reference else None,
        lambda r: r.reference.dataset if r.reference else "–",
        human=False,
    ),
)


def column(key: str) -> Column:
    """The column called ``key``."""
    for col in COLUMNS:
        if col.key == key:
            return col
    raise KeyError(f"no table column {key!r}; columns: {', '.join(c.key for c in COLUMNS)}")


def shown(table: PaperTable) -> list[Column]:
    """The columns of the human-readable tables for ``table``."""
    return [c for c in COLUMNS if c.human and c.show(table)]


def csv_fields() -> list[str]:
    return [f for c in COLUMNS for f in c.csv_fields()]


def plain_values(row: Row) -> dict[str, Any]:
    """Every column's CSV fields with plain values (lists stay lists)."""
    out: dict[str, Any] = {}
    for col in COLUMNS:
        out.update(zip(col.csv_fields(), col.csv_values(row)))
    return out
