"""Pretrained backbones by config: ``model.pretrained: null | torchvision | <file>``.

Fine-tuning papers (GCNet table 4, Klomp et al. 2023) start from a pretrained ResNet,
insert the attention modules and train on. What matters for a fair number is *what* was
loaded and what was not, so :func:`load_pretrained` refuses to guess:

* every backbone weight must come from the source; the only keys allowed to be missing
  are those of the placed modules (they are new) and the classifier when the class count
  differs (``fc`` of 1000 ImageNet classes vs 10 CIFAR ones). Anything else missing is a
  :class:`~attnexp.errors.ConfigError` that lists the keys;
* source keys inside a placed module's path (the 3x3 conv a conv-kind module replaced, its
  BN when the module brings its own) are reported as unused, never forced into the new
  module;
* the report (:class:`PretrainedReport`) names the newly initialised modules; the model
  keeps the parameter names in ``model.newly_initialised`` so the fine-tuning recipe can give
  them their own learning rate (``training.backbone_lr_mult``).

Sources: ``torchvision`` (the weights enum's default weights of the same architecture,
read from torch hub's cache, ``$TORCH_HOME/hub/checkpoints``; downloaded there when
online), a state dict file in torchvision's naming (``torch.save(resnet.state_dict())``,
``.pth``/``.pt``) or a Lightning checkpoint of attnexp (``.ckpt``; its ``model.*`` weights).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnexp.errors import ConfigError

#: The classifier of every backbone here (torchvision's name).
CLASSIFIER = "fc"
INIT_CHOICES = ("default", "identity")


@dataclass(frozen=True)
class PretrainedReport:
    """What :func:`load_pretrained` loaded, what is new and what of the source went unused."""

    source: str
    loaded: int  # number of tensors copied from the source
    newly_initialised: list[str]  # state-dict keys of the model not taken from the source
    new_modules: list[str]  # module paths those keys belong to (placed modules, classifier)
    unused: list[str] = field(default_factory=list)  # source keys the model did not take

    def summary(self) -> str:
        new = ", ".join(self.new_modules) or "nothing"
        unused = f"; unused from the source: {len(self.unused)} tensors" if self.unused else ""
        return (
            f"pretrained weights from {self.source}: {self.loaded} tensors loaded; newly "
            f"initialised: {new}{unused}"
        )


def torchvision_weights(model_name: str) -> Any:
    """torchvision's default weights enum entry for ``model_name`` (e.g. IMAGENET1K_V2)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(model_name).DEFAULT
    except (ValueError, KeyError):
        raise ConfigError(
            f"model.pretrained=torchvision: torchvision has no pretrained weights for "
            f"{model_name!r} (it has them for the ImageNet ResNets: resnet18 ... resnet152, "
            f"resnext50_32x4d, wide_resnet50_2). Give a state dict file instead: "
            f"model.pretrained=/path/to/weights.pth (or an attnexp checkpoint .ckpt)"
        ) from None


