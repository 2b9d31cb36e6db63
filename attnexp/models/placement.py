"""Where attention modules go in a backbone, and wiring them in.

A placement (a dict in configs, :class:`Placement` in code)::

    module: {name: eca, ...options}   # or just the name: "se"
    position: auto                    # auto | before_block | after_conv1 | after_conv2 |
                                      # after_conv3 | after_add | identity | between_stages | conv
    stages: all                       # all | [1-based stage numbers]
    blocks: all                       # all | first | last | every_K | [0-based block indices]
    stage_options: {kernel_size: [3, 5, 5, 7]}   # one value per stage (wins over module's)
    sites: [conv1, conv2]             # position conv only: which convs of each block

* ``auto`` is the module's registry default (``after_conv3`` for gates, ``between_stages``
  for stage modules such as BAM, ``conv`` for conv modules).
* Block positions and conv sites are described (and listed) in :mod:`attnexp.models.blocks`;
  ``between_stages`` belongs to the backbone (:attr:`Backbone.STAGE_POSITIONS`) and puts the
  module after stage k (k = 1..N-1, ``stages: all`` meaning all of them), on the stage's output
  channels, as BAM. ``conv`` replaces the convs named by ``sites`` (default: the block type's
  ``DEFAULT_CONV_SITES``, its 3x3 convs) in each selected block with a conv-kind module. A
  module without a ``kernel_size`` option replaces 3x3 convs only; one with it gets the
  replaced conv's kernel size unless the config sets it.
* Blocks are numbered from 0 within a stage, as the module names ``layerS.B`` (negative
  indices count from the end); ``every_K`` selects blocks 0, K, 2K, ... of each selected stage.
* Channel counts come from the position, never from the user. A module whose constructor has
  a ``feature_size`` option gets the spatial size at its position (from ``image_size``) unless
  the config sets it: for gates the size at the position, for conv modules the conv's input.
* Several placements combine; gates at the same place run in placement order. Modules that
  declare ``residual=True`` (non-local, GC, ...) are inserted as they are and add their own
  identity, which is their papers' design, so no extra skip is added around them.
* Every impossible request raises :class:`~attnexp.errors.ConfigError` before the model is
  changed, naming the option (``placements[i].stages`` ...) and the valid values: unknown
  module/position/key, a gate at ``conv`` or a conv module at a gate position, a stage or
  block that does not exist, ``between_stages`` after the last stage, a ``stage_options``
  list of the wrong length, a map smaller than the module's registry ``min_size``, and
  anything a module rejects when it is probed once at its site's shape (e.g. mhsa maps larger
  than its ``max_size``).

Every placed module is recorded as a :class:`PlacedModule` in ``model.placed_modules``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnexp.attention.registry import (
    ModuleSpec,
    build_attention,
    build_conv,
    check_options,
    get_spec,
)
from attnexp.errors import ConfigError, choices_error
from attnexp.models.base import Backbone
from attnexp.models.blocks import ResidualBlock

#: Where a gate can go: the blocks' hook points, then the backbone's between-stage position.
GATE_POSITIONS: tuple[str, ...] = (*ResidualBlock.POSITIONS, *Backbone.STAGE_POSITIONS)
#: Everything ``position`` accepts.
POSITIONS: tuple[str, ...] = ("auto", *GATE_POSITIONS, "conv")
PLACEMENT_KEYS: tuple[str, ...] = (
    "module",
    "position",
    "stages",
    "blocks",
    "stage_options",
    "sites",
)
#: Keys of the top-level ``conv`` mapping that place it; the other keys are module options.
CONV_PLACEMENT_KEYS: tuple[str, ...] = ("stages", "blocks", "stage_options", "sites")
BLOCK_CHOICES = "all, first, last, every_K (e.g. every_2) or a list of block indices"
_EVERY = re.compile(r"every_(\d+)$")


@dataclass(frozen=True)
class Placement:
    """One parsed placement; see the module docstring for the fields."""

    module: str
    options: Mapping[str, Any] = field(default_factory=dict)
    position: str = "auto"
    stages: str | tuple[int, ...] = "all"
    blocks: str | tuple[int, ...] = "all"
    stage_options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    #: Convs to replace (position conv); None = each block type's DEFAULT_CONV_SITES.
    sites: tuple[str, ...] | None = None
    #: Where the placement came from, for messages (``placements[2]``, ``conv``).
    where: str = field(default="placement", compare=False)


@dataclass(frozen=True)
class PlacedModule:
    """Record of one module wired into a model."""

    where: str
    module: str
    position: str
    stage: int
    block: int | None  # None for between_stages
    in_channels: int
    out_channels: int
    size: int  # spatial size (H = W) of the module's input, for the image_size it was built for
    out_size: int  # spatial size of its output (smaller than size only for strided convs)
    params: int
    path: str  # qualified name in the model
    residual: bool
    site: str | None = None  # the replaced conv (position conv), e.g. conv2 or downsample


# --------------------------------------------------------------------------- parsing
def _plain(value: Any) -> Any:
    """Mappings to dicts and lists (incl. OmegaConf containers) to lists, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, tuple)):
        return [_plain(v) for v in value]
    return value


