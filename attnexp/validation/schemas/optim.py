"""``optimizer`` (a Hydra partial of any torch optimiser) and ``scheduler`` (our schedules).

The optimizer group is a pass-through namespace: ``lr`` and the usual hyper-parameters are
typed; any other key must be an argument of the ``_target_`` class.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from attnexp.validation.schema import PassThrough, Schema

Finite = Annotated[float, Field(allow_inf_nan=False)]
Unit = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]


class OptimizerSchema(PassThrough):
    target_: str = Field(
        alias="_target_",
        description="an importable optimiser class, e.g. torch.optim.SGD",
        min_length=1,
    )
    partial_: Literal[True] = Field(
        alias="_partial_",
        description="true (attnexp builds the parameter groups and calls the partial)",
    )
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = Field(
        description="a finite number > 0 (the learning rate)"
    )
    weight_decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    momentum: Unit = 0.0
    dampening: Unit = 0.0
    nesterov: bool = False
    betas: Annotated[list[Unit], Field(min_length=2, max_length=2)] = Field(
        [0.9, 0.999], description="two numbers in [0, 1)"
    )
    eps: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-8
    amsgrad: bool = False
    foreach: bool | None = None
    fused: bool | None = None


SCHEDULE_NAMES = ("constant", "cosine", "multistep", "onecycle")
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class SchedulerSchema(Schema):
    name: Literal[SCHEDULE_NAMES] = "cosine"  # type: ignore[valid-type]
    unit: Literal["epoch", "step"] = "epoch"
    warmup: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = Field(
        0.0, description="a finite number >= 0 (epochs, fractions allowed; or steps)"
    )
    warmup_start: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.1
    final_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.0
    milestones: list[Positive] = Field(
        default_factory=list,
        description="a list of increasing numbers > 0 (epochs, or steps with unit=step), "
        "within the run",
    )
    gamma: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.1  # > 1 grows the lr: legal
    pct_start: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.25
    div_start: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.04
