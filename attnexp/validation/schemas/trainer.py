"""``trainer``: keyword arguments of ``lightning.Trainer`` (a pass-through namespace).

The arguments we rely on are typed here; any other key must be an argument of
``lightning.Trainer`` (checked against its signature). ``callbacks``, ``logger`` and
``plugins`` are built from their own config groups, so they are refused here.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Annotated, Literal

from pydantic import Field

from attnexp.builders import PRECISIONS
from attnexp.validation.schema import PassThrough

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
#: Arguments set from other groups (callbacks=, logger=) or by attnexp itself.
MANAGED = ("callbacks", "logger", "plugins")

PosInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


@cache
def strategies() -> tuple[str, ...]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


@cache
def trainer_arguments() -> tuple[str, ...]:
    import lightning as L

    params = inspect.signature(L.Trainer.__init__).parameters
    return tuple(p for p in params if p != "self" and p not in MANAGED)


class TrainerSchema(PassThrough):
    accelerator: Literal[ACCELERATORS] = "auto"  # type: ignore[valid-type]
    devices: (
        PosInt
        | Literal[-1, "auto"]
        | list[Annotated[int, Field(ge=0)]]
        | Annotated[str, Field(pattern=r"^\d+(,\d+)*,?$")]
    ) = Field(
        1,
        description="an integer >= 1, -1 (all), auto, a list of device ids or a string like '0,1'",
    )
    num_nodes: PosInt = 1
    strategy: str = Field("auto", description="auto or a Lightning strategy name")
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    max_epochs: Annotated[int, Field(ge=-1)] | None = Field(
        None,
        description="an integer >= 1, or -1 with trainer.max_steps > 0 (the run length is then "
        "max_steps)",
    )
    min_epochs: Annotated[int, Field(ge=0)] | None = None
    max_steps: Annotated[int, Field(ge=-1)] = Field(
        -1, description="-1 (no step limit) or an integer >= 1"
    )
    min_steps: Annotated[int, Field(ge=0)] | None = None
    accumulate_grad_batches: PosInt = 1
    gradient_clip_val: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    gradient_clip_algorithm: Literal["norm", "value"] | None = "norm"
    deterministic: bool | Literal["warn"] | None = None
    benchmark: bool | None = None
    log_every_n_steps: PosInt | None = None
    check_val_every_n_epoch: PosInt | None = 1
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] | None = None
    enable_model_summary: bool | None = None
    enable_progress_bar: bool | None = None
    enable_checkpointing: bool | None = None
    fast_dev_run: bool | Annotated[int, Field(ge=0)] = False
    limit_train_batches: Annotated[int, Field(ge=0)] | Fraction | None = None
    limit_val_batches: Annotated[int, Field(ge=0)] | Fraction | None = None
    limit_test_batches: Annotated[int, Field(ge=0)] | Fraction | None = None
    limit_predict_batches: Annotated[int, Field(ge=0)] | Fraction | None = None
    overfit_batches: Annotated[int, Field(ge=0)] | Fraction = 0.0
    val_check_interval: PosInt | Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    sync_batchnorm: bool = False
    default_root_dir: str | None = None
    reload_dataloaders_every_n_epochs: Annotated[int, Field(ge=0)] = 0
    detect_anomaly: bool = False
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    barebones: bool = False
