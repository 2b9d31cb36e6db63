"""The package's Hydra configs. Hydra imports this package to find them, which is when the
config nodes generated from the attention registry (``attention=<name>``, ``conv=<name>``,
``variant=zoo/<name>``) are put into Hydra's ConfigStore: see :mod:`attnexp.zoo_configs`."""

from attnexp.zoo_configs import install

install()
