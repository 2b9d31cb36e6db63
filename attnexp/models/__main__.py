"""Print where attention modules land in a backbone, with channels and parameter counts.

python -m attnexp.models resnet50 --attention se --position after_conv3
python -m attnexp.models resnet50 --attention eca --stage-option kernel_size=3,5,5,7
python -m attnexp.models resnet50 --attention bam --conv sk --option reduction=16
python -m attnexp.models resnet50 --conv mhsa --conv-stages 4            # BoT50
python -m attnexp.models resnet18 --conv dynamic_conv --conv-sites conv1,conv2,downsample
python -m attnexp.models --list
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from attnexp.errors import ConfigError
from attnexp.models.base import Backbone
from attnexp.models.factory import available_models, build_model, model_info
from attnexp.models.placement import POSITIONS


def _value(text: str) -> Any:
    """A Python literal if it parses as one (3, 0.5, True, [3, 5], None), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _pairs(items: Sequence[str], flag: str, per_stage: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = [_value(v) for v in text.split(",")] if per_stage else _value(text)
    return out


def _selection(text: str) -> Any:
    """``all``/``first``/``every_2`` stay strings; ``1,2`` becomes [1, 2]."""
    if text.replace(",", "").replace("-", "").isdigit():
        return [int(v) for v in text.split(",")]
    return text


def placements_table(model: Backbone, title: str = "") -> Table:
    """One row per placed module plus parameter totals."""
    table = Table(title=title or None, show_footer=True)
    total = sum(p.numel() for p in model.parameters())
    placed = sum(r.params for r in model.placed_modules)
    columns = ("stage", "block", "position", "module", "channels", "map", "params", "path")
    # no_wrap: a piped listing (a wide console) must never split a number over two lines
    for col in columns:
        justify = "right" if col in ("stage", "block", "channels", "map", "params") else "left"
        table.add_column(col, justify=justify, no_wrap=True)
    for r in model.placed_modules:
        channels = (
            str(r.in_channels)
            if r.in_channels == r.out_channels
            else f"{r.in_channels}->{r.out_channels}"
        )
        table.add_row(
            str(r.stage),
            "-" if r.block is None else str(r.block),
            r.position,
            r.module + (" (own residual)" if r.residual else ""),
            channels,
            f"{r.size}x{r.size}" + ("" if r.out_size == r.size else f"->{r.out_size}x{r.out_size}"),
            f"{r.params:,}",
            r.path,
        )
    table.columns[0].footer = "total"
    table.columns[3].footer = f"{len(model.placed_modules)} modules"
    table.columns[6].footer = f"{placed:,}"
    table.columns[7].footer = f"backbone {total - placed:,} + placed {placed:,} = {total:,}"
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attnexp.models", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", nargs="?", help="backbone name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the backbones and exit")
    parser.add_argument("--attention", help="attention module to place (registry name)")
    parser.add_argument("--position", default="auto", choices=POSITIONS)
    parser.add_argument("--stages", default="all", help="all or 1-based numbers, e.g. 2,3")
    parser.add_argument("--blocks", default="all", help="all | first | last | every_K | 0,2")
    parser.add_argument("--option", action="append", default=[], help="module option K=V")
    parser.add_argument(
        "--stage-option", action="append", default=[], help="per-stage option K=V1,V2,..."
    )
    parser.add_argument("--conv", help="conv module replacing the block's 3x3 convs (--conv-sites)")
    parser.add_argument("--conv-sites", help="convs to replace, e.g. conv1,conv2,downsample")
    parser.add_argument("--conv-stages", default="all", help="all or 1-based stages, e.g. 4")
    parser.add_argument("--conv-option", action="append", default=[], help="conv option K=V")
    parser.add_argument("--num-classes", type=int, help="default: 1000 ImageNet, 10 CIFAR")
    parser.add_argument("--image-size", type=int, help="default: 224 ImageNet, 32 CIFAR")
    parser.add_argument(
        "--backbone-option", action="append", default=[], help="backbone option K=V"
    )
    return parser


def _list_models(console: Console) -> None:
    table = Table(title="backbones")
    for col in ("name", "family", "block", "blocks/stage", "channels", "options"):
        table.add_column(col)
    for name in available_models():
        info = model_info(name)
        options = ", ".join(f"{k}={v!r}" for k, v in info.options.items())
        table.add_row(
            name,
            info.family,
            info.block,
            str(list(info.blocks_per_stage)),
            str(list(info.stage_channels)),
            options,
        )
    console.print(table)


def listing_console() -> Console:
    """The terminal's width on a terminal; when piped or redirected a wide console, so rich
    never wraps a row and splits a number across lines (``| grep``, ``> file``)."""
    return Console() if sys.stdout.isatty() else Console(width=250, soft_wrap=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = listing_console()
    if args.list or not args.model:
        _list_models(console)
        return 0
    try:
        info = model_info(args.model)
        placements = []
        if args.attention:
            module = {"name": args.attention, **_pairs(args.option, "--option")}
            placements.append(
                {
                    "module": module,
                    "position": args.position,
                    "stages": _selection(args.stages),
                    "blocks": _selection(args.blocks),
                    "stage_options": _pairs(args.stage_option, "--stage-option", True),
                }
            )
        conv = None
        if args.conv:
            conv = {"name": args.conv, **_pairs(args.conv_option, "--conv-option")}
            conv["stages"] = _selection(args.conv_stages)
            if args.conv_sites:
                conv["sites"] = args.conv_sites.split(",")
        image_size = args.image_size or info.default_image_size
        model = build_model(
            args.model,
            num_classes=args.num_classes or info.default_num_classes,
            placements=placements,
            conv=conv,
            image_size=image_size,
            **_pairs(args.backbone_option, "--backbone-option"),
        )
    except ConfigError as err:
        Console(stderr=True).print(f"[bold red]config error:[/] {err}", highlight=False)
        return 2
    console.print(placements_table(model, f"{args.model} placements (image_size {image_size})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
