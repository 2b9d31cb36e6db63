"""``attnexp-viz``: attention maps, Grad-CAM and training curves of trained runs, as PNG files.

Usage (``key=value`` arguments; ``--key value``, ``--key=value`` and ``--force`` work too)::

    attnexp-viz checkpoint=<run dir or .ckpt> [checkpoint=<path2> ...] images=test n=16 out=viz
    attnexp-viz curves=<run or sweep dir> [curves=<dir2> ...] out=viz

Attention maps (one ``checkpoint=`` per model, shown side by side on the same images):

  images=test         a split of the first run's own data config (train | val | test) or a
                      folder (<class>/<image> layout, or images directly in it)
  n=16                number of images (rows)
  out=viz             output folder: attention_grid.png, <model>_channel.png, <model>_branch.png
                      (out=<file>.png: the grid there, <file>_<model>_channel.png ... beside it)
  maps=last           spatial maps per stage: last (last module of each stage), mean (mean
                      over the stage's modules) or all (one column per module)
  cam=gradcam         gradcam, gradcam++, both (comma-separated) or none
  target_layer=       module name for Grad-CAM (default: the last stage, e.g. layer3)
  which=best          checkpoint of a run dir: best or last
  pick=balanced       which images: balanced (round-robin over classes), first or random
  seed=0              seed of pick=random
  alpha=0.5           opacity of the heat maps over the images
  normalize=minmax    per-image min-max scaling of attention maps (captions give the raw
                      range), or none (raw values in [0, 1])
  channels=heatmap    channel-weight plot: heatmap or hist
  name=attention_grid file name (without .png) of the grid
  device=cpu          cpu or cuda
  threads=0           CPU threads for torch (0 = torch's default; 1 is fastest for small
                      models on a busy, shared machine)
  force=false         overwrite existing files (never done without it)

Curves: ``curves=<dir>`` writes <out>/curves.png (or ``out=<file>.png``): loss and top-1
error vs epoch, train and val, one line per run labelled by its setting.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnexp.cli import exit_on_config_error
from attnexp.errors import ConfigError

MULTI_KEYS = ("checkpoint", "curves")
DEFAULTS: dict[str, str] = {
    "images": "test",
    "n": "16",
    "out": "viz",
    "maps": "last",
    "cam": "gradcam",
    "target_layer": "",
    "which": "best",
    "pick": "balanced",
    "seed": "0",
    "alpha": "0.5",
    "normalize": "minmax",
    "channels": "heatmap",
    "name": "attention_grid",
    "device": "cpu",
    "threads": "0",
    "force": "false",
}
ALIASES = {"checkpoints": "checkpoint", "ckpt": "checkpoint", "image": "images", "output": "out"}
FLAGS = ("force",)


@dataclass
class VizArgs:
    checkpoint: list[str] = field(default_factory=list)
    curves: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))

    def get(self, key: str) -> str:
        return self.options[key]

    def as_int(self, key: str) -> int:
        try:
            return int(self.options[key])
        except ValueError:
            raise ConfigError(f"{key}={self.options[key]!r}: expected an integer") from None

    def as_float(self, key: str) -> float:
        try:
            return float(self.options[key])
        except ValueError:
            raise ConfigError(f"{key}={self.options[key]!r}: expected a number") from None

    def as_bool(self, key: str) -> bool:
        value = self.options[key].lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={self.options[key]!r}: expected true or false")


def parse_args(argv: Sequence[str]) -> VizArgs:
    """``key=value`` / ``--key value`` / ``--key=value`` / ``--force`` into :class:`VizArgs`."""
    args = VizArgs()
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            key = key.replace("-", "_")
            if not eq:
                if key in FLAGS:
                    value = "true"
                elif i < len(tokens):
                    value, i = tokens[i], i + 1
                else:
                    raise ConfigError(f"--{key} needs a value")
        elif "=" in token:
            key, _, value = token.partition("=")
            key = key.lstrip("+").replace("-", "_")
        else:
            raise ConfigError(
                f"unexpected argument {token!r}: arguments are key=value, e.g. checkpoint=<run dir>"
            )
        key = ALIASES.get(key, key)
        if key in MULTI_KEYS:
            getattr(args, key).append(value)
        elif key in DEFAULTS:
            args.options[key] = value
        else:
            raise ConfigError(
                f"unknown option {key!r}; valid: {', '.join([*MULTI_KEYS, *DEFAULTS])}"
            )
    if not args.checkpoint and not args.curves:
        raise ConfigError(
            "nothing to draw: give checkpoint=<run dir or .ckpt> and/or curves=<run or sweep dir>"
        )
    return args


def _check_free(paths: Sequence[Path], force: bool) -> None:
    taken = [str(p) for p in paths if p.exists()]
    if taken and not force:
        raise ConfigError(
            f"would overwrite {', '.join(taken)}; pass force=true (or --force) to replace, or choose another out="
        )


def draw_attention(args: VizArgs) -> list[Path]:
    """The grid (and channel/branch plots) of every checkpoint; returns the files written."""
    from attnexp.analysis.attention_maps import (
        attention_grid,
        branch_figure,
        channel_figure,
        data_info,
        load_images,
        model_panel,
        save_figure,
    )
    from attnexp.analysis.checkpoints import load_models, slug
    from attnexp.analysis.gradcam import CAM_METHODS

    cams = [
        c.strip().lower()
        for c in args.get("cam").split(",")
        if c.strip() and c.strip().lower() != "none"
    ]
    for c in cams:
        if c not in CAM_METHODS:
            raise ConfigError(f"cam={c!r}: valid choices: {', '.join(CAM_METHODS)}, none")
    out = Path(args.get("out")).expanduser()
    force = args.as_bool("force")
    if out.suffix.lower() == ".png":  # out=<file>.png: the grid there, other plots beside it
        grid_path, out, prefix = out, out.parent, f"{out.stem}_"
    else:
        grid_path, prefix = out / f"{args.get('name')}.png", ""
    _check_free([grid_path], force)

    runs = load_models(args.checkpoint, args.get("which"), args.get("device"))
    batch = load_images(
        args.get("images"), runs[0], args.as_int("n"), args.get("pick"), args.as_int("seed")
    )
    panels = [
        model_panel(
            run,
            batch,
            maps=args.get("maps"),
            cams=cams,
            target_layer=args.get("target_layer") or None,
            alpha=args.as_float("alpha"),
            normalize=args.get("normalize"),
            info=data_info(run.cfg),
        )
        for run in runs
    ]
    figures = {grid_path: attention_grid(batch, panels, title=f"images: {batch.source}")}
    for p in panels:
        ch = channel_figure(
            p.modules,
            f"{p.label}: channel attention on {len(batch.names)} images",
            args.get("channels"),
        )
        br = branch_figure(p.modules, f"{p.label}: branch attention on {len(batch.names)} images")
        if ch is not None:
            figures[out / f"{prefix}{slug(p.label)}_channel.png"] = ch
        if br is not None:
            figures[out / f"{prefix}{slug(p.label)}_branch.png"] = br
    _check_free(list(figures), force)
    return [save_figure(fig, path, force=force) for path, fig in figures.items()]


def draw_curves(args: VizArgs) -> Path:
    from attnexp.analysis.curves import plot_curves

    out = Path(args.get("out")).expanduser()
    target = out if out.suffix.lower() == ".png" else out / "curves.png"
    force = args.as_bool("force")
    _check_free([target], force)
    return plot_curves(args.curves, target, force=force)


def run(argv: Sequence[str]) -> list[Path]:
    """Parse ``argv`` and draw; returns the files written."""
    from attnexp.plugins import load_imports

    load_imports(argv)  # imports=[...] (and entry points): user modules of the run
    args = parse_args(argv)
    if args.as_int("threads") > 0:
        import torch

        torch.set_num_threads(args.as_int("threads"))
    written: list[Path] = []
    if args.checkpoint:
        written += draw_attention(args)
    if args.curves:
        written.append(draw_curves(args))
    return written


@exit_on_config_error("attnexp-viz")
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return
    for path in run(argv):
        print(f"[attnexp-viz] wrote {path}")


if __name__ == "__main__":
    main()
