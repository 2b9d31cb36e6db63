"""Compose the training config in Python, exactly as ``attnexp-train`` would.

For notebooks, scripts and tests: ``compose_config(["attention=cbam", "+debug=smoke"])``
returns the DictConfig that ``attnexp.run.train`` takes.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from attnexp.runtime import register_resolvers


def compose_config(
    overrides: list[str] | None = None, output_dir: str | Path | None = None
) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``; ``output_dir`` sets the run dir.

    Outside a Hydra app the run directory cannot come from Hydra, so pass ``output_dir``
    when the config will be trained.
    """
    from attnexp.plugins import load_imports

    register_resolvers()
    load_imports(list(overrides or []))  # user modules named by attention=... must exist
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="attnexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides or []))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg
