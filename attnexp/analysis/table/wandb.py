"""Table runs from wandb: the API (online) or the run files wandb writes offline.

attnexp logs every run the same way (:func:`attnexp.run._log_config`): the resolved config
as top-level keys, plus ``costs``, ``hydra`` (``choices``, ``overrides``, ``job_num``,
``sweep_dir``) and ``run`` (the dashboard names); the summary holds the final numbers
(``status``, ``test/top1_err``, ``best/val_top1_err``, ``costs/params``...). The collector
takes any run-like objects with ``.id``, ``.name``, ``.group``, ``.tags``, ``.state``,
``.config`` and ``.summary`` (wandb's public-API ``Run`` has them; :class:`WandbRun` is
the same read from an offline ``run-<id>.wandb`` file) and rebuilds each run's typed
record from them, so a sweep collected from wandb gives the same rows as its directories.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from attnexp.analysis.table.collect import RunResult, run_from_record
from attnexp.errors import ConfigError
from attnexp.results import (
    AttentionSpec,
    BestMetrics,
    Costs,
    FinalMetrics,
    HydraInfo,
    RunNames,
    RunRecord,
    TestMetrics,
)

#: Keys attnexp adds to the logged config beside the resolved config itself.
LOGGED_EXTRAS: tuple[str, ...] = ("costs", "hydra", "run", "_wandb")


class RunLike(Protocol):
    """What the collector reads of a wandb run (wandb.apis.public.Run has all of it)."""

    id: str
    name: str | None
    group: str | None
    tags: Any
    state: str
    config: Any
    summary: Any


@dataclass
class WandbRun:
    """A wandb run read from its offline files (the same fields as the public API's Run)."""

    id: str
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str | None = None
    project: str | None = None
    state: str = "running"
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# --------------------------------------------------------------------------- offline files
_BLOCK = 32768  # the transaction log is LevelDB's log format: 32 KiB blocks
_HEADER = 7  # per record: crc32 (4), length (2), type (1); the file starts with ":W&B" + 3


def _payloads(data: bytes) -> Iterator[bytes]:
    """The records' payloads of a ``run-<id>.wandb`` file (full/first/middle/last chunks)."""
    if not data.startswith(b":W&B"):
        raise ValueError("not a wandb transaction log (no ':W&B' header)")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            break
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            yield pending + chunk
            pending = b""


def _set(target: dict[str, Any], key: str, nested: Iterable[str], value_json: str) -> None:
    path = list(nested) or [key]
    node = target
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = json.loads(value_json)


def read_offline_run(path: str | Path) -> WandbRun:
    """A run from its ``run-<id>.wandb`` file (or the ``offline-run-*`` dir holding it)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise ConfigError(f"{path} holds no run-*.wandb file")
        path = files[0]
    run = WandbRun(id=path.stem.removeprefix("run-"), path=path)
    history: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for payload in _payloads(path.read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.id, run.project = r.run_id or run.id, r.project or None
            run.name, run.group = r.display_name or None, r.run_group or None
            run.tags, run.job_type = list(r.tags), r.job_type or None
            for item in r.config.update:
                _set(run.config, item.key, item.nested_key, item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                _set(run.config, item.key, item.nested_key, item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "history":
            for item in rec.history.item:
                key = "/".join(item.nested_key) or item.key
                history[key] = json.loads(item.value_json)
        elif kind == "exit":
            run.state = "finished" if rec.exit.exit_code == 0 else "failed"
    run.summary = {**history, **summary}  # as wandb: the last logged value unless set
    run.config.pop("_wandb", None)
    return run


def find_offline_runs(root: str | Path) -> list[Path]:
    """``run-<id>.wandb`` files below ``root`` (offline runs and local copies of online ones)."""
    return sorted(Path(root).rglob("run-*.wandb"))


# --------------------------------------------------------------------------- records
def _wandb_status(state: str) -> str:
    """A wandb run state as a record status."""
    if state == "finished":
        return "completed"
    return "failed" if state in ("crashed", "failed", "killed") else "missing"


def _number(summary: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    return None


def record_from_wandb(run: RunLike) -> RunRecord:
    """The typed record of a run logged by attnexp, from its config and summary."""
    logged = dict(run.config or {})
    config = {k: v for k, v in logged.items() if k not in LOGGED_EXTRAS}
    summary = dict(run.summary or {})
    costs = logged.get("costs") if isinstance(logged.get("costs"), Mapping) else {}
    hydra = logged.get("hydra") if isinstance(logged.get("hydra"), Mapping) else {}
    names = logged.get("run") if isinstance(logged.get("run"), Mapping) else {}

    def name_of(key: str) -> str | None:
        node = config.get(key)
        return str(node.get("name")) if isinstance(node, Mapping) and "name" in node else None

    status = summary.get("status")
    return RunRecord(
        status=str(status) if status else _wandb_status(run.state),
        experiment=config.get("experiment_name"),
        seed=config.get("seed"),
        model=name_of("model"),
        dataset=name_of("data"),
        attention=AttentionSpec.from_config(config),
        test=TestMetrics(
            top1_err=_number(summary, "test/top1_err"),
            top5_err=_number(summary, "test/top5_err"),
            loss=_number(summary, "test/loss"),
            checkpoint=summary.get("test/checkpoint"),
        ),
        best=BestMetrics(val_top1_err=_number(summary, "best/val_top1_err")),
        final=FinalMetrics(
            val_top1_err=_number(summary, "val/top1_err"),
            val_top5_err=_number(summary, "val/top5_err"),
        ),
        costs=Costs(
            params=costs.get("params", _number(summary, "costs/params")),
            macs=costs.get("macs", _number(summary, "costs/macs")),
            attention_ops=costs.get("attention_ops"),
        ),
        hydra=HydraInfo(
            choices=dict(hydra.get("choices") or {}),
            overrides=[str(o) for o in hydra.get("overrides") or []],
            job_num=hydra.get("job_num"),
            sweep_dir=hydra.get("sweep_dir"),
        ),
        names=RunNames(
            group=run.group or names.get("group"),
            name=run.name or names.get("name"),
            tags=list(run.tags or names.get("tags") or []),
            job_type=getattr(run, "job_type", None) or names.get("job_type") or "train",
        ),
        config=config,
    )


def collect_runs(
    runs: Iterable[RunLike], source: str, ignore: Iterable[str] = ()
) -> list[RunResult]:
    """Table runs from run-like objects (API runs or :class:`WandbRun`), in the given order."""
    out = []
    for i, wrun in enumerate(runs):
        record = record_from_wandb(wrun)
        run = run_from_record(f"wandb:{source}/{wrun.id}", record, ignore)
        if wrun.state != "finished" and run.status == "completed":
            run.status = _wandb_status(wrun.state)
            run.note = f"wandb run state {wrun.state!r}"
        run.order = (0, source, record.hydra.job_num if record.hydra.job_num is not None else i)
        out.append(run)
    return sorted(out, key=lambda r: r.order)


def collect_wandb_offline(
    root: str | Path, group: str | None = None, ignore: Iterable[str] = ()
) -> list[RunResult]:
    """Runs below ``root`` read from their offline wandb files, optionally one group."""
    runs = [read_offline_run(p) for p in find_offline_runs(root)]
    if group is not None:
        runs = [r for r in runs if r.group == group]
    return collect_runs(runs, str(root), ignore)


def collect_wandb(
    project: str, group: str | None = None, ignore: Iterable[str] = ()
) -> list[RunResult]:
    """Runs of a wandb project (``entity/project``), optionally one group, from the API.
    Needs network access and a wandb login; raises ConfigError saying so otherwise."""
    try:
        import wandb

        api = wandb.Api(timeout=30)
        found = list(api.runs(project, filters={"group": group} if group else None))
    except Exception as err:
        raise ConfigError(
            f"cannot read runs of wandb project {project!r}"
            + (f" group {group!r}" if group else "")
            + f" ({type(err).__name__}: {err}). attnexp-table --wandb needs network access and "
            "a wandb login (`wandb login` or WANDB_API_KEY); offline, pass the run or sweep "
            "directories instead (or --wandb <dir> to read their offline wandb files)"
        ) from None
    return collect_runs(found, project, ignore)
