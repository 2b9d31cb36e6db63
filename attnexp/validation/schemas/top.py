"""The top level of ``conf/train.yaml``: run identity, seed, ``training.*``, ``paths``,
``table`` (presets) and the names of the config groups (validated by their own schemas)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from attnexp.validation.schema import Schema

#: Config groups with a schema of their own (a dict at the top level).
GROUPS = (
    "data",
    "model",
    "attention",
    "placement",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "paths",
)


class TrainingSchema(Schema):
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0
    no_decay_bn_bias: bool = False
    channels_last: bool | Literal["auto"] = "auto"
    retain_host_memory: bool | Literal["auto"] = "auto"
    compile: bool | Literal["auto"] | dict[str, Any] = Field(
        "auto", description="auto, true, false or a mapping of torch.compile options"
    )
    sync_bn: bool = False
    base_batch_size: Annotated[int, Field(ge=1)] | None = None
    nonfinite_check_every: Annotated[int, Field(ge=1)] = 10
    backbone_lr_mult: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = Field(
        1.0, description="a number > 0 (lr factor of the pretrained weights)"
    )


class PathsSchema(Schema):
    root: str = Field(min_length=1)
    data_dir: str = Field(min_length=1)
    output_dir: str = Field(min_length=1)


class TableSchema(Schema):
    reference: str | None = None
    row: str | int | None = None
    label: str | None = None
    baseline: dict[str, str | int | float | bool | None] | None = Field(
        None, description="null or a mapping of swept key -> the baseline row's value"
    )
    analogue: dict[str, str] | None = Field(
        None, description="null or a mapping of our backbone -> the paper's (a CIFAR analogue)"
    )
    protocol: Literal["from_scratch", "fine_tune", "pretrained"] | None = None


class RecipeEntrySchema(Schema):
    text: str = ""
    max_epochs: Annotated[int, Field(ge=1)] | None = None
    milestones: list[Annotated[int, Field(ge=1)]] | None = None


class RecipeSchema(Schema):
    """A preset's recipe switch: ``source`` picks the ``paper`` or ``official`` entry, which
    the preset's trainer/scheduler keys interpolate."""

    source: Literal["paper", "official"] = "paper"
    paper: RecipeEntrySchema | None = None
    official: RecipeEntrySchema | None = None


class TopSchema(Schema):
    experiment_name: str = Field(
        pattern=r"^[^/\\]+$",
        description="a non-empty name without slashes (it becomes a directory name)",
    )
    seed: Annotated[int, Field(ge=0, lt=2**32)] = Field(
        0, description="an integer in [0, 4294967295]"
    )
    sweep_name: str | None = Field(
        None, description="null or a name grouping the runs of a sweep (wandb group, tables)"
    )
    tags: list[str] = []
    extra_placements: list[dict[str, Any]] = []
    conv: str | dict[str, Any] | None = None
    training: TrainingSchema = TrainingSchema()
    test: bool = True
    resume: str | None = Field(
        None, min_length=1, description="null, or a run directory or .ckpt file to continue"
    )
    imports: list[Annotated[str, Field(min_length=1)]] = []
    table: TableSchema | None = None
    recipe: RecipeSchema | None = None
    # Groups: checked by their own schemas (attnexp.validation.schemas.*).
    data: dict[str, Any]
    model: dict[str, Any]
    attention: dict[str, Any] | None = None
    placement: dict[str, Any] | None = None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    trainer: dict[str, Any]
    callbacks: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    paths: dict[str, Any]
