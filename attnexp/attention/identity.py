"""The identity in the zoo: the ``none`` gate, and :func:`init_identity` for placed modules."""

from __future__ import annotations

import torch
from torch import nn

from attnexp.attention.base import AttentionModule
from attnexp.attention.registry import get_spec, register
from attnexp.errors import ConfigError


@register("none", kind="gate", paper="baseline (no attention)")
class NoAttention(AttentionModule):
    """Returns its input unchanged; has no parameters.

    Identity start: it is the identity already (nothing to do).
    """

    identity_start = "is the identity"
    exposes_maps = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reset_to_identity(self) -> None:
        return None


def init_identity(module: nn.Module) -> nn.Module:
    """Make a placed gate or stage module compute exactly the identity; returns it.

    For ``placement.init=identity``: a network with modules inserted this way gives the
    same output as the network without them (a pretrained backbone stays pretrained at
    step 0). Each module says in its docstring how it gets there (zeroed last layer of an
    additive branch, or the learnable blend of
    :meth:`~attnexp.attention.base.AttentionModule.reset_to_identity`).

    Raises ConfigError naming the module when it cannot: conv-kind modules replace a 3x3
    convolution (there is no identity to start from), and modules outside the zoo.
    """
    name = getattr(module, "registry_name", None)
    if not isinstance(module, AttentionModule) or name is None:
        raise ConfigError(
            f"init=identity: {type(module).__name__} is not a registered zoo module, so it "
            f"has no identity start; register it with @register (a subclass of "
            f"AttentionModule) or use init=default"
        )
    kind = get_spec(name).kind
    if kind == "conv":
        raise ConfigError(
            f"init=identity: {name!r} is a conv-kind module that replaces the block's 3x3 "
            f"convolution, so it has no identity start; use init=default for conv "
            f"placements (gate and stage modules support init=identity)"
        )
    module.reset_to_identity()
    return module
