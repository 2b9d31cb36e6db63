"""The attention zoo's single registry: the only place module names are resolved.

Three kinds of module:

* ``gate``  – ``cls(channels, **options)``, maps (B, C, H, W) to (B, C, H, W);
* ``conv``  – ``cls(in_channels, out_channels, stride=1, **options)``, replaces a 3x3 conv;
* ``stage`` – a gate that by default sits between stages (BAM).

The registry is the single source of truth about a module: its name, kind, paper, default
position, and its options, which are the constructor's keyword arguments with their
defaults (help text from the class docstring's ``Args:`` section). Config nodes, the zoo
listing and the zoo sweep are generated from it; listeners added with :func:`on_register`
hear about every module, including ones registered later by user code.

Options are checked against the constructor's signature before the module is built, so a
typo such as ``reducton=8`` is a :class:`~attnexp.errors.ConfigError` naming the valid
options instead of being swallowed by ``**kwargs``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from attnexp.errors import ConfigError, choices_error

Kind = Literal["gate", "conv", "stage"]
KINDS: tuple[str, ...] = ("gate", "conv", "stage")
# The positions a placement may ask for belong to the backbones (attnexp.models.blocks and
# attnexp.models.placement.POSITIONS); the zoo only names each module's default position.
_DEFAULT_POSITION = {"gate": "after_conv3", "stage": "between_stages", "conv": "conv"}


@dataclass(frozen=True)
class ModuleSpec:
    """What the registry knows about one module besides its class."""

    name: str
    cls: type[nn.Module]
    kind: str
    paper: str
    #: Where ``position: auto`` puts it: ``after_conv3`` for gates, ``between_stages`` for
    #: stage modules, ``conv`` (replace the 3x3 conv) for conv modules.
    default_position: str = "after_conv3"
    #: ``quadratic`` when memory grows as O((HW)^2) (position attention); shown in listings.
    memory: str = "linear"
    #: Smallest spatial size (H and W) the module works on; larger is always fine.
    min_size: int = 1

    @property
    def residual(self) -> bool:
        """True when the module adds its own residual: the class's ``has_residual``."""
        return bool(getattr(self.cls, "has_residual", False))

    def option_names(self) -> list[str]:
        """The constructor keywords a config may set (the channel arguments excluded)."""
        return sorted(_constructor_options(self.cls, self.kind))

    def option_defaults(self) -> dict[str, Any]:
        """Constructor keywords with their defaults (the paper's defaults)."""
        params = inspect.signature(self.cls.__init__).parameters
        return {
            name: params[name].default
            for name in self.option_names()
            if params[name].default is not inspect.Parameter.empty
        }

    def option_help(self) -> dict[str, str]:
        """One line of help per option, from the ``Args:`` section of the class docstring."""
        return {k: v for k, v in _docstring_args(self.cls).items() if k in self.option_names()}

    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(self.cls) or ""
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, ModuleSpec] = {}
_LISTENERS: list[Callable[[ModuleSpec], None]] = []
_POSITIONAL = {
    "gate": ("self", "channels"),
    "stage": ("self", "channels"),
    "conv": ("self", "in_channels", "out_channels", "stride"),
}


