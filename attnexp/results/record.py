"""The typed run record: what one training run was and what it measured.

:class:`RunRecord` is what ``<run dir>/metrics.json`` holds (``RunRecord.to_dict()`` /
``RunRecord.from_dict()``), what ``attnexp-table`` groups, and what the wandb collector
rebuilds. The JSON is versioned (``schema_version``); :func:`migrate` upgrades older files,
so every reader sees the current shape.

Schema history:

* **1** (the first release): ``attention`` was only the module's name, so conv modules and
  extra placements were invisible to tables.
* **2**: ``attention`` is the full :class:`AttentionSpec` (module, options, position,
  stages/blocks, conv module and its sites, extra placements); ``names`` holds the
  dashboard names (:class:`RunNames`); ``training`` gained ``per_device_batch``,
  ``world_size`` and ``global_batch``.

Unknown keys (a newer writer, a field someone added) are kept in ``extras`` and written
back, so reading and re-writing a record never loses data.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 2

#: Keys of a placement entry that say *where* a module goes; everything else is an option.
PLACEMENT_KEYS: tuple[str, ...] = ("position", "stages", "blocks", "stage_options", "sites")

_T = TypeVar("_T")


def _known(cls: type[_T], data: Mapping[str, Any] | None) -> _T:
    """``cls(**data)`` keeping only the fields ``cls`` declares (flat dataclasses)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in dict(data or {}).items() if k in names})


def _plain(value: Any) -> Any:
    """OmegaConf nodes and tuples -> plain JSON-able containers."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


# --------------------------------------------------------------------------- attention
@dataclass
class ModuleSpec:
    """One module at one kind of site: a gate (placement) or a conv replacement."""

    name: str = "none"
    options: dict[str, Any] = field(default_factory=dict)
    position: str | None = None
    stages: Any = None  # "all" or a list of 1-based stage indices
    blocks: Any = None  # "all" | "first" | "last" | "every_k" | a list of block indices
    stage_options: dict[str, Any] = field(default_factory=dict)
    sites: list[str] | None = None  # conv modules: the convs of a block they replace
    #: Other keys of the placement node (e.g. ``init: identity``).
    placement: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, module: Any, placement: Mapping[str, Any] | None = None
    ) -> ModuleSpec | None:
        """From a module node (``{name, <options>}`` or a bare name) and its placement keys
        (which may also sit inside the module node, as in ``conv.sites``)."""
        module = _plain(module)
        if module in (None, "", "none", {}):
            return None
        node = {"name": module} if isinstance(module, str) else dict(module)
        if node.get("name") in (None, "", "none"):
            return None
        where = {**{k: node.pop(k) for k in PLACEMENT_KEYS if k in node}, **_plain(placement or {})}
        other = {k: v for k, v in where.items() if k not in PLACEMENT_KEYS}
        name = str(node.pop("name", "none"))
        return cls(
            name=name,
            options=node,
            position=where.get("position"),
            stages=where.get("stages"),
            blocks=where.get("blocks"),
            stage_options=dict(where.get("stage_options") or {}),
            sites=list(where["sites"]) if where.get("sites") is not None else None,
            placement=other,
        )

    def label(self) -> str:
        """``cbam``, ``cbam@after_conv2``, ``sk[conv1,conv2]``, ``bam@between_stages[2,3]``."""
        text = self.name
        if self.sites:
            text += _short(self.sites)
        if self.position not in (None, "auto", "conv"):
            text += f"@{self.position}"
        if self.stages not in (None, "all"):
            text += f" stages={_short(self.stages)}"
        if self.blocks not in (None, "all"):
            text += f" blocks={_short(self.blocks)}"
        if self.placement.get("init") not in (None, "default"):
            text += f" init={self.placement['init']}"
        return text


@dataclass
class AttentionSpec:
    """Everything inserted into the backbone: the ``attention`` module with its placement,
    the conv module (``conv``) and every ``extra_placements`` entry."""

    main: ModuleSpec | None = None
    conv: ModuleSpec | None = None
    extra: list[ModuleSpec] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The ``attention`` module's name (``none`` without one): the v1 ``attention`` field."""
        return self.main.name if self.main is not None else "none"

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> AttentionSpec:
        """From a composed (or saved) run config: ``attention`` + ``placement``, ``conv``,
        ``extra_placements``."""
        cfg = _plain(config) or {}
        extras = []
        for entry in cfg.get("extra_placements") or []:
            if isinstance(entry, Mapping):
                place = {k: v for k, v in entry.items() if k != "module"}
                spec = ModuleSpec.from_config(entry.get("module"), place)
                if spec is not None:
                    extras.append(spec)
        return cls(
            main=ModuleSpec.from_config(cfg.get("attention"), cfg.get("placement") or {}),
            conv=ModuleSpec.from_config(cfg.get("conv")),
            extra=extras,
        )

    def label(self) -> str:
        """One line for tables and summaries: ``se + conv=sk[conv2] + bam@between_stages``."""
        parts = [self.main.label() if self.main is not None else "none"]
        if self.conv is not None:
            parts.append(f"conv={self.conv.label()}")
        parts += [spec.label() for spec in self.extra]
        return " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> AttentionSpec:
        data = dict(data or {})

        def spec(node: Any) -> ModuleSpec | None:
            return _known(ModuleSpec, node) if isinstance(node, Mapping) else None

        return cls(
            main=spec(data.get("main")),
            conv=spec(data.get("conv")),
            extra=[s for s in (spec(n) for n in data.get("extra") or []) if s is not None],
        )


