"""Regenerate tests/golden/costs.json: the architecture and costs of every preset config.

    python scripts/update_golden_costs.py            # rewrite the file, print what changed
    python scripts/update_golden_costs.py --check    # exit 1 if the file is out of date

Entries: every job of every ``conf/experiment`` preset (its ``hydra.sweeper.params``
expanded, as ``attnexp-train -m experiment=<name>`` runs them) and every ``attention/`` and
``conv/`` config on resnet20 (32x32, 10 classes) and resnet50 (224x224, 1000 classes).
Each entry is keyed by its overrides and stores the backbone spec it composes to (model node:
backbone and number of classes; placements: attention modules and where they go; conv; image
size) and the costs at batch 1 (attnexp.models.costs). Commit the diff together with the
change that caused it: an architecture change then shows in review.

The test suite checks the file twice: the default suite composes every job again and
compares the spec and the parameter count (seconds); the ``essential`` stage recounts MACs
and attention ops as well (minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from attnexp.models.costs import (
    ATTENTION_OPS_CONVENTION,
    MACS_CONVENTION,
    Costs,
    count_costs,
    count_params,
)

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "costs.json"
REGENERATE = "python scripts/update_golden_costs.py"
#: Backbones on which every attention and conv config is listed.
MODULE_BACKBONES: dict[str, list[str]] = {
    "resnet20": ["model=resnet20"],
    "resnet50": ["model=resnet50", "data=imagenet"],
}
FIELDS = ("params", "macs", "attention_ops", "input_shape", "spec")


# ----------------------------------------------------------------------------- jobs
def preset_jobs(preset: str) -> list[list[str]]:
    """The jobs of ``attnexp-train -m experiment=<preset>``, as override lists."""
    from attnexp.analysis.profile import sweep_jobs

    return [job for _, job in sweep_jobs([f"experiment={preset}"])]


def module_jobs(backbone: str, group: str) -> list[list[str]]:
    """Every option of config group ``group`` (attention, conv) on one backbone."""
    from attnexp.experiments import group_options

    return [[*MODULE_BACKBONES[backbone], f"{group}={name}"] for name in group_options(group)]


def all_jobs() -> list[list[str]]:
    """Every golden job, presets first (duplicates once)."""
    from attnexp.experiments import available_presets

    jobs = [job for preset in available_presets() for job in preset_jobs(preset)]
    for backbone in MODULE_BACKBONES:
        jobs += module_jobs(backbone, "attention") + module_jobs(backbone, "conv")
    return list({key(job): job for job in jobs}.values())


def key(job: Sequence[str]) -> str:
    return " ".join(job)


@contextmanager
def hydra_session() -> Iterator[Callable[[Sequence[str]], DictConfig]]:
    """``compose(overrides)``: ``conf/train.yaml`` composed exactly as ``attnexp-train`` does
    (Hydra initialised once for many jobs)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from attnexp.runtime import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
            yield lambda overrides: compose(config_name="train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- spec, costs
def backbone_spec(cfg: DictConfig) -> dict[str, Any]:
    """What decides the architecture: the model node (backbone, classes, options), the
    placements (modules and where), the conv module and the input size."""
    from attnexp import builders

    data = cfg.get("data") or {}
    model = builders.to_dict(cfg.model)
    return {
        "model": model,
        "placements": builders.placements_from_config(cfg),
        "conv": builders.to_dict(cfg.get("conv")),
        "image_size": int(data.get("image_size") or model.get("image_size") or 224),
    }


def build_spec(spec: dict[str, Any], meta: bool = True) -> torch.nn.Module:
    """The backbone of a spec, untrained (no pretrained weights), on the meta device when
    possible (instant; a module whose init needs real tensors is built normally)."""
    from attnexp.models import build_model

    model_cfg = dict(spec["model"])
    name = model_cfg.pop("name")
    model_cfg.pop("pretrained", None)

    def build() -> torch.nn.Module:
        return build_model(name, placements=spec["placements"], conv=spec["conv"], **model_cfg)

    if meta:
        try:
            with torch.device("meta"):
                return build()
        except Exception:  # noqa: BLE001 - an init that needs real data: build normally
            pass
    return build()


def spec_params(spec: dict[str, Any]) -> int:
    return count_params(build_spec(spec))


def spec_costs(spec: dict[str, Any]) -> Costs:
    """Params, MACs and attention ops of a spec at batch 1."""
    size = int(spec["image_size"])
    return count_costs(build_spec(spec), (1, 3, size, size))


def record(spec: dict[str, Any], costs: Costs) -> dict[str, Any]:
    return {
        "params": costs.params,
        "macs": costs.macs,
        "attention_ops": costs.attention_ops,
        "input_shape": list(costs.input_shape),
        "spec": spec,
    }


# ----------------------------------------------------------------------------- diff
def field_changes(old: Any, new: Any, path: str) -> list[str]:
    """``path.to.field: old -> new`` for every leaf that differs (dicts walked by key,
    lists by index), so a message names the field that changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            out += field_changes(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in field_changes(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def diff(old: dict[str, Any], new: dict[str, Any], fields: Sequence[str] = FIELDS) -> list[str]:
    """Human-readable differences between two golden payloads' ``configs``."""
    a, b = old.get("configs", {}), new.get("configs", {})
    lines = [f"- removed: {k}" for k in sorted(set(a) - set(b))]
    lines += [f"+ added:   {k}" for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        for f in fields:
            lines += [f"~ {k}: {c}" for c in field_changes(a[k].get(f), b[k].get(f), f)]
    return lines


def collect(verbose: bool = True) -> dict[str, Any]:
    """Compose every golden job and count its costs (identical specs are counted once)."""
    jobs = all_jobs()
    entries: dict[str, Any] = {}
    cache: dict[str, Costs] = {}
    start = time.time()
    with hydra_session() as compose:
        for i, job in enumerate(jobs, 1):
            spec = backbone_spec(compose(job))
            spec_key = json.dumps(spec, sort_keys=True)
            if spec_key not in cache:
                cache[spec_key] = spec_costs(spec)
            entries[key(job)] = record(spec, cache[spec_key])
            if verbose and (i % 25 == 0 or i == len(jobs)):
                print(
                    f"  {i}/{len(jobs)} configs, {len(cache)} distinct, {time.time() - start:.0f}s",
                    flush=True,
                )
    return {
        "about": (
            f"Costs of every preset config at batch 1 (regenerate: {REGENERATE}). macs: "
            + MACS_CONVENTION
            + "; attention_ops: "
            + ATTENTION_OPS_CONVENTION
            + "."
        ),
        "generated_with_torch": torch.__version__,
        "configs": dict(sorted(entries.items())),
    }


def load(path: Path = GOLDEN) -> dict[str, Any]:
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only, do not write")
    parser.add_argument("--output", type=Path, default=GOLDEN)
    args = parser.parse_args(argv)
    old = load(args.output) if args.output.exists() else {}
    new = collect()
    changes = diff(old, new)
    print("\n".join(changes) if changes else "no changes")
    if args.check:
        return 1 if changes else 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(new, indent=1, sort_keys=False) + "\n")
    print(f"wrote {args.output} ({len(new['configs'])} configs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
