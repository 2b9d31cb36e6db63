"""``attnexp-profile``'s tables: one model's report and the side-by-side comparison.

Rendering only (rich tables from :class:`~attnexp.analysis.profile.ProfileResult`); the
measuring lives in :mod:`attnexp.analysis.profile`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from attnexp.analysis.profile import (
    CUDA_PEAK_METHOD,
    SAVED_TENSORS_METHOD,
    ProfileResult,
    Settings,
)
from attnexp.models.costs import ATTENTION_OPS_CONVENTION, MACS_CONVENTION


def fmt_count(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def fmt_g(n: float | None, digits: int = 3) -> str:
    return "n/a" if n is None else f"{n / 1e9:.{digits}f}"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.1f} MiB"


def fmt_rate(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def fmt_macs(n: int) -> str:
    """``4,089,184,256 (4.089 G)`` / ``40,553,056 (40.55 M)``: exact and readable."""
    short = f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"
    return f"{n:,} ({short})"


def single_report(result: ProfileResult, settings: Settings) -> Any:
    """A two-column rich table for one profiled config."""
    from rich.table import Table

    c = result.costs
    table = Table(
        title=f"{result.model} + {result.attention}",
        show_header=False,
        caption=f"attention ops: {ATTENTION_OPS_CONVENTION}",
    )
    table.add_column("quantity", style="bold")
    table.add_column("value", overflow="fold")
    size = result.image_size
    table.add_row("input", f"1x3x{size}x{size} per image, {result.num_classes} classes")
    table.add_row("params", fmt_count(c.params))
    table.add_row("MACs", f"{fmt_macs(c.macs)}  -- {MACS_CONVENTION}")
    table.add_row(
        "MACs + attention ops",
        f"{fmt_macs(c.macs_with_attention)}  -- attention ops {c.attention_ops:,}",
    )
    if result.activation_bytes is not None:
        table.add_row(
            f"activation memory, train step (batch {settings.batch})",
            f"{fmt_bytes(result.activation_bytes)}  -- {result.activation_method}",
        )
    if result.train_images_per_s is not None:
        median = statistics.median(result.train_step_times)
        table.add_row(
            "train images/s", f"{fmt_rate(result.train_images_per_s)}  ({median * 1e3:.0f} ms/step)"
        )
        table.add_row("inference images/s", fmt_rate(result.infer_images_per_s))
        table.add_row("measured with", settings.describe())
    if result.note:
        table.add_row("note", result.note)
    return table


def _baseline(result: ProfileResult, results: Sequence[ProfileResult]) -> ProfileResult | None:
    for r in results:
        if r.attention == "none" and r.model == result.model and r.image_size == result.image_size:
            return r
    return None


def results_table(results: Sequence[ProfileResult], settings: Settings, title: str = "") -> Any:
    """One row per result; ratios (x) against the row without attention on the same backbone."""
    from rich.table import Table

    memory = SAVED_TENSORS_METHOD if settings.device != "cuda" else CUDA_PEAK_METHOD
    caption = (
        f"GMACs: {MACS_CONVENTION}, per image; +attn: also {ATTENTION_OPS_CONVENTION}. "
        f"Activations: {memory}, batch {settings.batch}. x: ratio to the row without attention"
    )
    caption += f" (time ratio for speed). Speed: {settings.describe()}." if settings.speed else "."
    table = Table(title=title or None, caption=caption)
    columns = ["setting", "params", "x", "GMACs", "x", "GMACs+attn", "activations"]
    if settings.speed:
        columns += ["train img/s", "x time", "infer img/s"]
    for col in [*columns, "note"]:
        table.add_column(col, justify="left" if col in ("setting", "note") else "right")

    def ratio(a: float | None, b: float | None) -> str:
        return "" if a is None or not b else f"{a / b:.3f}"

    for r in results:
        base = _baseline(r, results)
        row = [
            r.label,
            f"{r.costs.params / 1e6:.3f}M",
            ratio(r.costs.params, base.costs.params if base else None),
            fmt_g(r.costs.macs),
            ratio(r.costs.macs, base.costs.macs if base else None),
            fmt_g(r.costs.macs_with_attention),
            fmt_bytes(r.activation_bytes),
        ]
        if settings.speed:
            row += [
                fmt_rate(r.train_images_per_s),
                ratio(base.train_images_per_s if base else None, r.train_images_per_s),
                fmt_rate(r.infer_images_per_s),
            ]
        table.add_row(*row, r.note)
    return table
