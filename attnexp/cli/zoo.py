"""``python -m attnexp.attention``: list the zoo, show a module's options, run its contract.

python -m attnexp.attention                          # every module: kind, costs at C=256, 56x56
python -m attnexp.attention --channels 64 --size 32
python -m attnexp.attention --markdown               # a pasteable table
python -m attnexp.attention show se                  # options, defaults and help of one module
python -m attnexp.attention check my_gate --imports ./my_gate.py   # the contract checks

Costs of one module on a (1, C, H, W) input with its paper-default options; conv-kind modules
as a C->C, stride-1 replacement of a 3x3 conv (compare with ``conv3x3``). MACs are conv+linear
multiply-adds (as papers); attention ops are what those leave out (see
:mod:`attnexp.models.costs`). ``--imports`` (files or module names) loads user code first,
as the ``imports=[...]`` key of ``attnexp-train`` does; installed ``attnexp.plugins`` entry
points are always loaded. Exit codes: 0 ok, 1 a contract check failed, 2 a bad name or input.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnexp.attention import available, build_attention, build_conv, get_spec
from attnexp.attention.contract import run_checks
from attnexp.cli import EXIT_CONFIG, EXIT_OK, EXIT_RUN_FAILED, exit_on_config_error
from attnexp.models.costs import ATTENTION_OPS_CONVENTION, MACS_CONVENTION, count_costs
from attnexp.plugins import import_user_code

PROG = "python -m attnexp.attention"


@dataclass(frozen=True)
class ZooEntry:
    """One row of the listing."""

    name: str
    kind: str
    paper: str
    residual: bool
    memory: str
    identity_start: str
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
        start = "n/a (conv)" if spec.kind == "conv" else getattr(spec.cls, "identity_start", "")
        common = (name, spec.kind, spec.paper, spec.residual, spec.memory, start)
        try:
            with torch.device("meta"):
                module = _build(name, channels, size)
            costs = count_costs(module, (1, channels, size, size))
            rows.append(ZooEntry(*common, costs.params, costs.macs, costs.attention_ops))
        except Exception as err:  # noqa: BLE001 - show the row, say why it has no costs
            message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            rows.append(ZooEntry(*common, None, None, None, message))
    return rows


def _m(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.3f}"


def _console():  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    # Piped or redirected: never wrap lines or split numbers (grep, less -S, files).
    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def _print_table(title: str, header: list[str], lines: list[list[str]], caption: str) -> None:
    from rich.table import Table

    table = Table(title=title, caption=caption)
    numeric = {"params", "MMACs", "MMACs+attn", "default"}
    for col in header:
        table.add_column(col, justify="right" if col in numeric else "left", no_wrap=True)
    for line in lines:
        table.add_row(*line)
    _console().print(table)


def list_zoo(channels: int, size: int, markdown: bool) -> int:
    rows = zoo_entries(channels, size)
    header = ["module", "kind", "residual", "memory", "identity start", "params", "MMACs",
              "MMACs+attn", "paper"]  # fmt: skip
    lines = []
    for r in rows:
        total = None if r.macs is None else r.macs + (r.attention_ops or 0)
        lines.append([
            r.name, r.kind, "yes" if r.residual else "no",
            "O((HW)^2)" if r.memory == "quadratic" else "O(HW)", r.identity_start,
            "n/a" if r.params is None else f"{r.params:,}", _m(r.macs), _m(total),
            r.paper + (f"  [error: {r.error}]" if r.error else ""),
        ])  # fmt: skip
    caption = (
        f"Input 1x{channels}x{size}x{size}; conv kind: {channels}->{channels}, stride 1, "
        f"replacing a 3x3 conv. MMACs: {MACS_CONVENTION}; +attn: also "
        f"{ATTENTION_OPS_CONVENTION}. residual: the module adds its own identity. identity "
        f"start: how placement.init=identity makes it the identity map."
    )
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        print(f"\n{caption}")
        return EXIT_OK
    _print_table(f"attention zoo ({len(rows)} modules)", header, lines, caption)
    return EXIT_OK


def show_module(name: str) -> int:
    """The options of one module: config key, default and help (from its docstring)."""
    spec = get_spec(name)
    defaults, helps = spec.option_defaults(), spec.option_help()
    group = "conv" if spec.kind == "conv" else "attention"
    lines = [
        [o, repr(defaults[o]) if o in defaults else "(required)", helps.get(o, "")]
        for o in spec.option_names()
    ]
    caption = (
        f"{spec.kind}, default position {spec.default_position}; {spec.paper}. Set with "
        f"{group}={name} {group}.<option>=<value>."
    )
    _print_table(f"{name}: {spec.summary()}", ["option", "default", "help"], lines, caption)
    return EXIT_OK


def check_modules(names: Sequence[str]) -> int:
    """The contract checks of each module; 0 if all pass, 1 otherwise."""
    for name in names:
        get_spec(name)  # an unknown name is a config error before any check runs
    failed = 0
    for name in names:
        results = run_checks(name)
        bad = [r for r in results if not r.passed]
        failed += len(bad)
        print(f"{name}: {len(results) - len(bad)}/{len(results)} contract checks passed")
        for r in results:
            mark = "ok  " if r.passed else "FAIL"
            detail = f": {r.message.splitlines()[0][:300]}" if r.message else ""
            print(f"  {mark} {r.check}{detail}")
    return EXIT_RUN_FAILED if failed else EXIT_OK


def _add_imports(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--imports", nargs="+", action="extend", default=[], dest=dest,
        metavar="FILE_OR_MODULE",
        help="user code to import first (files or module names), as imports=[...]",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=256, help="C (default 256)")
    parser.add_argument("--size", type=int, default=56, help="H = W (default 56)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    _add_imports(parser, "imports")
    commands = parser.add_subparsers(dest="command", metavar="{check,show}")
    check = commands.add_parser("check", help="run the contract checks on modules")
    check.add_argument("names", nargs="+", help="registered module names")
    show = commands.add_parser("show", help="the options of one module")
    show.add_argument("name", help="a registered module name")
    for sub in (check, show):
        _add_imports(sub, "command_imports")
    return parser


@exit_on_config_error(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import_user_code([*args.imports, *getattr(args, "command_imports", [])])
    if args.command == "check":
        return check_modules(args.names)
    if args.command == "show":
        return show_module(args.name)
    if args.channels < 1 or args.size < 1:
        print(f"{PROG}: --channels and --size must be >= 1", file=sys.stderr)
        return EXIT_CONFIG
    return list_zoo(args.channels, args.size, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
