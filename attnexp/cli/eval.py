"""``attnexp-eval``: evaluate trained checkpoints without training.

    attnexp-eval checkpoint=<run dir>                 # its best checkpoint, its own test split
    attnexp-eval checkpoint=<run dir> which=last      # last.ckpt instead
    attnexp-eval checkpoint=<file.ckpt> data=cifar10 data.root=/data   # on another dataset
    attnexp-eval checkpoint=<sweep dir>               # every run of a sweep -> one table
    attnexp-eval 'checkpoint=[runA,runB,runC]'        # several runs -> one table

Special keys: ``checkpoint=`` (a run dir, a ``.ckpt``, a sweep dir, or a list ``[a,b]``),
``which=best|last`` (the checkpoint of a run dir; default best), ``split=test|val``,
``out=<dir>`` (where the table of several checkpoints goes; default ``eval-<time>/`` in the
sweep dir, or in the current dir). Everything else is a Hydra override of the *run's
recorded config* (``.hydra/config.yaml``), as on ``attnexp-train``: ``data=<dataset>``
replaces the dataset, ``data.eval_batch_size=1000`` or ``trainer.accelerator=gpu`` set a
value.

Each evaluation is written to a new ``<run dir>/eval-<time>.json`` (top-1/top-5 error in
percent, loss, the checkpoint, the run's recorded test numbers). Exit codes: 0 done; 2 a
config error (a missing, corrupt or mismatched checkpoint: the message names the file and
what does not match); 1 any other failure.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Sequence
from pathlib import Path

from attnexp.errors import ConfigError

SPECIAL = ("checkpoint", "which", "split", "out")


def parse_args(argv: Sequence[str]) -> tuple[dict[str, object], list[str]]:
    """Split the special keys from the Hydra overrides; ``checkpoint`` becomes a list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    options: dict[str, object] = {"checkpoint": [], "which": "best", "split": "test", "out": None}
    overrides: list[str] = []
    parser = OverridesParser.create()
    for item in argv:
        key = item.split("=", 1)[0].lstrip("+")
        if key not in SPECIAL:
            overrides.append(item)
            continue
        if "=" not in item:
            raise ConfigError(f"{item}: expected {key}=<value>")
        try:
            override = parser.parse_overrides([item])[0]
        except Exception as err:  # Hydra's grammar error: keep its message, not its traceback
            raise ConfigError(f"cannot parse {item!r}: {err}") from None
        if key == "checkpoint":
            if override.is_sweep_override():
                values = list(override.sweep_string_iterator())
            else:
                value = override.value()
                values = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            options["checkpoint"].extend(values)  # type: ignore[union-attr]
        else:
            options[key] = str(override.value())
    if not options["checkpoint"]:
        raise ConfigError(
            "which checkpoint? give checkpoint=<run dir | .ckpt | sweep dir | [a,b,...]>"
        )
    return options, overrides


def _table_dir(targets: Sequence[str], out: object) -> Path:
    if out:
        return Path(str(out)).expanduser()
    stamp = _dt.datetime.now().strftime("eval-%Y-%m-%d_%H-%M-%S_%f")
    from attnexp.results import RunDir

    if len(targets) == 1 and Path(targets[0]).is_dir() and not RunDir(targets[0]).is_run():
        return Path(targets[0]) / stamp  # a sweep dir: the table beside its runs
    return Path.cwd() / stamp


def run(argv: Sequence[str]) -> list:
    """Evaluate; print one line per checkpoint (and the table for several)."""
    from attnexp.analysis.evaluate import evaluate, results_table

    options, overrides = parse_args(argv)
    targets = [str(t) for t in options["checkpoint"]]  # type: ignore[union-attr]
    results = evaluate(targets, overrides, str(options["which"]), str(options["split"]))
    for r in results:
        recorded = ""
        if r.recorded.get("top1_err") is not None and not overrides:
            recorded = f" (recorded {r.recorded['top1_err']:.2f}/{r.recorded['top5_err']:.2f})"
        print(
            f"[attnexp-eval] {r.checkpoint} on {r.dataset} {r.split} ({r.images} images): "
            f"top-1/top-5 err {r.top1_err:.2f}/{r.top5_err:.2f}%{recorded}, loss {r.loss:.4f} "
            f"-> {r.path}"
        )
    if len(results) > 1:
        from rich.console import Console

        from attnexp.cli.table import write_outputs

        table = results_table(results)
        Console().print(table.to_rich())
        folder = _table_dir(targets, options["out"])
        for path in write_outputs(table, folder):
            print(f"[attnexp-eval] wrote {path}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    from attnexp.cli import print_config_error, print_run_error
    from attnexp.runtime import register_resolvers

    register_resolvers()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return
    try:
        from attnexp.plugins import load_imports

        load_imports(argv)  # imports=[...] (and entry points) before any composition
        run(argv)
    except (ConfigError, FileExistsError) as err:
        print_config_error(ConfigError(str(err)), "attnexp-eval")
        sys.exit(2)
    except Exception as err:  # an evaluation that crashed: say what, exit 1
        print_run_error(err, "attnexp-eval")
        sys.exit(1)


if __name__ == "__main__":
    main()
