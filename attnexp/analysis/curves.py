"""Training curves from the CSV logs of one run or a whole sweep.

Lightning's CSVLogger writes one row per logging call, so an epoch's train and val values
sit on different rows (and the final test row has an epoch of its own); :func:`read_curves`
merges them into one value per epoch and metric. :func:`curves_figure` draws loss and top-1
error against epoch, train dashed and val solid, one colour per run, labelled by the run's
setting (the overrides that differ between the runs).

Only comparable runs share a figure (:func:`check_comparable`): the same dataset and recipe
(optimizer, schedule, epochs, image size). A 10-epoch cosine schedule beside a 5-epoch one
shows the schedules, not the modules.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from attnexp.analysis.checkpoints import setting_labels
from attnexp.errors import ConfigError
from attnexp.results import RunDir, RunRecord
from attnexp.results.rundir import CSV_DIR, CSV_METRICS

#: (panel title, metric without the split prefix)
PANELS: tuple[tuple[str, str], ...] = (("loss", "loss"), ("top-1 error (%)", "top1_err"))
SPLITS: tuple[str, ...] = ("train", "val")
CURVES_SIZE: tuple[int, int] = (1200, 450)  # PNG size in pixels


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def read_curves(csv_path: str | Path) -> dict[str, dict[int, float]]:
    """``{metric: {epoch: value}}`` for the train/val metrics of a CSVLogger file (last value
    of each epoch wins)."""
    curves: dict[str, dict[int, float]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = _float(row.get("epoch"))
            if epoch is None:
                continue
            for key, value in row.items():
                v = _float(value)
                if key and key.startswith(tuple(f"{s}/" for s in SPLITS)) and v is not None:
                    curves.setdefault(key, {})[int(epoch)] = v
    return curves


def metrics_csv(run_dir: Path) -> Path | None:
    """The run's CSV log (:attr:`RunDir.metrics_csv`), else the newest ``metrics.csv`` below
    it (logs of Lightning's own CSVLogger: ``version_N/``)."""
    direct = RunDir(run_dir).metrics_csv
    if direct.is_file():
        return direct
    found = sorted(run_dir.rglob(CSV_METRICS), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _run_dir_of_csv(path: Path) -> Path:
    run = RunDir.of(path.parent)
    if run is not None:
        return run.path
    return path.parent.parent if path.parent.name.startswith((CSV_DIR, "version_")) else path.parent


def _record_of(run_dir: Path) -> RunRecord | None:
    """The run's record, or one made from its saved config (a run still going)."""
    run = RunDir(run_dir)
    try:
        return run.read_record()
    except (OSError, ValueError, TypeError):
        pass
    from omegaconf import OmegaConf

    cfg = run.load_config()
    if cfg is None:
        return None
    config = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(config, dict)
    model, data = config.get("model") or {}, config.get("data") or {}
    return RunRecord(config=config, model=model.get("name"), dataset=data.get("name"))


def check_comparable(runs: Sequence[Path]) -> None:
    """ConfigError when the runs differ in dataset or recipe (runs without a record or a
    config are not checked)."""
    from attnexp.analysis.table.model import facets

    seen: dict[str, dict[str, list[str]]] = {"dataset": {}, "recipe": {}}
    for run in runs:
        record = _record_of(run)
        if record is None:
            continue
        for facet, value in facets(record).items():
            if facet in seen:
                seen[facet].setdefault(value, []).append(run.name)
    for facet, values in seen.items():
        if len(values) > 1:
            listed = "; ".join(f"{v}: {', '.join(names)}" for v, names in values.items())
            raise ConfigError(
                f"curves: these runs differ in {facet} ({listed}); curves of different "
                f"{facet}s are not comparable. Plot them separately"
            )


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories with a CSV log below ``paths`` (a run dir, a sweep dir, a folder of runs)."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ConfigError(f"curves: {path} does not exist")
        if path.is_file() and path.suffix == ".csv":
            hits = [path]
        else:
            hits = sorted(path.rglob("metrics.csv"))
        for hit in hits:
            run = _run_dir_of_csv(hit)
            if run not in runs:
                runs.append(run)
    if not runs:
        raise ConfigError(
            f"curves: no CSV logs (metrics.csv) below {', '.join(str(p) for p in paths)}; "
            f"train with logger=csv (the default)"
        )
    return runs


def curves_figure(runs: Sequence[Path], title: str = "") -> Figure:
    """Loss and top-1 error vs epoch (1-based: after that many epochs), train and val, one
    colour per run."""
    labels = setting_labels(runs)
    width, height = CURVES_SIZE
    fig = Figure(figsize=((width + 0.25) / 100, (height + 0.25) / 100), dpi=100, facecolor="white")
    axes = fig.subplots(1, len(PANELS))
    fig.subplots_adjust(
        left=0.06, right=0.74 if len(runs) > 1 else 0.98, bottom=0.13, top=0.86, wspace=0.25
    )
    colours = [f"C{i % 10}" for i in range(len(runs))]
    plotted = 0
    for run, colour in zip(runs, colours):
        csv_path = metrics_csv(run) if run.is_dir() else run
        if csv_path is None:
            continue
        curves = read_curves(csv_path)
        for ax, (_, metric) in zip(axes, PANELS):
            for split, style in zip(SPLITS, ("--", "-")):
                series = curves.get(f"{split}/{metric}")
                if not series:
                    continue
                epochs = sorted(series)
                ax.plot(
                    [e + 1 for e in epochs],
                    [series[e] for e in epochs],
                    style,
                    color=colour,
                    marker="o",
                    markersize=3,
                    linewidth=1.2,
                )
                plotted += 1
    if plotted == 0:
        raise ConfigError(
            f"curves: no train/val metrics in the CSV logs of {', '.join(str(r) for r in runs)}"
        )
    for ax, (panel, _) in zip(axes, PANELS):
        ax.set_xlabel("epoch")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, marker="o", markersize=3, label=labels.get(r, r.name))
        for r, c in zip(runs, colours)
    ]
    handles += [
        Line2D([], [], color="0.3", linestyle=st, label=sp) for sp, st in zip(SPLITS, ("--", "-"))
    ]
    if len(runs) > 1:
        fig.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(0.75, 0.5),
            fontsize=7,
            frameon=False,
        )
    else:
        axes[-1].legend(handles=handles[1:], fontsize=7)
    fig.suptitle(
        title
        or ("train (dashed) and val (solid)" + (f": {labels[runs[0]]}" if len(runs) == 1 else "")),
        fontsize=10,
    )
    return fig


def plot_curves(paths: Iterable[str | Path], out: str | Path, force: bool = False) -> Path:
    """Write the curves of every run below ``paths`` to ``out`` (a .png file or a folder)."""
    from attnexp.analysis.attention_maps import save_figure

    runs = find_runs(paths)
    check_comparable(runs)
    out = Path(out)
    target = out if out.suffix.lower() == ".png" else out / "curves.png"
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=true (--force) to overwrite it")
    return save_figure(curves_figure(runs), target, force=force)
