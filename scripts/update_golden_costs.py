"""Regenerate tests/golden/costs.json: params, MACs and attention ops of every preset config.

    python scripts/update_golden_costs.py            # rewrite the file, print what changed
    python scripts/update_golden_costs.py --check    # exit 1 if the file is out of date

Entries: every job of every ``conf/experiment`` preset (its ``hydra.sweeper.params``
expanded, as ``attnexp-train -m experiment=<name>`` runs them) and every ``attention/`` and
``conv/`` config on resnet20 (32x32, 10 classes) and resnet50 (224x224, 1000 classes).
Each entry is keyed by its overrides and stores the backbone spec it composes to (model node,
placements, conv, image size) and the costs at batch 1 (attnexp.models.costs). Commit the
diff together with the change that caused it: an architecture change then shows in review.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attnexp.analysis.profile import (
    backbone_spec,
    golden_jobs,
    golden_record,
    hydra_session,
    spec_costs,
)
from attnexp.models.costs import ATTENTION_OPS_CONVENTION, MACS_CONVENTION

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "costs.json"


def collect(verbose: bool = True) -> dict[str, Any]:
    """Compose every golden job and count its costs (identical specs are counted once)."""
    jobs = golden_jobs()
    entries: dict[str, Any] = {}
    cache: dict[str, Any] = {}
    start = time.time()
    with hydra_session() as compose:
        for i, job in enumerate(jobs, 1):
            spec = backbone_spec(compose(job))
            key = json.dumps(spec, sort_keys=True)
            if key not in cache:
                cache[key] = spec_costs(spec)
            entries[" ".join(job)] = golden_record(spec, cache[key])
            if verbose and (i % 25 == 0 or i == len(jobs)):
                print(
                    f"  {i}/{len(jobs)} configs, {len(cache)} distinct, {time.time() - start:.0f}s"
                )
    return {
        "about": (
            "Costs of every preset config at batch 1 (regenerate: python "
            "scripts/update_golden_costs.py). macs: "
            + MACS_CONVENTION
            + "; attention_ops: "
            + ATTENTION_OPS_CONVENTION
            + "."
        ),
        "generated_with_torch": torch.__version__,
        "configs": dict(sorted(entries.items())),
    }


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two golden payloads' ``configs``."""
    a, b = old.get("configs", {}), new.get("configs", {})
    lines = [f"- removed: {k}" for k in sorted(set(a) - set(b))]
    lines += [f"+ added:   {k}" for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        for field in ("params", "macs", "attention_ops", "input_shape", "spec"):
            if a[k].get(field) != b[k].get(field):
                lines.append(f"~ {k}: {field} {a[k].get(field)} -> {b[k].get(field)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only, do not write")
    parser.add_argument("--output", type=Path, default=GOLDEN)
    args = parser.parse_args(argv)
    old = json.loads(args.output.read_text()) if args.output.exists() else {}
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
