"""``attnexp-table``: paper-style tables from sweep/run directories (or wandb).

    attnexp-table outputs/cbam_table3_cifar/multirun --latest
    attnexp-table SWEEP_DIR [SWEEP_DIR ...] --out tables/cbam3 [--force]
    attnexp-table --wandb me/attnexp --group cbam_table3_cifar --out tables/cbam3
    attnexp-table --wandb outputs/default/multirun/SWEEP --no-save   # offline wandb files

Prints the table and writes table.md, table.csv, table.tex and plot.png next to the sweep
(or into --out); existing files are never replaced without --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnexp.analysis.table import PaperTable, build_table, collect_wandb, collect_wandb_offline
from attnexp.errors import ConfigError

OUTPUT_FILES: tuple[str, ...] = ("table.md", "table.csv", "table.tex", "plot.png")


def latest_sweep(path: Path) -> Path:
    """The newest sweep directory below ``path`` (``<path>/multirun`` is looked into first).

    Sweep directories are named ``<date>_<time>_<id>``, so the newest sorts last.
    """
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory")
    if (path / "multirun").is_dir():
        path = path / "multirun"
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    # A folder without any run record (a sweep refused or killed before its first job) is
    # not a sweep to tabulate.
    subdirs = [p for p in subdirs if next(p.rglob("metrics.json"), None) is not None]
    if not subdirs:
        raise ConfigError(f"no sweep directories with runs (metrics.json) in {path}")
    return subdirs[-1]


def write_outputs(table: PaperTable, out: Path, force: bool = False) -> list[Path]:
    """Write the four files into ``out``; refuses (ConfigError) if any exists unless ``force``."""
    from attnexp.analysis.plots import bar_chart
    from attnexp.results import atomic_write_text

    targets = [out / name for name in OUTPUT_FILES]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(
            "refusing to overwrite existing files: "
            + ", ".join(str(p) for p in existing)
            + " (use --force to replace them, or --out DIR to write elsewhere)"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", table.to_markdown())
    atomic_write_text(out / "table.csv", table.to_csv())
    atomic_write_text(out / "table.tex", table.to_latex())
    bar_chart(table, out / "plot.png")
    return targets


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnexp-table",
        description="Paper-style tables (mean ± std over seeds, Welch CI vs the baseline, "
        "published numbers) from attnexp run directories.",
    )
    p.add_argument(
        "paths", nargs="*", type=Path, help="sweep or run directories (metrics.json below them)"
    )
    p.add_argument(
        "--latest", action="store_true", help="use only the newest sweep directory under each path"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the files (default: the single input directory)",
    )
    p.add_argument("--force", action="store_true", help="replace existing table files")
    p.add_argument("--no-save", action="store_true", help="print the table only, write no files")
    p.add_argument(
        "--metric",
        choices=("test", "val"),
        default="test",
        help="test error (default) or validation error",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the Welch interval (0.95)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="an override key that does not define a row (repeatable; seed is always ignored)",
    )
    p.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT|DIR",
        default=None,
        help="read runs from the wandb API (ENTITY/PROJECT) instead of run records, or from "
        "the offline wandb files below DIR (wandb/offline-run-*/run-*.wandb)",
    )
    p.add_argument(
        "--group", default=None, help="with --wandb: the run group (e.g. the experiment name)"
    )
    return p


def run(argv: list[str] | None = None) -> PaperTable:
    """The CLI as a function: returns the table (raises ConfigError / FileExistsError)."""
    from rich.console import Console

    args = _parser().parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        raise ConfigError(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.wandb:
        if args.paths:
            raise ConfigError("give either run directories or --wandb, not both")
        out = args.out
        if out is None and not args.no_save:
            raise ConfigError(
                "with --wandb, say where to write the files: --out DIR (or --no-save)"
            )
        if Path(args.wandb).is_dir():
            runs = collect_wandb_offline(args.wandb, args.group, args.ignore)
        else:
            runs = collect_wandb(args.wandb, args.group, args.ignore)
        if not runs:
            raise ConfigError(f"no runs in wandb project {args.wandb!r} group {args.group!r}")
        table = build_table(runs, metric=args.metric, confidence=args.confidence)
    else:
        if not args.paths:
            raise ConfigError("give one or more sweep/run directories (or --wandb ENTITY/PROJECT)")
        for p in args.paths:
            if not p.exists():
                raise ConfigError(f"{p} does not exist")
        paths = [latest_sweep(p) if args.latest else p for p in args.paths]
        table = build_table(
            paths, metric=args.metric, confidence=args.confidence, ignore=args.ignore
        )
        if not table.rows:
            raise ConfigError(
                f"no runs (metrics.json or .hydra/) below {', '.join(map(str, paths))}"
            )
        out = args.out
        if out is None and not args.no_save:
            if len(paths) > 1:
                raise ConfigError(
                    "several inputs: say where to write the files with --out DIR (or --no-save)"
                )
            out = paths[0] if paths[0].is_dir() else paths[0].parent
    console, rich_table = Console(), table.to_rich()
    if not console.is_terminal:  # a pipe or a log file: as wide as the table, never cropped
        console = Console(width=Console(width=1000).measure(rich_table).maximum + 2)
    console.print(rich_table)
    for warning in table.warnings:  # also in the footer; stderr so that logs show it
        print(f"[attnexp-table] warning: {warning}", file=sys.stderr)
    if not args.no_save:
        assert out is not None
        written = write_outputs(table, out, force=args.force)
        print(f"[attnexp-table] wrote {', '.join(p.name for p in written)} to {out}")
    return table


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
    except (ConfigError, FileExistsError) as err:
        from rich.console import Console

        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]attnexp-table:[/bold red] {err}", highlight=False
        )
        sys.exit(2 if isinstance(err, ConfigError) else 1)


if __name__ == "__main__":
    main()