def _int_list(value: Any, what: str) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else value
    if (
        not isinstance(items, Sequence)
        or isinstance(items, str)
        or not items
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in items)
    ):
        raise ConfigError(f"{what} must be 'all' or a non-empty list of integers, got {value!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what} lists an entry twice: {list(items)}")
    return tuple(items)


def parse_placement(raw: Placement | Mapping[str, Any], where: str = "placement") -> Placement:
    """Check the keys and types of one placement dict (model-independent checks only)."""
    if isinstance(raw, Placement):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with keys {PLACEMENT_KEYS}, got {raw!r}")
    raw = _plain(raw)
    unknown = sorted(set(raw) - set(PLACEMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: "
            f"{', '.join(PLACEMENT_KEYS)} (module options go inside 'module')"
        )
    if "module" not in raw:
        raise ConfigError(f"{where} needs a 'module' (a name or {{name: ..., options}})")
    module = raw["module"]
    if isinstance(module, str):
        name, options = module, {}
    elif isinstance(module, Mapping) and isinstance(module.get("name"), str):
        options = dict(module)
        name = options.pop("name")
    else:
        raise ConfigError(
            f"{where}.module must be a name or a mapping with a 'name', got {module!r}"
        )

    position = raw.get("position", "auto")
    if position not in POSITIONS:
        raise choices_error(f"{where}.position", position, POSITIONS)

    stages = raw.get("stages", "all")
    if stages != "all":
        stages = _int_list(stages, f"{where}.stages")

    blocks = raw.get("blocks", "all")
    if isinstance(blocks, str):
        if blocks not in ("all", "first", "last") and not _EVERY.match(blocks):
            raise ConfigError(f"{where}.blocks: unknown value {blocks!r}; valid: {BLOCK_CHOICES}")
        if (m := _EVERY.match(blocks)) and int(m.group(1)) < 1:
            raise ConfigError(f"{where}.blocks: every_K needs K >= 1, got {blocks!r}")
    else:
        blocks = _int_list(blocks, f"{where}.blocks")

    stage_options = raw.get("stage_options") or {}
    if not isinstance(stage_options, Mapping):
        raise ConfigError(f"{where}.stage_options must map option names to lists")
    for key, values in stage_options.items():
        if not isinstance(values, (list, tuple)):
            raise ConfigError(
                f"{where}.stage_options.{key} must be a list with one value per stage, "
                f"got {values!r}"
            )
        # A stage option wins over the module's option of the same name: a config node of
        # the module always carries every option's default (attention=eca has kernel_size).
        options.pop(key, None)
    sites = raw.get("sites")
    if sites is not None:
        if isinstance(sites, str):
            sites = [sites]
        if (
            not isinstance(sites, Sequence)
            or not sites
            or not all(isinstance(x, str) for x in sites)
        ):
            raise ConfigError(
                f"{where}.sites must be a non-empty list of conv names, e.g. [conv1, conv2], "
                f"got {sites!r}"
            )
        if len(set(sites)) != len(sites):
            raise ConfigError(f"{where}.sites lists a conv twice: {list(sites)}")
        sites = tuple(sites)
    return Placement(
        module=name,
        options=options,
        position=position,
        stages=stages,
        blocks=blocks,
        stage_options={k: tuple(v) for k, v in stage_options.items()},
        sites=sites,
        where=where,
    )


def parse_placements(
    placements: Sequence[Placement | Mapping[str, Any]] | None = None,
    conv: str | Mapping[str, Any] | None = None,
) -> list[Placement]:
    """The ``placements`` list plus the top-level ``conv`` (a conv module in every block)."""
    if placements is not None and (
        isinstance(placements, (str, Mapping)) or not isinstance(placements, Sequence)
    ):
        raise ConfigError(f"placements must be a list of placement mappings, got {placements!r}")
    parsed = [parse_placement(p, f"placements[{i}]") for i, p in enumerate(placements or [])]
    if conv is not None:
        if isinstance(conv, str):
            module, where = {"name": conv}, {}
        elif isinstance(conv, Mapping):
            conv = _plain(conv)
            module = {k: v for k, v in conv.items() if k not in CONV_PLACEMENT_KEYS}
            where = {k: v for k, v in conv.items() if k in CONV_PLACEMENT_KEYS and v is not None}
        else:
            raise ConfigError(f"conv must be a module name or a mapping, got {conv!r}")
        parsed.append(parse_placement({"module": module, "position": "conv", **where}, "conv"))
    return parsed


# --------------------------------------------------------------------------- resolution
@dataclass
class _Site:
    """One module to build: where, with which channels and options."""

    placement: Placement
    spec: ModuleSpec
    position: str
    stage: int
    block: int | None
    in_channels: int
    out_channels: int
    stride: int
    size: int
    options: dict[str, Any]
    conv: str | None = None  # the replaced conv (position conv)
    kernel_size: int = 3  # of the replaced conv


def _resolve_position(p: Placement, spec: ModuleSpec) -> str:
    position = spec.default_position if p.position == "auto" else p.position
    if position == "conv" and spec.kind != "conv":
        raise ConfigError(
            f"{p.where}.position: 'conv' replaces a block's 3x3 conv and needs a conv-kind "
            f"module, but {spec.name!r} is a {spec.kind}; valid positions for it: "
            f"auto, {', '.join(GATE_POSITIONS)}"
        )
    if position != "conv" and spec.kind == "conv":
        raise ConfigError(
            f"{p.where}.position: {spec.name!r} is a conv-kind module (it replaces a 3x3 conv), "
            f"so its only valid position is 'conv' (or auto), not {position!r}"
        )
    return position


def _resolve_stages(p: Placement, position: str, model: Backbone) -> list[int]:
    n = model.num_stages
    last = n - 1 if position == "between_stages" else n
    if p.stages == "all":
        return list(range(1, last + 1))
    for s in p.stages:
        if position == "between_stages" and s == n:
            raise ConfigError(
                f"{p.where}.stages: between_stages puts the module after stage k and before "
                f"stage k+1, so k must be in 1..{last}; {s} is the last stage of {model.name} "
                "(to gate its output use position after_add with blocks: last)"
            )
        if not 1 <= s <= n:
            raise ConfigError(
                f"{p.where}.stages: stage {s} does not exist; {model.name} has {n} stages, "
                f"valid stages: {', '.join(str(i) for i in range(1, last + 1))} (1-based)"
            )
    return list(p.stages)


def _resolve_blocks(p: Placement, stage: int, n: int, model_name: str) -> list[int]:
    if p.blocks == "all":
        return list(range(n))
    if p.blocks == "first":
        return [0]
    if p.blocks == "last":
        return [n - 1]
    if isinstance(p.blocks, str):
        match = _EVERY.match(p.blocks)
        assert match is not None  # checked by parse_placement
        return list(range(0, n, int(match.group(1))))
    out = []
    for b in p.blocks:
        if not -n <= b < n:
            raise ConfigError(
                f"{p.where}.blocks: block {b} does not exist in stage {stage} of {model_name}, "
                f"which has {n} blocks; valid indices: 0..{n - 1} (or -{n}..-1 from the end)"
            )
        out.append(b % n)
    if len(set(out)) != len(out):
        raise ConfigError(f"{p.where}.blocks selects a block twice in stage {stage}: {p.blocks}")
    return out


def _stage_options(p: Placement, spec: ModuleSpec, model: Backbone) -> list[dict[str, Any]]:
    """Module options for each stage (index 0 = stage 1), stage_options merged in."""
    try:
        check_options(spec.name, {**p.options, **p.stage_options})
    except ConfigError as err:
        raise ConfigError(f"{p.where}.module: {err}") from None
    n = model.num_stages
    for key, values in p.stage_options.items():
        if len(values) != n:
            raise ConfigError(
                f"{p.where}.stage_options.{key}: needs one value per stage of {model.name}, "
                f"i.e. {n} values, got {len(values)}: {list(values)}"
            )
    return [{**p.options, **{k: v[i] for k, v in p.stage_options.items()}} for i in range(n)]


def _check_size(site: _Site, model: Backbone, image_size: int) -> None:
    """The smallest map the module sees (a strided conv's output) must reach its min_size."""
    spec = site.spec
    seen = -(-site.size // site.stride)
    if seen >= spec.min_size:
        return
    fits = [s for s, size in enumerate(model.stage_sizes(image_size), 1) if size >= spec.min_size]
    where = f"{site.position}, stage {site.stage}"
    if site.block is not None:
        where += f", block {site.block}"
    raise ConfigError(
        f"{site.placement.where}: {spec.name!r} needs feature maps of at least "
        f"{spec.min_size}x{spec.min_size} (its min_size), but at {where} they are {seen}x{seen} "
        f"for image_size={image_size}; select stages where it fits "
        f"({', '.join(map(str, fits)) or 'none at this image_size'}) or a larger image_size"
    )


def _plan(model: Backbone, p: Placement, image_size: int) -> list[_Site]:
    """Every site the placement selects, with channels, size and options; all checks."""
    try:
        spec = get_spec(p.module)
    except ConfigError as err:
        raise ConfigError(f"{p.where}.module: {err}") from None
    position = _resolve_position(p, spec)
    stages = _resolve_stages(p, position, model)
    if position == "between_stages" and p.blocks != "all":
        raise ConfigError(
            f"{p.where}.blocks: between_stages places one module after each selected stage; "
            "blocks does not apply (leave it as 'all')"
        )
    if p.sites is not None and position != "conv":
        raise ConfigError(
            f"{p.where}.sites names convs to replace, which only position 'conv' does; "
            f"{spec.name!r} goes to {position!r} here (remove sites)"
        )
    per_stage_options = _stage_options(p, spec, model)
    sizes = model.block_sizes(image_size)
    sites: list[_Site] = []
    for stage in stages:
        options = per_stage_options[stage - 1]
        if position == "between_stages":
            c, size = model.stage_channels[stage - 1], sizes[stage - 1][-1][1]
            sites.append(_Site(p, spec, position, stage, None, c, c, 1, size, dict(options)))
            continue
        blocks = model.blocks(stage)
        for b in _resolve_blocks(p, stage, len(blocks), model.name):
            size_in, size_out = sizes[stage - 1][b]
            if position == "conv":
                for conv in _conv_sites(p, spec, blocks[b], model):
                    size = size_out if conv.input_strided else size_in
                    sites.append(
                        _Site(
                            p,
                            spec,
                            position,
                            stage,
                            b,
                            conv.in_channels,
                            conv.out_channels,
                            conv.stride,
                            size,
                            dict(options),
                            conv.attr,
                            conv.kernel_size,
                        )
                    )
                continue
            hook = blocks[b].hook_points()[position]
            c, size = hook.channels, (size_out if hook.strided else size_in)
            sites.append(_Site(p, spec, position, stage, b, c, c, 1, size, dict(options)))
    if position == "conv" and p.sites is not None:
        missing = set(p.sites) - {site.conv for site in sites}
        if missing:
            raise ConfigError(
                f"{p.where}.sites: no selected block of {model.name} has a "
                f"{', '.join(sorted(missing))} conv (a block has a 'downsample' conv only where "
                "its shortcut is a 1x1 projection; shortcut option A is parameter-free)"
            )
    names = spec.option_names()
    for site in sites:
        _check_size(site, model, image_size)
        if "feature_size" in names and site.options.get("feature_size") is None:
            site.options["feature_size"] = site.size
        fill_kernel = site.conv is not None and "kernel_size" in names
        if fill_kernel and site.options.get("kernel_size") is None:
            site.options["kernel_size"] = site.kernel_size
    return sites


def _conv_sites(p: Placement, spec: ModuleSpec, block: ResidualBlock, model: Backbone) -> list:
    """The conv sites of ``block`` that placement ``p`` replaces, checked against the block
    type's sites and the module's kernel sizes."""
    kind = type(block)
    wanted = p.sites if p.sites is not None else kind.DEFAULT_CONV_SITES
    unknown = [name for name in wanted if name not in kind.CONV_SITES]
    if unknown:
        raise ConfigError(
            f"{p.where}.sites: {', '.join(map(repr, unknown))} is not a conv of a "
            f"{kind.__name__} ({model.name}); valid sites: {', '.join(kind.CONV_SITES)} "
            f"(default: {', '.join(kind.DEFAULT_CONV_SITES)})"
        )
    available = block.conv_sites()
    chosen = [available[name] for name in wanted if name in available]
    if "kernel_size" not in spec.option_names():
        odd = [c for c in chosen if c.kernel_size != 3]
        if odd:
            three = [n for n, c in available.items() if c.kernel_size == 3]
            raise ConfigError(
                f"{p.where}.sites: {spec.name!r} stands in for 3x3 convs only (it has no "
                f"kernel_size option), but {odd[0].attr} of a {kind.__name__} is a "
                f"{odd[0].kernel_size}x{odd[0].kernel_size} conv; sites it can replace here: "
                f"{', '.join(three)}"
            )
    return chosen


def _describe(site: _Site) -> str:
    block = "" if site.block is None else f", block {site.block}"
    if site.conv is not None:
        block += f", {site.conv}"
    return (
        f"{site.placement.where} ({site.spec.name} at {site.position}, stage {site.stage}"
        f"{block}, {site.in_channels} channels, {site.size}x{site.size} maps)"
    )


def _build(site: _Site, probe: bool) -> nn.Module:
    """Build the module of one site; with ``probe``, run it once on a zero map of the site's
    shape (eval mode, no grad) so size limits fail now and a gate that changes the shape of
    its input is caught."""
    spec = site.spec
    try:
        if site.position == "conv":
            module = build_conv(
                spec.name, site.in_channels, site.out_channels, site.stride, **site.options
            )
        else:
            module = build_attention(spec.name, site.in_channels, **site.options)
    except ConfigError as err:
        raise ConfigError(f"{_describe(site)}: {err}") from None
    if not probe:
        return module
    x = torch.zeros(1, site.in_channels, site.size, site.size)
    out_size = -(-site.size // site.stride)
    expected = (1, site.out_channels, out_size, out_size)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            shape = tuple(module(x).shape)
    except ConfigError as err:
        raise ConfigError(f"{_describe(site)}: {err}") from None
    except Exception as err:  # a size the module cannot handle; keep the cause chained
        raise ConfigError(
            f"{_describe(site)}: the module fails on its input at this position "
            f"({type(err).__name__}: {err}); choose other stages/positions or image_size"
        ) from err
    finally:
        module.train(was_training)
    if shape != expected:
        raise ConfigError(
            f"{_describe(site)}: the module returns shape {shape} for input "
            f"{tuple(x.shape)}, expected {expected}; it cannot sit at this position"
        )
    return module


# --------------------------------------------------------------------------- wiring
def apply_placements(
    model: Backbone,
    placements: Sequence[Placement | Mapping[str, Any]],
    *,
    image_size: int,
    probe: bool = True,
) -> list[PlacedModule]:
    """Build every placed module and wire it into ``model`` (in place).

    All placements are checked and all modules built before the model is touched, so a
    ConfigError leaves ``model`` unchanged. With ``probe`` (default) every new module is run
    once on a zero map of its site's shape (batch 1, eval mode, no grad; no RNG is consumed),
    so any size a module cannot handle (e.g. mhsa beyond ``max_size``, a subsampling
    non-local on 1x1 maps) and any gate that changes its input's shape fail at build time. Returns the new :class:`PlacedModule` records
    (also appended to ``model.placed_modules``).
    """
    if not isinstance(model, Backbone):
        raise TypeError(f"apply_placements needs an attnexp Backbone, got {type(model).__name__}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"image_size must be a positive int, got {image_size!r}")
    parsed = [parse_placement(p, f"placements[{i}]") for i, p in enumerate(placements)]

    sites = [site for p in parsed for site in _plan(model, p, image_size)]
    replaced: dict[tuple[int, int | None, str | None], str] = {
        (r.stage, r.block, r.site): r.where for r in model.placed_modules if r.position == "conv"
    }
    for site in sites:
        if site.position != "conv":
            continue
        key = (site.stage, site.block, site.conv)
        if key in replaced:
            raise ConfigError(
                f"{site.placement.where}: {site.conv} of stage {site.stage}, block "
                f"{site.block} is already replaced by {replaced[key]}; select disjoint "
                "stages/blocks/sites for conv placements"
            )
        replaced[key] = site.placement.where

    built = [(site, _build(site, probe)) for site in sites]

    records = []
    for site, module in built:
        if site.position == "between_stages":
            path = model.add_stage_gate(site.stage, module)
        else:
            assert site.block is not None
            block = model.blocks(site.stage)[site.block]
            prefix = f"layer{site.stage}.{site.block}"
            if site.position == "conv":
                assert site.conv is not None
                path = f"{prefix}.{block.replace_conv(site.conv, module)}"
            else:
                path = f"{prefix}.{block.add_gate(site.position, module)}"
        records.append(
            PlacedModule(
                where=site.placement.where,
                module=site.spec.name,
                position=site.position,
                stage=site.stage,
                block=site.block,
                in_channels=site.in_channels,
                out_channels=site.out_channels,
                size=site.size,
                out_size=-(-site.size // site.stride),
                params=sum(p.numel() for p in module.parameters()),
                path=path,
                residual=site.spec.residual,
                site=site.conv,
            )
        )
    model.placed_modules.extend(records)
    return records
