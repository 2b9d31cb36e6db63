"""The attention zoo's single registry: the only place module names are resolved.

Three kinds of module (DESIGN.md section 3):

* ``gate``  – ``cls(channels, **options)``, maps (B, C, H, W) to (B, C, H, W);
* ``conv``  – ``cls(in_channels, out_channels, stride=1, **options)``, replaces a 3x3 conv;
* ``stage`` – a gate that by default sits between stages (BAM).

Options are checked against the constructor's signature before the module is built, so a
typo such as ``reducton=8`` is a :class:`~attnexp.errors.ConfigError` naming the valid
options instead of being swallowed by ``**kwargs``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from attnexp.errors import ConfigError, choices_error

Kind = Literal["gate", "conv", "stage"]
KINDS: tuple[str, ...] = ("gate", "conv", "stage")
#: Positions a placement may ask for; ``auto`` means the module's own default position.
GATE_POSITIONS: tuple[str, ...] = (
    "before_block",
    "after_conv1",
    "after_conv2",
    "after_conv3",
    "after_add",
    "identity",
    "between_stages",
)


@dataclass(frozen=True)
class ModuleSpec:
    """What the registry knows about one module besides its class."""

    name: str
    cls: type[nn.Module]
    kind: str
    paper: str
    #: True when the module adds its own residual (non-local, GC, DANet in their papers).
    residual: bool = False
    #: Where ``position: auto`` puts it: ``after_conv3`` for gates, ``between_stages`` for
    #: stage modules, ``conv`` (replace the 3x3 conv) for conv modules.
    default_position: str = "after_conv3"
    #: ``quadratic`` when memory grows as O((HW)^2) (position attention); shown in listings.
    memory: str = "linear"
    #: Smallest spatial size (H and W) the module works on; larger is always fine.
    min_size: int = 1

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


_REGISTRY: dict[str, ModuleSpec] = {}
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


def register(
    name: str,
    *,
    kind: Kind = "gate",
    paper: str,
    residual: bool = False,
    default_position: str | None = None,
    memory: str = "linear",
    min_size: int = 1,
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a module to the zoo under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"attention module {name!r} is registered twice")
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise TypeError(f"{cls.__name__} must not take **kwargs: options must be explicit")
        missing = [p for p in _POSITIONAL[kind][1:] if p not in params]
        if missing:
            raise TypeError(f"{cls.__name__} ({kind}) must accept {missing} as first arguments")
        position = (
            default_position
            or {
                "gate": "after_conv3",
                "stage": "between_stages",
                "conv": "conv",
            }[kind]
        )
        _REGISTRY[name] = ModuleSpec(
            name=name,
            cls=cls,
            kind=kind,
            paper=paper,
            residual=residual,
            default_position=position,
            memory=memory,
            min_size=min_size,
        )
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


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


def _ensure_loaded() -> None:
    # Importing the package registers every family (the modules register on import).
    import attnexp.attention  # noqa: F401