def _constructor_options(cls: type, kind: str) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    skip = set(_POSITIONAL[kind])
    return {
        name
        for name, p in params.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _docstring_args(cls: type) -> dict[str, str]:
    """``{option: help}`` from a Google-style ``Args:`` section (continuation lines joined)."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    indent: int | None = None
    names: list[str] = []
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args, indent, names = True, None, []
            continue
        if not in_args or not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:
            in_args = False
            continue
        match = re.match(r"^([\w]+(?:,\s*[\w]+)*):\s*(.*)$", line.strip())
        if match and (indent is None or depth == indent):
            indent = depth
            names = [n.strip() for n in match.group(1).split(",")]
            for n in names:
                out[n] = match.group(2).strip()
        elif names:
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return out


def _same_definition(a: type, b: type) -> bool:
    """A class defined again by re-running its code (a notebook cell, a reloaded file)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register(
    name: str,
    *,
    kind: Kind = "gate",
    paper: str,
    default_position: str | None = None,
    memory: str = "linear",
    min_size: int = 1,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a module to the zoo under ``name``.

    This is all a new module needs: the config node ``attention=<name>`` (and
    ``conv=<name>`` for conv kind) with the constructor's defaults, its row in the listing
    and in the zoo sweep, and its contract checks all come from here.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not re.fullmatch(r"[A-Za-z_][\w]*", name):
        raise ValueError(f"attention module name must be an identifier, got {name!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        old = _REGISTRY.get(name)
        if old is not None and old.cls is not cls and not _same_definition(old.cls, cls):
            raise ValueError(
                f"attention module {name!r} is registered twice ({old.cls.__module__}."
                f"{old.cls.__qualname__} and {cls.__module__}.{cls.__qualname__})"
            )
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{cls.__name__} must not take **kwargs: options must be explicit")
        missing = [p for p in _POSITIONAL[kind][1:] if p not in params]
        if missing:
            raise TypeError(f"{cls.__name__} ({kind}) must accept {missing} as first arguments")
        spec = ModuleSpec(
            name=name,
            cls=cls,
            kind=kind,
            paper=paper,
            default_position=default_position or _DEFAULT_POSITION[kind],
            memory=memory,
            min_size=min_size,
        )
        _REGISTRY[name] = spec
        cls.registry_name = name  # type: ignore[attr-defined]
        for listener in list(_LISTENERS):
            listener(spec)
        return cls

    return decorator


def on_register(listener: Callable[[ModuleSpec], None]) -> None:
    """Call ``listener(spec)`` for every registered module now and for every later one.

    How layers above the zoo (the config store) follow the registry without the zoo
    knowing about them. Adding the same listener twice has no effect.
    """
    if listener in _LISTENERS:
        return
    _ensure_loaded()
    _LISTENERS.append(listener)
    for spec in list(_REGISTRY.values()):
        listener(spec)


def available(kind: str | None = None) -> list[str]:
    """Registered names, optionally of one kind (``gate`` includes ``stage`` modules)."""
    _ensure_loaded()
    if kind is None:
        return sorted(_REGISTRY)
    if kind not in KINDS:
        raise choices_error("module kind", kind, KINDS)
    wanted = {"gate", "stage"} if kind == "gate" else {kind}
    return sorted(n for n, s in _REGISTRY.items() if s.kind in wanted)


def get_spec(name: str) -> ModuleSpec:
    """The registry entry for ``name``; an unknown name lists the registered ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise choices_error("attention module", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigError if ``options`` has a key the module's constructor does not take."""
    spec = get_spec(name)
    valid = spec.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for attention module {name!r}; "
            f"valid options: {', '.join(valid) if valid else '(none)'}"
        )


def build_attention(name: str, channels: int, **options: Any) -> nn.Module:
    """Build a gate (or stage) module acting on ``channels`` channels."""
    spec = get_spec(name)
    if spec.kind == "conv":
        raise ConfigError(
            f"{name!r} is a conv-kind module (it replaces a 3x3 convolution); build it with "
            f"build_conv or place it with position 'conv'. Gate modules: "
            f"{', '.join(available('gate'))}"
        )
    check_options(name, options)
    if not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"channels must be a positive int, got {channels!r}")
    return spec.cls(channels, **options)


def build_conv(
    name: str, in_channels: int, out_channels: int, stride: int = 1, **options: Any
) -> nn.Module:
    """Build a conv-kind module that stands in for a 3x3 convolution."""
    spec = get_spec(name)
    if spec.kind != "conv":
        raise ConfigError(
            f"{name!r} is a {spec.kind}-kind module, not a conv; conv modules: "
            f"{', '.join(available('conv'))}"
        )
    check_options(name, options)
    return spec.cls(in_channels, out_channels, stride, **options)


def load_families() -> None:
    """Import every module file of the zoo package, so that its ``@register`` classes
    register themselves: a new module inside the package is one new file (files whose name
    starts with "_" are skipped). Idempotent: Python imports each file once."""
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_") and info.name != "registry":
            importlib.import_module(f"{package}.{info.name}")


def _ensure_loaded() -> None:
    load_families()
