"""``data``: one schema per dataset (``data.name``), with the keys its builder reads.

A key of another dataset (``data.num_workers`` on the in-memory synthetic data) is an
unknown key, not silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from attnexp.validation.schema import Schema

PosInt = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]
Triple = Annotated[list[float], Field(min_length=3, max_length=3)]
STATS = "null or a list of 3 numbers (R, G, B)"


class RandAugmentSchema(Schema):
    num_ops: Annotated[int, Field(ge=0)] = 2
    magnitude: Annotated[int, Field(ge=0, le=30)] = 9


Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class AugmentSchema(Schema):
    """``data.augment`` (attnexp.data.augment)."""

    mixup_alpha: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    cutmix_alpha: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    mix_prob: Probability = 1.0
    switch_prob: Probability = 0.5
    randaugment: RandAugmentSchema | None = None
    trivialaugment: bool = False
    random_erasing: Probability = 0.0


class _Common(Schema):
    augment: AugmentSchema | None = None
    num_classes: PosInt = 10
    image_size: PosInt = 32
    batch_size: PosInt = Field(128, description="an integer >= 1 (per device)")
    global_batch: PosInt | None = Field(
        None, description="null or an integer >= 1 (over all devices; sets data.batch_size)"
    )
    eval_batch_size: PosInt | None = None
    pad: NonNeg = 0
    cutout: NonNeg = 0
    storage: Literal["device", "cpu"] = "device"
    shuffle_seed: Seed = 0


class SyntheticSchema(_Common):
    name: Literal["synthetic"]
    image_size: Annotated[int, Field(ge=8)] = 32
    num_train: PosInt = 5000
    num_val: PosInt = 1000
    num_test: PosInt = 1000
    data_seed: Seed = 0
    flip: Literal[False] = Field(
        False, description="false (a flip changes the class of the synthetic shapes)"
    )


class _Limits(Schema):
    """``num_train`` / ``num_val`` / ``num_test`` on a real dataset: a cap, null = all."""

    num_train: PosInt | None = Field(None, description="null (all) or an integer >= 1")
    num_val: PosInt | None = Field(None, description="null (all) or an integer >= 1")
    num_test: PosInt | None = Field(None, description="null (all) or an integer >= 1")


class CifarSchema(_Limits, _Common):
    name: Literal["cifar10", "cifar100"]
    root: str = Field(min_length=1)
    download: bool = True
    image_size: Literal[32] = Field(32, description="32 (CIFAR images are 32x32)")
    val_size: Annotated[int, Field(ge=0, lt=50000)] = 0
    split_seed: Seed = 0
    flip: bool = True
    mean: Triple | None = Field(None, description=STATS)
    std: Triple | None = Field(None, description=STATS)


class FolderSchema(_Limits, _Common):
    name: Literal["imagefolder", "imagenet"]
    root: str = Field(min_length=1)
    train_split: str = Field("train", min_length=1)
    val_split: str | None = None
    test_split: str = Field("test", min_length=1)
    val_size: NonNeg = 0
    split_seed: Seed = 0
    recipe: Literal["cifar", "imagenet"] = "cifar"
    in_memory: Literal["auto", True, False] = "auto"
    memory_limit_gb: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 4.0
    flip: bool = True
    mean: Triple | None = Field(None, description=STATS)
    std: Triple | None = Field(None, description=STATS)
    resize_size: PosInt | None = None
    rrc_scale: Annotated[
        list[Annotated[float, Field(gt=0.0, le=1.0)]], Field(min_length=2, max_length=2)
    ] = Field([0.08, 1.0], description="two numbers in (0, 1], low <= high")
    num_workers: NonNeg | None = None
    prefetch_factor: PosInt = 2
    cache_dir: str | None = None
    skip_corrupt: bool = False


DATASETS: dict[str, type[Schema]] = {
    "synthetic": SyntheticSchema,
    "cifar10": CifarSchema,
    "cifar100": CifarSchema,
    "imagefolder": FolderSchema,
    "imagenet": FolderSchema,
}
