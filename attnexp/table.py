"""``attnexp-table``: a table of top-1/top-5 error per setting from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from attnexp.analysis.table import aggregate, collect


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _latest(path: Path) -> Path:
    subdirs = sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name)
    if not subdirs:
        raise SystemExit(f"attnexp-table: no sweep directories in {path}")
    return subdirs[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="attnexp-table", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep or run directories")
    parser.add_argument("--latest", action="store_true", help="use only the newest subdirectory of each path")
    args = parser.parse_args(argv)
    paths = [_latest(p) if args.latest else p for p in args.paths]
    for p in paths:
        if not p.exists():
            raise SystemExit(f"attnexp-table: {p} does not exist")
    rows = aggregate(collect(paths))
    table = Table(title=f"test error (%) — {', '.join(str(p) for p in paths)}")
    for col in ("setting", "n", "params", "MMACs", "top-1 err", "top-5 err"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in rows:
        table.add_row(
            r["setting"] + (f" [red]({r['failed']} failed)[/red]" if r["failed"] else ""),
            str(r["n"]),
            f"{r['params']:,}" if r["params"] else "-",
            f"{r['macs'] / 1e6:.2f}" if r["macs"] else "-",
            _fmt(*r["top1"]),
            _fmt(*r["top5"]),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
