"""Datasets by name: ``build_datamodule(cfg.data)``.

Each builder takes the ``data`` config mapping (plain containers) and returns a
LightningDataModule with ``num_classes``, ``image_size``, ``name``, ``class_names`` and
``split_sizes``; in-memory ones also have ``splits`` (uint8 tensors), and every folder
dataset has ``skipped_files`` (corrupt files skipped under ``data.skip_corrupt=true``).
Builders import their module on first use, so ``import attnexp.data`` stays cheap.

=============  ===========================================  =========================
name           source                                       path
=============  ===========================================  =========================
synthetic      generated from a seed (attnexp.data.synthetic) in memory
cifar10/100    torchvision's pickle batches (download)       in memory
imagefolder    <root>/<split>/<class>/<image>                in memory or streaming
imagenet       ILSVRC-2012 as an ImageFolder                 streaming
=============  ===========================================  =========================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L

from attnexp.errors import choices_error

Builder = Callable[[Mapping[str, Any]], L.LightningDataModule]
_BUILDERS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a datamodule builder under ``data.name``."""

    def decorator(fn: Builder) -> Builder:
        _BUILDERS[name] = fn
        return fn

    return decorator


def available_datasets() -> list[str]:
    return sorted(_BUILDERS)


def build_datamodule(cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """Build the datamodule named by ``cfg['name']``."""
    name = cfg.get("name")
    if name not in _BUILDERS:
        raise choices_error("dataset (data.name)", name, available_datasets())
    return _BUILDERS[name](cfg)


def _lazy(module: str, function: str) -> Builder:
    def build(cfg: Mapping[str, Any]) -> L.LightningDataModule:
        return getattr(importlib.import_module(f"attnexp.data.{module}"), function)(cfg)

    build.__doc__ = f"attnexp.data.{module}.{function}"
    return build


for _name, _module, _function in (
    ("synthetic", "synthetic", "build_synthetic"),
    ("cifar10", "cifar", "build_cifar"),
    ("cifar100", "cifar", "build_cifar"),
    ("imagefolder", "folder", "build_imagefolder"),
    ("imagenet", "folder", "build_imagenet"),
):
    register_dataset(_name)(_lazy(_module, _function))