# --------------------------------------------------------------------------- measurements
@dataclass
class FinalMetrics:
    """The trainer's metrics after the last epoch (validation and the last train epoch)."""

    val_top1_err: float | None = None
    val_top5_err: float | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    train_top1_err: float | None = None


@dataclass
class BestMetrics:
    """The best validation top-1 error and its (0-based) epoch: the checkpoint tested."""

    val_top1_err: float | None = None
    epoch: int | None = None


@dataclass
class TestMetrics:
    """Test split errors; ``checkpoint`` is ``best``, ``final`` (no checkpointing) or None."""

    top1_err: float | None = None
    top5_err: float | None = None
    loss: float | None = None
    checkpoint: str | None = None
    checkpoint_file: str | None = None


@dataclass
class Costs:
    """Model size and compute for one image at the run's input size."""

    params: int | None = None
    macs: int | None = None
    attention_ops: int | None = None
    input_shape: list[int] | None = None
    counter: str | None = None


@dataclass
class Throughput:
    fit_seconds: float | None = None
    train_images_per_s: float | None = None
    device: str | None = None
    precision: str | None = None


@dataclass
class TrainingInfo:
    """How the run trained: the effective lr and batch, EMA, and every resume."""

    lr: float | None = None
    per_device_batch: int | None = None
    world_size: int | None = None
    global_batch: int | None = None
    ema: bool = False
    ema_decay: float | None = None
    resumed_from: str | None = None
    resumed_at: dict[str, int] | None = None
    #: Every resume of this run dir so far: [{checkpoint, epoch, global_step, reason}].
    resumes: list[dict[str, Any]] = field(default_factory=list)
    #: training.compile: {setting, compiled, reason, failed, eager/compiled step seconds}.
    compile: dict[str, Any] | None = None


@dataclass
class HydraInfo:
    """What the user typed: the chosen config files, the overrides, the job of a sweep."""

    choices: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    job_num: int | None = None
    sweep_dir: str | None = None


@dataclass
class RunNames:
    """The run's names on dashboards (wandb) and in the CSV log's hparams.

    ``group``: the sweep (``sweep_name``, else ``<experiment>/<sweep dir name>``; a single
    run: the experiment); ``name``: the swept values plus the seed, unique within the sweep;
    ``tags``: the swept ``key=value`` pairs and keys; ``job_type``: ``train`` or ``eval``.
    """

    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"


@dataclass
class ErrorInfo:
    """Why a run did not complete (``status`` failed or interrupted)."""

    type: str = "Error"
    message: str = ""
    epoch: int | None = None
    global_step: int | None = None
    traceback: str | None = None
    hint: str | None = None


# --------------------------------------------------------------------------- the record
_NESTED: dict[str, type] = {
    "final": FinalMetrics,
    "best": BestMetrics,
    "test": TestMetrics,
    "costs": Costs,
    "throughput": Throughput,
    "training": TrainingInfo,
    "hydra": HydraInfo,
    "names": RunNames,
}


