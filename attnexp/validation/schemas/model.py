"""``model`` (one schema per backbone family), ``placement`` and ``extra_placements``.

Which stages and blocks exist depends on the backbone; that is checked in
:mod:`attnexp.validation.checks` from the backbone's static description, whatever the
attention module (``attention=none`` included). Attention modules and their options are
the attention registry's (``attention=`` / ``conv=`` groups).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from attnexp.models.placement import POSITIONS
from attnexp.validation.schema import Schema

PosInt = Annotated[int, Field(ge=1)]


class _Backbone(Schema):
    name: str
    num_classes: PosInt = 10
    image_size: PosInt | None = None
    in_chans: PosInt = 3
    zero_init_residual: bool = False
    pretrained: str | None = Field(
        None, description="null, torchvision, or a state-dict / attnexp .ckpt file"
    )


class ImageNetResNetSchema(_Backbone):
    stride_position: Literal["v1", "v1.5"] = "v1.5"


class CifarResNetSchema(_Backbone):
    shortcut: Literal["A", "B"] = "A"


class PreActSchema(_Backbone):
    shortcut: Literal["A", "B"] = "B"
    zero_init_residual: Literal[False] = Field(
        False, description="false (pre-activation branches end in a conv, not a BN)"
    )


class WideResNetSchema(PreActSchema):
    dropout: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = 0.0


def backbone_schema(name: str) -> type[Schema]:
    from attnexp.models import model_info

    info = model_info(name)
    if info.family == "imagenet":
        return ImageNetResNetSchema
    if info.family == "cifar":
        return CifarResNetSchema
    return WideResNetSchema if "dropout" in info.options else PreActSchema


Stages = Literal["all"] | Annotated[list[PosInt], Field(min_length=1)]
Blocks = (
    Annotated[str, Field(pattern=r"^(all|first|last|every_[1-9][0-9]*)$")]
    | Annotated[list[int], Field(min_length=1)]
)
BLOCKS_TEXT = "all, first, last, every_K (K >= 1) or a non-empty list of block indices"


class PlacementSchema(Schema):
    position: Literal[POSITIONS] = "auto"  # type: ignore[valid-type]
    stages: Stages = Field("all", description="all or a non-empty list of 1-based stage numbers")
    blocks: Blocks = Field("all", description=BLOCKS_TEXT)
    stage_options: dict[str, list[Any]] = Field(
        default_factory=dict, description="a mapping of module option -> one value per stage"
    )
    init: Literal["default", "identity"] = "default"
    sites: Annotated[list[str], Field(min_length=1)] | None = Field(
        None,
        description="null or a non-empty list of conv names (position conv only), e.g. "
        "[conv1, conv2]; null = the block's 3x3 convs",
    )


class ExtraPlacementSchema(PlacementSchema):
    module: str | dict[str, Any] = Field(
        description="an attention module name or a mapping {name: ..., <options>}"
    )