def torchvision_cache_file(model_name: str) -> Path:
    """Where torch hub keeps (and looks for) the torchvision weights of ``model_name``."""
    weights = torchvision_weights(model_name)
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _torchvision_state(model_name: str) -> tuple[dict[str, torch.Tensor], str]:
    weights = torchvision_weights(model_name)
    target = torchvision_cache_file(model_name)
    if not target.is_file():
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # offline (URLError, socket errors), a half-written file
            raise ConfigError(
                f"model.pretrained=torchvision: the weights {weights} of {model_name} are not in "
                f"torch hub's cache and could not be downloaded ({type(err).__name__}: {err}). "
                f"On a machine without internet, download {weights.url} elsewhere and place it "
                f"as {target} (directory: $TORCH_HOME/hub/checkpoints, TORCH_HOME defaults to "
                f"~/.cache/torch), or give the file directly: model.pretrained=/path/to/"
                f"{target.name}"
            ) from None
        return dict(state), f"torchvision {weights}"
    state = torch.load(target, map_location="cpu", weights_only=True)
    return dict(state), f"torchvision {weights} ({target})"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a torchvision-format file or an attnexp Lightning checkpoint."""
    p = Path(os.path.expandvars(str(path))).expanduser()
    if p.is_dir():
        raise ConfigError(
            f"model.pretrained={path!s} is a directory; give a state dict file (.pth/.pt) or a "
            f"checkpoint file, e.g. {p}/checkpoints/last.ckpt"
        )
    if not p.is_file():
        raise ConfigError(
            f"model.pretrained={path!s}: no such file (valid values: null, torchvision, or the "
            f"path of a torchvision-format state dict / attnexp .ckpt)"
        )
    try:
        blob = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated file, not a torch file
        raise ConfigError(
            f"model.pretrained={p}: cannot read it as a torch file ({type(err).__name__}: {err})"
        ) from None
    if isinstance(blob, nn.Module):
        blob = blob.state_dict()
    if isinstance(blob, Mapping) and isinstance(blob.get("state_dict"), Mapping):
        inner = blob["state_dict"]  # a Lightning checkpoint: the backbone is `model.*`
        model_keys = {k[6:]: v for k, v in inner.items() if k.startswith("model.")}
        blob = model_keys or inner
    if not isinstance(blob, Mapping) or not blob:
        raise ConfigError(f"model.pretrained={p} holds no state dict (got {type(blob).__name__})")
    state = {str(k): v for k, v in blob.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DDP / DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _under(key: str, prefixes: list[str]) -> str | None:
    return next((p for p in prefixes if key == p or key.startswith(p + ".")), None)


def _preview(keys: list[str], n: int = 12) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def load_pretrained(
    model: nn.Module, source: str | Path, model_name: str | None = None
) -> PretrainedReport:
    """Load ``source`` into ``model`` (in place); see the module docstring for the rules."""
    name = model_name or getattr(model, "name", type(model).__name__)
    if str(source) == "torchvision":
        state, description = _torchvision_state(name)
    else:
        state, description = read_state_dict(source), str(source)
    placed = [str(r.path) for r in getattr(model, "placed_modules", [])]
    own = model.state_dict()

    usable: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    wrong_shape: list[str] = []
    classifier_new = False
    for key, value in state.items():
        if _under(key, placed) is not None or key not in own:
            unused.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            if _under(key, [CLASSIFIER]) is not None:
                classifier_new = True  # another class count: a new classifier
            else:
                wrong_shape.append(
                    f"{key} (source {tuple(value.shape)}, model {tuple(own[key].shape)})"
                )
        else:
            usable[key] = value
    if wrong_shape:
        raise ConfigError(
            f"model.pretrained={description}: shapes do not match the {name} built from the "
            f"config: {_preview(wrong_shape, 6)}. Is it a state dict of {name} (same width and "
            f"options, e.g. shortcut, stride_position)?"
        )
    if classifier_new:  # the whole classifier is new, not half of it
        usable = {k: v for k, v in usable.items() if _under(k, [CLASSIFIER]) is None}
    missing = [k for k in own if k not in usable]
    allowed = placed + ([CLASSIFIER] if classifier_new else [])
    not_allowed = [k for k in missing if _under(k, allowed) is None]
    if not_allowed:
        hint = (
            " (the source has none of the model's keys: is it a state dict of this architecture?)"
            if not usable
            else ""
        )
        raise ConfigError(
            f"model.pretrained={description}: {len(not_allowed)} backbone weights of {name} "
            f"are missing from the source{hint}: {_preview(not_allowed)}. Only the inserted "
            f"attention modules and a classifier for another class count may be new."
        )
    model.load_state_dict(usable, strict=False)
    new_modules = sorted({p for k in missing if (p := _under(k, allowed)) is not None})
    new_params = [n for n, _ in model.named_parameters() if _under(n, new_modules) is not None]
    model.newly_initialised = new_params  # type: ignore[assignment]
    return PretrainedReport(description, len(usable), missing, new_modules, sorted(unused))


def initialise_placed(model: nn.Module, init: str, where: str | None = None) -> list[str]:
    """``placement.init``: ``default`` keeps each module's own init; ``identity`` makes every
    placed module (of placement ``where``, or all) start as the identity map, so a pretrained
    network's output is unchanged at step 0. Returns the paths re-initialised."""
    if init not in INIT_CHOICES:
        raise ConfigError(
            f"placement.init={init!r}: valid choices: {', '.join(INIT_CHOICES)} (identity: the "
            f"network with the modules inserted computes the same function as without them)"
        )
    if init == "default":
        return []
    records = [r for r in getattr(model, "placed_modules", []) if where is None or r.where == where]
    for record in records:
        if record.position == "conv":
            raise ConfigError(
                f"placement.init=identity: {record.module} at {record.path} replaces the 3x3 conv "
                f"(a conv-kind module), which cannot start as the identity map; use "
                f"placement.init=default for it"
            )
    from attnexp.attention import init_identity  # the zoo states how each module reaches it

    for record in records:
        init_identity(model.get_submodule(record.path))
    return [r.path for r in records]
