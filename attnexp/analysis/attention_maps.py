"""Attention maps of any trained model, with no per-module code.

Everything goes through :func:`attnexp.attention.record_attention` and the names and shapes
that zoo modules expose (see :mod:`attnexp.attention.base`):

* 4-D maps (``spatial`` first, then ``position``, then any other (B, k, H, W) map) are
  averaged over their k heads/groups, upsampled bilinearly to the input and overlaid on it;
* ``channel`` (B, C) weights become per-stage heatmaps (blocks x channels) or histograms;
* ``branch`` (B, K) / (B, K, C) weights become per-stage bar charts (blocks x branches).

Modules are grouped by stage from their qualified names: ``layer3.1.attn.after_conv3.0`` is
in ``layer3``, block 1; ``stage_attn.layer2.0`` (between-stage modules such as BAM) is shown
as ``after layer2``. Figures are :class:`matplotlib.figure.Figure` objects built without
pyplot, with an exact pixel size (:func:`grid_pixel_size`), saved by :func:`save_figure`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn

from attnexp.analysis.checkpoints import LoadedModel
from attnexp.analysis.image_sources import (  # noqa: F401  (the public face of map pictures)
    SPLITS,
    DataInfo,
    ImageBatch,
    data_info,
    load_images,
    pick_indices,
    to_input,
)
from attnexp.attention.base import record_attention
from attnexp.errors import ConfigError

MAP_MODES = ("last", "mean", "all")
_STAGE = re.compile(r"^(?P<prefix>(?:.*?\.)?layer(?P<num>\d+))(?:\.(?P<rest>.*))?$")
_SPATIAL_PRIORITY = ("spatial", "position")


# -- capturing maps -----------------------------------------------------------------------------
@dataclass
class ModuleMaps:
    """The maps one zoo module exposed in one forward pass (CPU float tensors)."""

    name: str
    maps: dict[str, torch.Tensor]

    @property
    def stage(self) -> tuple[float, int, str]:
        """Sort key and label of the module's stage group: (stage number, after?, label)."""
        m = _STAGE.match(self.name)
        if m is None:
            return (math.inf, 0, self.name.split(".")[0])
        num, prefix = int(m.group("num")), m.group("prefix")
        after = prefix != f"layer{num}"
        return (num, int(after), f"after layer{num}" if after else prefix)

    @property
    def label(self) -> str:
        """Short name: ``layer3.1 after_conv3`` for ``layer3.1.attn.after_conv3.0``."""
        name = re.sub(r"\.attn\.", " ", self.name)
        return re.sub(r"\.0$", "", name)


def capture(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[ModuleMaps]]:
    """One forward pass in eval mode with recording on: logits and every module's maps."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), record_attention(model) as modules:
            logits = model(x.to(device)).float().cpu()
            found = [
                ModuleMaps(name, {k: v.cpu() for k, v in m.attention_maps.items()})
                for name, m in modules.items()
                if m.attention_maps
            ]
    finally:
        model.train(was_training)
    return logits, found


def spatial_map(maps: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, H, W): the ``spatial`` map, else ``position``, else another 4-D map with H, W > 1;
    heads/groups/channels are averaged."""
    names = [k for k in _SPATIAL_PRIORITY if k in maps] + [
        k for k in maps if k not in _SPATIAL_PRIORITY
    ]
    for k in names:
        v = maps[k]
        if v.ndim == 4 and v.shape[-1] > 1 and v.shape[-2] > 1:
            return v.mean(1)
    return None


def channel_weights(maps: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, C) channel weights, when the module exposes them."""
    v = maps.get("channel")
    return v if v is not None and v.ndim == 2 else None


def branch_weights(maps: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, K) branch weights (averaged over channels for (B, K, C) maps)."""
    v = maps.get("branch")
    if v is None:
        return None
    return v.mean(-1) if v.ndim == 3 else v.reshape(v.shape[0], -1)


