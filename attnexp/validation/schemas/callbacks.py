"""``callbacks`` and ``logger``: mappings of name -> ``{_target_: class, <arguments>}``.

Each entry is a pass-through namespace for its class: its arguments are checked against
the class's signature (before anything is instantiated, so a bad value is our message, not
Hydra's ``InstantiationException``), and the arguments of our own callbacks and loggers are
typed here with their ranges.
"""

from __future__ import annotations

import importlib
import inspect
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import Field

from attnexp.validation.schema import PassThrough

PosInt = Annotated[int, Field(ge=1)]
Target = Field(alias="_target_", min_length=1, description="an importable class path")


class _Entry(PassThrough):
    target_: str = Target
    enabled: bool = True


class ModelCheckpointSchema(_Entry):
    dirpath: str | None = None
    filename: str | None = None
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    save_last: bool | Literal["link"] | None = None
    save_top_k: Annotated[int, Field(ge=-1)] = 1
    every_n_epochs: Annotated[int, Field(ge=0)] | None = None
    every_n_train_steps: Annotated[int, Field(ge=0)] | None = None
    auto_insert_metric_name: bool = True
    enable_version_counter: bool = True


class PreemptionSchema(_Entry):
    dirpath: str
    every_n_train_steps: PosInt | None = None
    filename: str = "last"


class EMASchema(_Entry):
    decay: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.9999
    warmup: bool = True
    every_n_steps: PosInt = 1


class PreciseBNSchema(_Entry):
    num_batches: PosInt = 50


class ProgressSchema(_Entry):
    mode: Literal["auto", "rich", "plain"] = "auto"
    every_seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 30.0  # 0: off
    every_n_steps: PosInt | None = None
    leave: bool = False


class LearningRateMonitorSchema(_Entry):
    logging_interval: Literal["step", "epoch"] | None = None


class AttentionMapsSchema(_Entry):
    n: PosInt = 8
    cams: list[Literal["gradcam", "gradcam++"]] = ["gradcam"]
    maps: Literal["last", "mean", "all"] = "last"
    target_layer: str | None = None
    key: str = Field("attention_maps", min_length=1)
    save_path: str | None = None


class CSVLoggerSchema(_Entry):
    save_dir: str
    name: str = "csv"
    version: str | int = ""


class WandbLoggerSchema(_Entry):
    project: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = []
    save_dir: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    init_timeout: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 30.0
    log_checkpoint: bool = False


#: Typed schemas by ``_target_``; other targets get :class:`_Entry` + the signature check.
BY_TARGET: dict[str, type[_Entry]] = {
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpointSchema,
    "attnexp.training.callbacks.PreemptionCheckpoint": PreemptionSchema,
    "attnexp.training.callbacks.EMA": EMASchema,
    "attnexp.training.precise_bn.PreciseBN": PreciseBNSchema,
    "lightning.pytorch.callbacks.LearningRateMonitor": LearningRateMonitorSchema,
    "attnexp.training.progress.progress_bar": ProgressSchema,
    "attnexp.analysis.wandb_viz.AttentionMapLogger": AttentionMapsSchema,
    "attnexp.training.loggers.CSVLogger": CSVLoggerSchema,
    "attnexp.training.loggers.WandbLogger": WandbLoggerSchema,
}


def entry_schema(target: Any) -> type[_Entry]:
    return BY_TARGET.get(str(target), _Entry)


@cache
def import_target(path: str) -> Any:
    """The class named by a ``_target_`` (raises ImportError/AttributeError)."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not a dotted path")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def accepted_arguments(obj: Any) -> set[str] | None:
    """Keyword arguments ``obj(...)`` takes (following ``**kwargs`` up the class hierarchy);
    None when it takes any keyword."""
    classes = list(inspect.getmro(obj)) if inspect.isclass(obj) else [obj]
    names: set[str] = set()
    for cls in classes:
        func = cls.__init__ if inspect.isclass(cls) else cls
        if func is object.__init__:
            break
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            return None
        names |= {
            n
            for n, p in params.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
        if not inspect.isclass(cls):
            return None
    return None
