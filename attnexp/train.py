"""``attnexp-train``: compose the config with Hydra and run one training (or a sweep with -m).

Thin on purpose: everything it does is in :mod:`attnexp.run`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from attnexp.runtime import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from attnexp.cli import exit_on_config_error
    from attnexp.run import summary_line, train

    record = exit_on_config_error("attnexp-train")(train)(cfg)
    print(summary_line(record))
    return record["best"]["val_top1_err"]


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