def group_by_stage(modules: Sequence[ModuleMaps]) -> list[tuple[str, list[ModuleMaps]]]:
    """Modules grouped by stage, in stage order (between-stage modules after their stage)."""
    groups: dict[tuple[float, int, str], list[ModuleMaps]] = {}
    for m in modules:
        groups.setdefault(m.stage, []).append(m)
    return [(key[2], members) for key, members in sorted(groups.items(), key=lambda kv: kv[0])]


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W), bilinear."""
    hw = (size, size) if isinstance(size, int) else size
    return F.interpolate(maps[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def spatial_columns(
    modules: Sequence[ModuleMaps], size: int, mode: str = "last"
) -> list[tuple[str, torch.Tensor]]:
    """Spatial attention columns ``(title, (B, size, size) raw values)``.

    ``mode``: ``last`` = the last module with a spatial map in each stage, ``mean`` = the mean
    over the stage's modules, ``all`` = one column per module.
    """
    if mode not in MAP_MODES:
        raise ConfigError(f"maps={mode!r}: expected one of {', '.join(MAP_MODES)}")
    columns: list[tuple[str, torch.Tensor]] = []
    for stage, members in group_by_stage(modules):
        with_maps = [(m, s) for m in members if (s := spatial_map(m.maps)) is not None]
        if not with_maps:
            continue
        if mode == "all":
            columns.extend((m.label, upsample(s, size)) for m, s in with_maps)
        elif mode == "mean":
            stacked = torch.stack([upsample(s, size) for _, s in with_maps])
            columns.append((f"{stage} (mean of {len(with_maps)})", stacked.mean(0)))
        else:
            m, s = with_maps[-1]
            columns.append(
                (
                    stage if len(with_maps) == 1 else f"{stage} (last: {m.label.split()[0]})",
                    upsample(s, size),
                )
            )
    return columns


def normalise(maps: torch.Tensor, how: str = "minmax") -> torch.Tensor:
    """Per-image min-max scaling to [0, 1] (``minmax``) or clipping (``none``)."""
    if how == "none":
        return maps.clamp(0, 1)
    if how != "minmax":
        raise ConfigError(f"normalize={how!r}: expected minmax or none")
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-8)


def overlay(
    image: torch.Tensor | np.ndarray,
    heat: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> np.ndarray:
    """Blend a heat map (H, W) in [0, 1] over an RGB image (3, H, W) uint8 or (H, W, 3) in [0, 1]."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3:
        img = img.transpose(1, 2, 0)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    h = heat.detach().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat)
    if h.shape != img.shape[:2]:
        raise ValueError(f"heat map {h.shape} and image {img.shape[:2]} differ in size")
    colour = colormaps[cmap](np.clip(h, 0, 1))[..., :3].astype(np.float32)
    return np.clip((1 - alpha) * img + alpha * colour, 0, 1)


# -- panels: what one model contributes to the grid ---------------------------------------------
@dataclass
class Cell:
    """One image of the grid, with a caption under it."""

    rgb: np.ndarray  # (H, W, 3) float in [0, 1]
    caption: str = ""
    colour: str = "black"


@dataclass
class Column:
    title: str
    cells: list[Cell]


@dataclass
class Panel:
    """Columns of one model (attention maps then CAMs) plus what was computed on the way."""

    label: str
    columns: list[Column]
    modules: list[ModuleMaps]
    probs: torch.Tensor
    cams: dict[str, np.ndarray] = field(default_factory=dict)


def model_panel(
    run: LoadedModel,
    batch: ImageBatch,
    maps: str = "last",
    cams: Sequence[str] = ("gradcam",),
    target_layer: str | None = None,
    alpha: float = 0.5,
    normalize: str = "minmax",
    info: DataInfo | None = None,
) -> Panel:
    """Attention-map and CAM columns of a loaded run on ``batch`` (normalised with the run's
    data statistics and resized to its image size)."""
    info = info or data_info(run.cfg)
    x = to_input(batch.images, info, run.image_size)
    return panel_for(
        run.model, x, batch, info.class_names, run.label, maps, cams, target_layer, alpha, normalize
    )


def panel_for(
    model: nn.Module,
    x: torch.Tensor,
    batch: ImageBatch,
    class_names: Sequence[str],
    label: str,
    maps: str = "last",
    cams: Sequence[str] = ("gradcam",),
    target_layer: str | None = None,
    alpha: float = 0.5,
    normalize: str = "minmax",
) -> Panel:
    """Columns of ``model`` for the model input ``x`` whose displayable images are ``batch``."""
    from attnexp.analysis.gradcam import CAM_TITLES, grad_cam, resolve_target_layer

    size = batch.images.shape[-1]
    logits, modules = capture(model, x)
    probs = logits.softmax(-1)
    pred = probs.argmax(-1).tolist()
    columns = []
    for title, raw in spatial_columns(modules, size, maps):
        heat = normalise(raw, normalize)
        cells = [
            Cell(overlay(batch.images[i], heat[i], alpha), f"{raw[i].min():.2f}-{raw[i].max():.2f}")
            for i in range(len(pred))
        ]
        columns.append(Column(title, cells))
    cam_maps: dict[str, np.ndarray] = {}
    layer_name = resolve_target_layer(model, target_layer)[0] if cams else ""
    for method in cams:
        cam = grad_cam(model, x, method, target_layer)
        if cam.shape[-1] != size:
            cam = upsample(torch.from_numpy(cam), size).clamp(0, 1).numpy()
        cam_maps[method] = cam
        cells = []
        for i, p in enumerate(pred):
            name = class_names[p] if p < len(class_names) else str(p)
            ok = batch.labels[i] is None or batch.labels[i] == p
            cells.append(
                Cell(
                    overlay(batch.images[i], cam[i], alpha),
                    f"{name} {probs[i, p]:.0%}",
                    "black" if ok else "red",
                )
            )
        title = CAM_TITLES.get(method, method) + ("" if target_layer is None else f" @{layer_name}")
        columns.append(Column(title, cells))
    return Panel(label, columns, modules, probs, cam_maps)


