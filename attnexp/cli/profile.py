"""``attnexp-profile``: the cost of a config, as ``attnexp-train`` would build it.

    attnexp-profile model=resnet50 data=imagenet attention=cbam
    attnexp-profile -m experiment=cbam_table4_imagenet      # one row per job of the sweep
    attnexp-profile --zoo                                   # every module on ResNet-50 at 224
    attnexp-profile --zoo model=resnet20 --no-speed         # costs only, CIFAR ResNet-20

Takes exactly attnexp-train's overrides (composed from the same ``conf/train.yaml``) and
creates no run directory. Prints params, MACs (conv+linear multiply-adds, as papers) and
the same plus the attention-only ops, the activation memory of a training step, and train
/ inference images/s on the device with the precision and memory format shown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from attnexp.runtime import register_resolvers

register_resolvers()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnexp-profile",
        description=__doc__.split("\n\n")[0],
        epilog="Overrides are attnexp-train's, e.g. model=resnet50 attention=se seed=1.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for attnexp-train")
    parser.add_argument("--zoo", action="store_true", help="every registered module, one backbone")
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="expand sweeps (a,b and the preset's)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), help="default: the config's")
    parser.add_argument(
        "--image-size",
        type=int,
        help="input size (default: data.image_size when data or a preset is given, else the "
        "model family's: 224 ImageNet backbones, 32 CIFAR ones)",
    )
    parser.add_argument("--batch", type=int, help="batch for memory and speed (default: small)")
    parser.add_argument("--steps", type=int, help="timed steps (median; default 5, zoo 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2, zoo 1)")
    parser.add_argument("--no-speed", action="store_true", help="costs and memory only")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from attnexp.cli import exit_on_config_error

    return exit_on_config_error("attnexp-profile")(_main)(argv)


def _main(argv: Sequence[str] | None) -> int:
    from rich.console import Console

    from attnexp.analysis import profile as prof
    from attnexp.analysis import profile_report as report
    from attnexp.errors import ConfigError
    from attnexp.models.__main__ import placements_table
    from attnexp.plugins import load_imports

    args = _parser().parse_intermixed_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    zoo = args.zoo
    settings = prof.Settings(
        device=args.device,
        batch=args.batch,
        steps=args.steps or (3 if zoo else 5),
        warmup=args.warmup if args.warmup is not None else (1 if zoo else 2),
        speed=not args.no_speed,
    )
    overrides = list(args.overrides)
    load_imports(overrides)  # imports=[...]: user modules named in the overrides
    if zoo:
        jobs = prof.zoo_jobs(overrides)
    elif args.multirun or any(prof.is_sweep(o) for o in overrides):
        jobs = [(" ".join(swept) or "-", job) for swept, job in prof.sweep_jobs(overrides)]
    else:
        jobs = [("", overrides)]

    results, failed = [], []
    resolved = None
    with prof.hydra_session() as compose:
        configs = [(label, compose(job)) for label, job in jobs]
    for (label, cfg), (_, job) in zip(configs, jobs):
        size, why = prof.choose_image_size(cfg, job, args.image_size)
        if resolved is None:
            resolved = settings.resolved(cfg, size)
            what = resolved.describe() if resolved.speed else f"batch {resolved.batch} (memory)"
            console.print(f"[bold]attnexp-profile[/] {what}", highlight=False)
            console.print(f"input {size}x{size} ({why})", highlight=False)
        try:
            result = prof.profile_config(cfg, resolved, label=label)
        except ConfigError as err:
            if len(jobs) == 1:
                raise
            failed.append(f"{label}: {err}")
            continue
        results.append(result)
        if len(jobs) == 1:
            console.print(report.single_report(result, resolved))
            model = prof.build_from_config(cfg, meta=True)
            if getattr(model, "placed_modules", None):
                console.print(placements_table(model, f"{cfg.model.name} placements"))
        else:
            console.print(f"  {label}: done", highlight=False, style="dim")
    if len(jobs) > 1 and results and resolved is not None:
        title = f"{results[0].model} at {results[0].image_size}x{results[0].image_size}"
        console.print(report.results_table(results, resolved, title=title))
    for line in failed:
        console.print(f"[red]not built[/] {line}", highlight=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": dataclasses.asdict(resolved) if resolved else {},
            "results": [r.as_dict() for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
