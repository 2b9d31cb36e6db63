"""Published numbers (``reference.yaml``, transcribed from the papers) for paper tables.

>>> ref = reference_table("cbam_table3")
>>> ref.row("parallel").top1_err
22.95
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from attnexp.errors import choices_error

REFERENCE_FILE = "reference.yaml"


@dataclass(frozen=True)
class ReferenceRow:
    """One published row; errors in percent (accuracies are converted: err = 100 - acc)."""

    key: str
    label: str
    top1_err: float | None
    top5_err: float | None
    params_m: float | None = None
    #: False when our count of the architecture does not reproduce ``params_m``.
    params_confirmed: bool | None = None
    note: str | None = None


@dataclass(frozen=True)
class ReferenceTable:
    """One table of a paper, with where the numbers come from."""

    key: str
    citation: str
    table: str
    dataset: str
    model: str
    setting: str
    metric: str  # "error" or "acc": how the paper published them
    protocol: str
    baseline: str | None
    rows: dict[str, ReferenceRow] = field(default_factory=dict)

    def row(self, key: str | None) -> ReferenceRow | None:
        """The row ``key`` or None (no published number for it)."""
        return self.rows.get(str(key)) if key is not None else None

    @property
    def source(self) -> str:
        """Citation and table, e.g. for a table footer."""
        converted = " (published as accuracy; shown as 100 - acc)" if self.metric == "acc" else ""
        return f"{self.citation}, {self.table}: {self.setting}{converted}"


#: How a published number was obtained (the same words as presets' ``table.protocol``).
PROTOCOLS: tuple[str, ...] = ("from_scratch", "fine_tune")


def _protocol(key: str, value: Any) -> str:
    if value not in PROTOCOLS:
        raise ValueError(
            f"reference.yaml: {key}.protocol must be one of {PROTOCOLS}, got {value!r}"
        )
    return str(value)


def _to_err(value: Any, metric: str) -> float | None:
    if value is None:
        return None
    return round(100.0 - float(value), 4) if metric == "acc" else float(value)


@functools.lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    text = resources.files("attnexp.analysis").joinpath(REFERENCE_FILE).read_text()
    return yaml.safe_load(text) or {}


def available_references() -> list[str]:
    """Keys of every table in reference.yaml."""
    return sorted(_raw())


@functools.cache
def reference_table(key: str) -> ReferenceTable:
    """The published table ``key``; an unknown key lists the valid ones."""
    raw = _raw()
    if key not in raw:
        raise choices_error("reference table", key, sorted(raw))
    entry = raw[key]
    metric = entry.get("metric", "error")
    if metric not in ("error", "acc"):
        raise ValueError(f"reference.yaml: {key}.metric must be error or acc, got {metric!r}")
    rows = {
        str(rk): ReferenceRow(
            key=str(rk),
            label=str(rv.get("label", rk)),
            top1_err=_to_err(rv.get("top1"), metric),
            top5_err=_to_err(rv.get("top5"), metric),
            params_m=rv.get("params_m"),
            params_confirmed=rv.get("params_confirmed"),
            note=rv.get("note"),
        )
        for rk, rv in (entry.get("rows") or {}).items()
    }
    return ReferenceTable(
        key=key,
        citation=str(entry["citation"]),
        table=str(entry["table"]),
        dataset=str(entry.get("dataset", "")),
        model=str(entry.get("model", "")),
        setting=str(entry.get("setting", "")),
        metric=metric,
        protocol=_protocol(key, entry.get("protocol", "from_scratch")),
        baseline=entry.get("baseline"),
        rows=rows,
    )