# -- the grid -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridLayout:
    """Pixel layout of the grid: cell size, caption height, gaps, header, margin."""

    cell: int = 128
    caption: int = 14
    gap: int = 4
    group_gap: int = 16
    header: int = 40
    margin: int = 8
    dpi: int = 100

    def size(self, n_rows: int, groups: Sequence[int]) -> tuple[int, int]:
        """(width, height) in pixels for ``n_rows`` images and column groups of the given sizes."""
        width = 2 * self.margin + sum(k * self.cell + (k - 1) * self.gap for k in groups)
        width += (len(groups) - 1) * self.group_gap
        height = (
            2 * self.margin
            + self.header
            + n_rows * (self.cell + self.caption)
            + (n_rows - 1) * self.gap
        )
        return width, height


def grid_pixel_size(
    n_rows: int, groups: Sequence[int], layout: GridLayout | None = None
) -> tuple[int, int]:
    """PNG size of :func:`attention_grid` for ``groups`` = [1 (input), columns of model 1, ...]."""
    return (layout or GridLayout()).size(n_rows, groups)


def _new_figure(width: int, height: int, dpi: int) -> Figure:
    # +0.25 px: matplotlib truncates width * dpi, which can lose a pixel to float rounding.
    return Figure(figsize=((width + 0.25) / dpi, (height + 0.25) / dpi), dpi=dpi, facecolor="white")


def attention_grid(
    batch: ImageBatch,
    panels: Sequence[Panel],
    layout: GridLayout | None = None,
    title: str | None = None,
) -> Figure:
    """Rows = images; columns = input | each model's attention maps and CAMs, side by side."""
    lay = layout or GridLayout()
    groups: list[tuple[str, list[Column]]] = [
        (
            "",
            [
                Column(
                    "input",
                    [
                        Cell(img.permute(1, 2, 0).numpy() / 255.0, nm)
                        for img, nm in zip(batch.images, batch.names)
                    ],
                )
            ],
        )
    ]
    for p in panels:
        groups.append(
            (
                p.label,
                p.columns
                or [Column("(no maps)", [Cell(np.ones((2, 2, 3)), "") for _ in batch.names])],
            )
        )
    n = len(batch.names)
    width, height = lay.size(n, [len(cols) for _, cols in groups])
    fig = _new_figure(width, height, lay.dpi)
    if title:
        fig.text(
            lay.margin / width, 1 - 2 / height, title, fontsize=7, va="top", ha="left", color="0.3"
        )
    canvas = np.ones((height, width, 3), dtype=np.float32)
    x = lay.margin
    for label, cols in groups:
        group_w = len(cols) * lay.cell + (len(cols) - 1) * lay.gap
        if label:
            size = 8 if len(label) * 6 < group_w else max(5, int(8 * group_w / (len(label) * 6)))
            fig.text(
                (x + group_w / 2) / width,
                1 - (lay.margin + 12) / height,
                label,
                fontsize=size,
                ha="center",
                va="center",
                weight="bold",
            )
        for col in cols:
            fig.text(
                (x + lay.cell / 2) / width,
                1 - (lay.margin + lay.header - 10) / height,
                col.title,
                fontsize=6.5 if len(col.title) < 24 else 5,
                ha="center",
                va="center",
            )
            for r, cell in enumerate(col.cells):
                y = lay.margin + lay.header + r * (lay.cell + lay.caption + lay.gap)
                canvas[y : y + lay.cell, x : x + lay.cell] = _resize_nearest(cell.rgb, lay.cell)
                if cell.caption:
                    fig.text(
                        (x + lay.cell / 2) / width,
                        1 - (y + lay.cell + lay.caption / 2 + 1) / height,
                        cell.caption,
                        fontsize=6,
                        ha="center",
                        va="center",
                        color=cell.colour,
                    )
            x += lay.cell + lay.gap
        x += lay.group_gap - lay.gap
    # One image holding every cell on one full-figure axes (pixel for pixel at the figure's
    # dpi): much faster than an axes per cell, and it stays aligned with the texts when
    # Jupyter renders the figure with bbox_inches="tight".
    ax = fig.add_axes((0, 0, 1, 1), zorder=0)
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return fig


