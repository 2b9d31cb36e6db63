"""Config nodes generated from the attention registry (Hydra's ConfigStore).

A class with ``@register("my_gate")`` is usable as ``attention=my_gate`` (and ``conv=<name>``
for conv-kind modules) without a YAML file: for every registered module this stores

* ``attention/<name>``: ``{name: <name>, <option>: <constructor default>, ...}``;
* ``conv/<name>`` (conv kind): the same node, for ``conv=<name>``;
* ``variant/zoo/<name>`` (package ``_global_``): the module's row of the zoo sweep.

Options without a default become ``???`` (Hydra then asks for them). A YAML file in
``attnexp/conf/<group>/<name>.yaml`` wins over the generated node (it is not generated
then): that is how a preset that differs from the signature is kept (e.g.
``variant/zoo/danet.yaml``). The zoo sweep reads the registry through the resolver
``${attnexp_zoo_sweep:}`` (``zoo/none,zoo/a2,...``).

:func:`install` is called when Hydra imports ``attnexp.conf`` (its ``__init__``), so every
composition of the package's configs sees the nodes, and it follows later registrations
(user code loaded by :mod:`attnexp.plugins`) through :func:`attnexp.attention.on_register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from attnexp.attention import available, on_register
from attnexp.attention.registry import ModuleSpec

_CONF = Path(__file__).resolve().parent / "conf"
SWEEP_RESOLVER = "attnexp_zoo_sweep"
_installed = False


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def config_node(spec: ModuleSpec) -> dict[str, Any]:
    """``{name, option: default, ...}``: what ``attention=<name>`` composes to.

    Options without a default are ``???`` (mandatory); a default that a config cannot hold
    (a class, a function) is left out, so the module keeps it.
    """
    node: dict[str, Any] = {"name": spec.name}
    defaults = spec.option_defaults()
    for option in spec.option_names():
        if option not in defaults:
            node[option] = "???"
            continue
        value = _plain(defaults[option])
        try:
            OmegaConf.create({"v": value})
        except Exception:  # noqa: BLE001 - not representable in a config: keep the default
            continue
        node[option] = value
    return node


def _has_yaml(group: str, name: str) -> bool:
    return (_CONF / group / f"{name}.yaml").is_file()


def _store(spec: ModuleSpec) -> None:
    store = ConfigStore.instance()
    node = config_node(spec)
    groups = ["attention", "conv"] if spec.kind == "conv" else ["attention"]
    for group in groups:
        if not _has_yaml(group, spec.name):
            store.store(group=group, name=spec.name, node=node, provider="attnexp")
    if not _has_yaml("variant/zoo", spec.name):
        label = "none (baseline)" if spec.name == "none" else spec.name
        store.store(
            group="variant/zoo",
            name=spec.name,
            node={
                "defaults": [{"override /attention": spec.name}],
                "table": {"row": None, "label": label},
            },
            package="_global_",
            provider="attnexp",
        )


def zoo_sweep() -> str:
    """``zoo/none,zoo/a2,...``: every registered module, the baseline first."""
    names = [n for n in available() if not n.startswith("_")]
    ordered = ["none", *(n for n in names if n != "none")]
    return ",".join(f"zoo/{n}" for n in ordered)


def install() -> None:
    """Store a node per registered module now and per later registration (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    if not OmegaConf.has_resolver(SWEEP_RESOLVER):
        OmegaConf.register_new_resolver(SWEEP_RESOLVER, zoo_sweep)
    on_register(_store)
