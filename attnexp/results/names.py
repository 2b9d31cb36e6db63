"""A run's names on dashboards: group = the sweep, name = what was swept + the seed.

A wandb project fills with sweeps; a dashboard only shows an ablation when each sweep is
one group and its runs are told apart by what varied. For a job of ``attnexp-train -m
attention=se,none optimizer.lr=0.1,0.05 seed=0,1``:

* group: ``sweep_name`` when given, else ``<experiment>/<sweep dir name>`` (a single run:
  the experiment name);
* name: the swept values plus the seed, e.g. ``attention=se,lr=0.05,s1`` (a key is
  shortened to its last part when that stays unambiguous); unique within the sweep. A
  single run: ``<model>-<attention>,s<seed>``;
* tags: the swept ``key=value`` pairs, then the model, attention and dataset names and the
  config's own ``tags``.

Which keys were swept comes from the sweep's ``multirun.yaml`` (Hydra writes it before the
first job starts): command-line overrides with sweep syntax (``a,b``, ``range()``,
``choice()``, ``glob()``) plus the sweeper's ``params`` (the presets' sweeps).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from attnexp.results.record import RunNames

#: Override keys that never name a run (the seed is appended as ``s<seed>``).
IGNORED_KEYS: frozenset[str] = frozenset({"seed", "launcher", "resume", "sweep_name"})
IGNORED_PREFIXES: tuple[str, ...] = ("hydra.", "paths.")
MULTIRUN_FILE = "multirun.yaml"
#: wandb's limit for one tag.
MAX_TAG = 64


def _key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def is_ignored(key: str) -> bool:
    key = key.lstrip("+~")
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _is_sweep(value: str) -> bool:
    """Whether an override value is a sweep (``a,b``, ``range(...)``, ``glob(...)``...)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(f"k={value}")
        return bool(parsed.is_sweep_override())
    except Exception:  # an unusual value: treat commas outside brackets as a sweep
        return "," in value and not value.strip().startswith(("[", "{"))


def swept_keys(sweep_dir: str | Path | None) -> list[str] | None:
    """Keys a multirun sweeps over, from ``<sweep_dir>/multirun.yaml``; None if unknown."""
    if sweep_dir is None:
        return None
    import yaml

    try:
        data = yaml.safe_load((Path(sweep_dir) / MULTIRUN_FILE).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    hydra = data.get("hydra") or {}
    keys = [str(k) for k in ((hydra.get("sweeper") or {}).get("params") or {})]
    for item in (hydra.get("overrides") or {}).get("task") or []:
        item = str(item)
        if "=" in item and _is_sweep(item.split("=", 1)[1]):
            keys.append(_key(item))
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """``optimizer.lr`` -> ``lr`` unless another key ends the same way."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def run_names(
    experiment: str | None,
    overrides: Sequence[str],
    *,
    seed: int | None,
    sweep_dir: str | Path | None = None,
    swept: Iterable[str] | None = None,
    sweep_name: str | None = None,
    model: str | None = None,
    attention: str | None = None,
    dataset: str | None = None,
    extra_tags: Iterable[str] = (),
    job_type: str = "train",
) -> RunNames:
    """Names of a run from its overrides (see the module docstring).

    ``swept``: the swept keys when known; otherwise they are read from the sweep dir's
    ``multirun.yaml``, and failing that every override (seed and bookkeeping keys aside)
    counts.
    """
    setting: dict[str, str] = {}
    for item in overrides:
        if "=" in str(item) and not is_ignored(_key(str(item))):
            setting[_key(str(item))] = str(item).split("=", 1)[1]
    keys = list(swept) if swept is not None else swept_keys(sweep_dir)
    if keys is not None:
        setting = {k: v for k, v in setting.items() if k in set(keys)}
    short = _short_keys(list(setting))
    if sweep_dir is None and swept is None:  # a single run: what it is, not what was typed
        parts = ["-".join(str(p) for p in (model, attention) if p)]
        parts = [p for p in parts if p]
    else:
        parts = [f"{short[k]}={v}" for k, v in setting.items()]
    if seed is not None:
        parts.append(f"s{seed}")
    if sweep_name:
        group = str(sweep_name)
    elif sweep_dir is not None:
        group = f"{experiment or 'default'}/{Path(sweep_dir).name}"
    else:
        group = experiment or "default"
    tags = [f"{k}={v}" for k, v in setting.items()]
    tags += [t for t in (model, attention, dataset, *extra_tags) if t]
    tags = list(dict.fromkeys(str(t)[:MAX_TAG] for t in tags))
    return RunNames(group=group, name=",".join(parts) or "run", tags=tags, job_type=job_type)