@dataclass
class RunRecord:
    """One run. ``status``: completed | failed | interrupted (see :mod:`attnexp.run`)."""

    status: str = "completed"
    experiment: str | None = None
    run_dir: str | None = None
    seed: int | None = None
    model: str | None = None
    dataset: str | None = None
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    epochs: int | None = None
    global_step: int | None = None
    final: FinalMetrics = field(default_factory=FinalMetrics)
    best: BestMetrics = field(default_factory=BestMetrics)
    test: TestMetrics = field(default_factory=TestMetrics)
    costs: Costs = field(default_factory=Costs)
    throughput: Throughput = field(default_factory=Throughput)
    training: TrainingInfo = field(default_factory=TrainingInfo)
    wall_seconds: float | None = None
    hydra: HydraInfo = field(default_factory=HydraInfo)
    names: RunNames = field(default_factory=RunNames)
    #: The resolved config as the run used it (None when it could not be resolved).
    config: dict[str, Any] | None = None
    version: str | None = None
    git_commit: str | None = None
    torch: str | None = None
    error: ErrorInfo | None = None
    #: Keys this version does not know, kept so a re-write loses nothing.
    extras: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``metrics.json``): ``schema_version`` first, extras last."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            if f.name in ("schema_version", "extras"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, AttentionSpec):
                out[f.name] = value.to_dict()
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        if self.error is None:
            del out["error"]
        out.update({k: v for k, v in self.extras.items() if k not in out})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        """From the JSON form of any schema version (older ones are migrated first)."""
        data = migrate(data)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known or key in ("extras", "schema_version"):
                continue
            if key in _NESTED:
                kwargs[key] = _known(_NESTED[key], value if isinstance(value, Mapping) else {})
            elif key == "attention":
                kwargs[key] = AttentionSpec.from_dict(value)
            elif key == "error":
                kwargs[key] = _known(ErrorInfo, value) if isinstance(value, Mapping) else None
            else:
                kwargs[key] = value
        extras = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extras=extras)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        return cls.from_dict(json.loads(text))

    # -- views -----------------------------------------------------------------------------
    def error_rates(self, metric: str = "test") -> tuple[float | None, float | None]:
        """(top-1, top-5) error: the test split, or for ``val`` the best validation top-1
        with the final validation top-5 (the final top-1 when no best was recorded)."""
        if metric == "test":
            return self.test.top1_err, self.test.top5_err
        top1 = self.best.val_top1_err
        return (top1 if top1 is not None else self.final.val_top1_err), self.final.val_top5_err

    def summary_line(self) -> str:
        """One line a user can paste: what ran, the errors, the cost and the time."""

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.2f}"

        what = f"{self.model}+{self.attention.label()} on {self.dataset} seed={self.seed}" + (
            f" ({self.names.name})" if self.names.name else ""
        )
        if self.status != "completed":
            err = self.error or ErrorInfo()
            where = (
                "before training"
                if self.global_step is None
                else f"at epoch {self.epochs}, step {self.global_step}"
            )
            return (
                f"[attnexp] {self.status.upper()} {what} {where}: "
                f"{err.type}: {err.message} -> {self.run_dir}"
            )
        params = f"{self.costs.params:,}" if self.costs.params is not None else "n/a"
        macs = f"{self.costs.macs / 1e6:.1f}" if self.costs.macs is not None else "n/a"
        return (
            f"[attnexp] {what}: "
            f"test top1/top5 err {fmt(self.test.top1_err)}/{fmt(self.test.top5_err)}%, "
            f"best val top1 err {fmt(self.best.val_top1_err)}%, "
            f"{params} params, {macs} MMACs, "
            f"{self.epochs} epochs in {self.wall_seconds or 0:.0f}s -> {self.run_dir}"
        )


# --------------------------------------------------------------------------- migration
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 recorded the attention module's name only; rebuild the full description from the
    saved config when there is one (conv and extra placements included)."""
    out = dict(data)
    name = out.get("attention")
    config = out.get("config")
    if isinstance(config, Mapping) and (
        "attention" in config or "conv" in config or "extra_placements" in config
    ):
        spec = AttentionSpec.from_config(config)
    else:
        spec = AttentionSpec(main=ModuleSpec.from_config(name))
    out["attention"] = spec.to_dict()
    out["schema_version"] = 2
    return out


_MIGRATIONS = {1: _v1_to_v2}


def migrate(data: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a record upgraded to :data:`SCHEMA_VERSION` (files without a
    version are version 1). A newer version than this code knows is refused."""
    out = dict(data)
    version = int(out.get("schema_version") or 1)
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"run record schema_version {version} is newer than this attnexp understands "
            f"({SCHEMA_VERSION}); upgrade attnexp to read it"
        )
    while version < SCHEMA_VERSION:
        out = _MIGRATIONS[version](out)
        version = int(out["schema_version"])
    return out


def as_record(value: RunRecord | Mapping[str, Any]) -> RunRecord:
    """A :class:`RunRecord` from a record or its JSON form."""
    return value if isinstance(value, RunRecord) else RunRecord.from_dict(value)


def overrides_setting(overrides: Sequence[str]) -> dict[str, str]:
    """``["a=1", "+b=x"]`` -> ``{"a": "1", "b": "x"}`` (``+``/``~`` prefixes dropped)."""
    out: dict[str, str] = {}
    for item in overrides:
        if "=" in item:
            key, value = str(item).split("=", 1)
            out[key.lstrip("+~")] = value
    return out