def _resize_nearest(rgb: np.ndarray, size: int) -> np.ndarray:
    """(h, w, 3) -> (size, size, 3) by nearest-neighbour sampling (pixels stay visible)."""
    h, w = rgb.shape[:2]
    rows = np.minimum((np.arange(size) * h) // size, h - 1)
    cols = np.minimum((np.arange(size) * w) // size, w - 1)
    return np.clip(rgb[rows][:, cols, :3], 0, 1)


def save_figure(fig: Figure, path: str | Path, force: bool = False, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG; refuses to replace an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=true (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or fig.dpi, format="png", facecolor=fig.get_facecolor())
    return path


def figure_to_array(fig: Figure) -> np.ndarray:
    """RGB uint8 (H, W, 3) rendering of ``fig`` (for loggers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# -- channel and branch weights -----------------------------------------------------------------
def _stage_series(
    modules: Sequence[ModuleMaps], pick: Any
) -> list[tuple[str, list[tuple[str, torch.Tensor]]]]:
    out = []
    for stage, members in group_by_stage(modules):
        series = [(m.label, v) for m in members if (v := pick(m.maps)) is not None]
        if series:
            out.append((stage, series))
    return out


def channel_figure(
    modules: Sequence[ModuleMaps], title: str = "", kind: str = "heatmap"
) -> Figure | None:
    """Channel weights per stage: ``heatmap`` (rows = modules, columns = channels, mean over
    the images) or ``hist`` (distribution over images and channels, one line per module).
    ``None`` when no module exposes channel weights."""
    stages = _stage_series(modules, channel_weights)
    if not stages:
        return None
    if kind not in ("heatmap", "hist"):
        raise ConfigError(f"channel plot kind {kind!r}: expected heatmap or hist")
    fig = Figure(figsize=(10, 0.6 + 1.7 * len(stages)), dpi=100, facecolor="white")
    axes = fig.subplots(len(stages), 1, squeeze=False)[:, 0]
    values = torch.cat([v.flatten() for _, s in stages for _, v in s])
    lo, hi = (
        (0.0, 1.0)
        if values.min() >= 0 and values.max() <= 1
        else (float(values.min()), float(values.max()))
    )
    for ax, (stage, series) in zip(axes, stages):
        if kind == "heatmap":
            width = max(v.shape[1] for _, v in series)
            grid = np.full((len(series), width), np.nan, dtype=np.float32)
            for r, (_, v) in enumerate(series):
                grid[r, : v.shape[1]] = v.mean(0).numpy()
            im = ax.imshow(
                grid, aspect="auto", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest"
            )
            ax.set_yticks(range(len(series)), [lbl.split()[0] for lbl, _ in series], fontsize=6)
            ax.set_xlabel("channel", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        else:
            bins = np.linspace(lo, hi, 41)
            for lbl, v in series:
                ax.hist(v.flatten().numpy(), bins=bins, histtype="step", label=lbl.split()[0])
            ax.set_xlabel("channel weight", fontsize=7)
            ax.legend(fontsize=5, ncol=4)
        ax.set_title(
            f"{stage}: channel weights (mean over {series[0][1].shape[0]} images)"
            if kind == "heatmap"
            else f"{stage}: channel weights",
            fontsize=8,
        )
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def branch_figure(modules: Sequence[ModuleMaps], title: str = "") -> Figure | None:
    """Branch/expert weights per stage (SK, split attention, dynamic conv, ...): grouped bars,
    one group per module, one bar per branch (mean over images and channels, std over images
    as error bars). ``None`` when no module exposes branch weights."""
    stages = _stage_series(modules, branch_weights)
    if not stages:
        return None
    fig = Figure(figsize=(10, 0.6 + 1.9 * len(stages)), dpi=100, facecolor="white")
    axes = fig.subplots(len(stages), 1, squeeze=False)[:, 0]
    for ax, (stage, series) in zip(axes, stages):
        k = max(v.shape[1] for _, v in series)
        width = 0.8 / k
        for b in range(k):
            means = [float(v[:, b].mean()) if b < v.shape[1] else 0.0 for _, v in series]
            stds = [
                float(v[:, b].std()) if b < v.shape[1] and v.shape[0] > 1 else 0.0
                for _, v in series
            ]
            ax.bar(
                np.arange(len(series)) + (b - (k - 1) / 2) * width,
                means,
                width,
                yerr=stds,
                label=f"branch {b}",
                capsize=1.5,
                error_kw={"elinewidth": 0.6},
            )
        ax.set_xticks(range(len(series)), [lbl.split()[0] for lbl, _ in series], fontsize=6)
        ax.set_ylabel("weight", fontsize=7)
        ax.set_title(f"{stage}: branch weights ({k} branches)", fontsize=8)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
