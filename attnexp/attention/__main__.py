"""List the attention zoo: kind, paper, residual, memory growth, params and cost per module.

python -m attnexp.attention                     # C=256 at 56x56 (a ResNet-50 stage-1 output)
python -m attnexp.attention --channels 64 --size 32
python -m attnexp.attention --markdown          # a pasteable table

Costs of one module on a (1, C, H, W) input with its paper-default options; conv-kind modules
as a C->C, stride-1 replacement of a 3x3 conv (compare with ``conv3x3``). MACs are conv+linear
multiply-adds (as papers); attention ops are what those leave out (see
:mod:`attnexp.models.costs`).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnexp.attention.registry import available, build_attention, build_conv, get_spec
from attnexp.models.costs import ATTENTION_OPS_CONVENTION, MACS_CONVENTION, count_costs


@dataclass(frozen=True)
class ZooEntry:
    """One row of the listing."""

    name: str
    kind: str
    paper: str
    residual: bool
    memory: str
    params: int | None
    macs: int | None
    attention_ops: int | None
    error: str = ""


def _build(name: str, channels: int, size: int) -> torch.nn.Module:
    spec = get_spec(name)
    options = {}
    if "feature_size" in inspect.signature(spec.cls.__init__).parameters:
        options["feature_size"] = size  # what a placement fills in at its position
    if spec.kind == "conv":
        return build_conv(name, channels, channels, 1, **options)
    return build_attention(name, channels, **options)


def zoo_entries(channels: int = 256, size: int = 56) -> list[ZooEntry]:
    """Every registered module with its costs on a (1, channels, size, size) input."""
    rows = []
    for name in available():
        spec = get_spec(name)
        try:
            with torch.device("meta"):
                module = _build(name, channels, size)
            costs = count_costs(module, (1, channels, size, size))
            row = ZooEntry(name, spec.kind, spec.paper, spec.residual, spec.memory,
                           costs.params, costs.macs, costs.attention_ops)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - show the row, say why it has no costs
            message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            row = ZooEntry(name, spec.kind, spec.paper, spec.residual, spec.memory,
                           None, None, None, message)  # fmt: skip
        rows.append(row)
    return rows


def _m(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnexp.attention", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--channels", type=int, default=256, help="C (default 256)")
    parser.add_argument("--size", type=int, default=56, help="H = W (default 56)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    rows = zoo_entries(args.channels, args.size)
    header = ["module", "kind", "residual", "memory", "params", "MMACs", "MMACs+attn", "paper"]
    lines = []
    for r in rows:
        total = None if r.macs is None else r.macs + (r.attention_ops or 0)
        lines.append([
            r.name, r.kind, "yes" if r.residual else "no",
            "O((HW)^2)" if r.memory == "quadratic" else "O(HW)",
            "n/a" if r.params is None else f"{r.params:,}", _m(r.macs), _m(total),
            r.paper + (f"  [error: {r.error}]" if r.error else ""),
        ])  # fmt: skip
    caption = (
        f"Input 1x{args.channels}x{args.size}x{args.size}; conv kind: {args.channels}->"
        f"{args.channels}, stride 1, replacing a 3x3 conv. MMACs: {MACS_CONVENTION}; "
        f"+attn: also {ATTENTION_OPS_CONVENTION}. residual: the module adds its own identity."
    )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        print(f"\n{caption}")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"attention zoo ({len(rows)} modules)", caption=caption)
    for col in header:
        table.add_column(
            col, justify="right" if col in ("params", "MMACs", "MMACs+attn") else "left"
        )
    for line in lines:
        table.add_row(*line)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
