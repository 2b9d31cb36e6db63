"""Figures for tables (matplotlib, Agg backend: no display needed).

``bar_chart`` draws the paper table of :mod:`attnexp.analysis.table`: our top-1 error per row
(mean with ± std error bars, n above each bar; the axis starts at zero, so bar heights
compare) and, when the sweep has baselines, the difference to the baseline with its Welch
confidence interval beside the paper's difference. Values and axis titles come from the
table's column list (:mod:`attnexp.analysis.table.columns`), as in every other format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attnexp.analysis.table import PaperTable


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bar_chart(table: PaperTable, path: str | Path, dpi: int = 150) -> Path:
    """Write a bar chart of ``table`` to ``path`` (PNG) and return the path."""
    from attnexp.analysis.table.columns import column

    plt = _pyplot()
    top1_col, delta_col, paper_col = (
        column("top1_err"),
        column("delta_top1"),
        column("paper_delta_top1"),
    )
    rows = table.rows
    labels = [r.label for r in rows]
    x = list(range(len(rows)))
    has_delta = any(r.baseline is not None and not r.is_baseline for r in rows)
    ncols = 2 if has_delta else 1
    width = max(6.0, 0.7 * len(rows) + 2.0)
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.8), squeeze=False)

    ax = axes[0][0]
    stats = [top1_col.value(r) for r in rows]
    means = [s.mean if s.mean is not None else 0.0 for s in stats]
    stds = [s.std or 0.0 for s in stats]
    colors = ["0.55" if r.is_baseline else "tab:blue" for r in rows]
    ax.bar(x, means, yerr=stds, capsize=4, color=colors)
    high = max((m + s for m, s in zip(means, stds)), default=0.0) or 1.0
    bottom = 0.0  # error rates are compared by bar height: never cut the axis
    ax.set_ylim(bottom, high * 1.15)
    for i, (r, m, s) in enumerate(zip(rows, means, stds)):
        text = f"n={r.n}" if r.top1.mean is not None else "no result"
        if r.problems:
            text += f" ({len(r.problems)} failed/missing)"
        ax.annotate(
            text,
            (i, m + s if r.top1.mean is not None else bottom),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            color="red" if r.problems or r.top1.mean is None else "black",
        )
    what = "test" if table.metric == "test" else "val"
    ax.set_ylabel(f"{top1_col.header(table)} ({what})")
    ax.set_title("ours: mean ± std over seeds")
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)

    if has_delta:
        ax = axes[0][1]
        pct = int(round(table.confidence * 100))
        deltas = [
            delta_col.value(r) if delta_col.value(r) is not None and not r.is_baseline else 0.0
            for r in rows
        ]
        lower = [d - r.ci.low if r.ci else 0.0 for d, r in zip(deltas, rows)]
        upper = [r.ci.high - d if r.ci else 0.0 for d, r in zip(deltas, rows)]
        shift = 0.2 if table.references else 0.0
        ax.bar(
            [i - shift for i in x],
            deltas,
            width=0.4 if shift else 0.8,
            yerr=[lower, upper],
            capsize=4,
            color="tab:blue",
            label=f"ours ({pct}% Welch CI)",
        )
        if table.references:
            paper = [paper_col.value(r) if paper_col.value(r) is not None else 0.0 for r in rows]
            names = ", ".join(sorted({ref.dataset for ref in table.references}))
            ax.bar(
                [i + shift for i in x],
                paper,
                width=0.4,
                color="tab:orange",
                label=f"paper ({names})",
            )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"{delta_col.header(table)} error vs baseline (points)")
        ax.set_title("difference to the baseline row")
        ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
        ax.legend(fontsize=8)

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
