"""``attnexp-train ... --cfg hydra|all --resolve``: print the config with the Hydra node resolved.

Hydra prints ``--cfg hydra`` after deleting every key but ``hydra``, so our run/sweep dirs
(``${paths.root}/${experiment_name}/...``) and the SLURM launcher settings
(``nodes: ${trainer.num_nodes}``) cannot resolve and Hydra stops with
``InterpolationKeyError: paths.root``. Here the config is composed the same way and each
value is resolved against the whole config; a value that only exists while a job runs
(``${hydra:job.num}`` outside a sweep) is printed unresolved.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def wants_resolved_hydra(argv: list[str]) -> str | None:
    """``hydra`` / ``all`` when ``argv`` asks Hydra to print that part resolved, else None."""
    if "--resolve" not in argv:
        return None
    for flag in ("--cfg", "-c"):
        if flag in argv:
            i = argv.index(flag)
            part = argv[i + 1] if i + 1 < len(argv) else None
            return part if part in ("hydra", "all") else None
    return None


def _resolved(node: Any) -> Any:
    """Plain containers with every resolvable interpolation resolved, the others kept."""
    if isinstance(node, DictConfig):
        out = {}
        for key in node:
            try:
                out[key] = _resolved(node[key])
            except Exception:
                out[key] = node._get_node(key)._value()  # the interpolation text
        return out
    if isinstance(node, ListConfig):
        out_list = []
        for i in range(len(node)):
            try:
                out_list.append(_resolved(node[i]))
            except Exception:
                out_list.append(node._get_node(i)._value())
        return out_list
    return node


def print_resolved(part: str, argv: list[str]) -> None:
    """Compose like ``attnexp-train`` (run mode) and print ``part`` resolved."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from attnexp.plugins import load_imports
    from attnexp.runtime import register_resolvers

    register_resolvers()
    load_imports(argv)  # imports=[...]: user modules named by the overrides
    flags = {"--cfg", "-c", "--resolve", "-m", "--multirun"}
    overrides = [a for a in argv if a not in flags and a not in ("hydra", "all", "job")]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if part == "hydra":
        shown: Any = {"hydra": _resolved(cfg.hydra)}
    else:
        shown = _resolved(cfg)
    for key in ("help", "hydra_help"):
        shown.get("hydra", {}).pop(key, None)
    sys.stdout.write(OmegaConf.to_yaml(OmegaConf.create(shown)))
