"""What every zoo module shares: map recording, the residual flag and an identity start.

Every zoo module derives from :class:`AttentionModule`. Inside ``forward`` it calls
``self.expose(name, tensor)`` for each map it computes. Nothing is stored unless recording
was switched on with :func:`record_attention`, so training pays no memory for it.

Conventions for the exposed tensors (values after the gate's nonlinearity):

* ``channel``: (B, C) channel weights;
* ``spatial``: (B, 1, H, W) or (B, heads, H, W) spatial maps;
* ``branch``:  (B, K) or (B, K, C) weights over K branches/experts (sum to 1 over K for
  softmax-based modules);
* other names are allowed (``position``, ``context``, ...) and shown by shape.

Identity start (:meth:`AttentionModule.reset_to_identity`): inserting a module into a
pretrained network should leave the network's output unchanged at step 0. Modules with an
additive form (``x + branch(x)``) zero the last layer of the branch; every other module
gets the default below, an exact learnable blend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _identity_blend_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """``x + alpha * (f(x) - x)``: exactly ``x`` while alpha is 0, ``f(x)`` at alpha = 1."""
    x = args[0]
    alpha = module.identity_blend
    return (x + alpha.to(output.dtype) * (output - x)).to(output.dtype)


class AttentionModule(nn.Module):
    """Base class of every zoo module: map recording, ``has_residual``, identity start."""

    #: True when the module adds its own identity/residual path (non-local, GC, DANet...).
    has_residual: bool = False
    #: How :meth:`reset_to_identity` reaches the identity, in a few words (listings).
    identity_start: str = "blend alpha=0"
    #: False for a module with nothing to show (the ``none`` gate, a plain conv).
    exposes_maps: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.record_maps = False
        self.attention_maps: dict[str, torch.Tensor] = {}

    def mean_pool_gate(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For a module computing ``x * s(mean_hw(x))`` with a (B, C) gate ``s``: ``s`` as a
        function of the pooled (B, C) input, else None. Blocks use it to fold the gate into
        the BN before it while compiling (:mod:`attnexp.models.fused_tail`)."""
        return None

    def expose(self, name: str, value: torch.Tensor) -> None:
        """Keep a detached copy of a map when recording is on."""
        if self.record_maps:
            self.attention_maps[name] = value.detach().float()

    def reset_to_identity(self) -> None:
        """Make the module compute exactly ``f(x) = x`` on any input, and stay trainable.

        Default, for modules without an additive form (multiplicative gates such as
        ``x * sigmoid(z)``, whose gate never reaches exactly 1, and token mixers): a
        learnable scalar ``identity_blend`` (alpha) starting at 0 and the output
        ``x + alpha * (f(x) - x)``. At alpha = 0 this is ``x`` to the last bit; alpha gets
        the gradient ``<dL/dout, f(x) - x>`` from the first step, after which the module's
        own parameters learn too. A large gate bias instead would only be approximately 1
        and would stall the gate's gradient (sigmoid saturation).

        Modules with an additive form override this and zero the branch's last layer (no
        new parameter; that layer receives the gradient from the first step).
        """
        self.add_identity_blend()

    def add_identity_blend(self) -> None:
        """Add (or reset to 0) the blend parameter alpha and the hook that applies it."""
        if "identity_blend" in self._parameters:
            with torch.no_grad():
                self.identity_blend.zero_()
            return
        ref = next(self.parameters(), None)
        device = ref.device if ref is not None else None
        self.identity_blend = nn.Parameter(torch.zeros((), device=device))
        self.register_forward_hook(_identity_blend_hook)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, AttentionModule]]:
    """Switch map recording on for every zoo module in ``model``.

    Yields ``{qualified_name: module}``; after a forward pass each module's
    ``attention_maps`` holds its maps. Recording is switched off and maps are cleared on exit.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, AttentionModule)}
    for m in modules.values():
        m.record_maps = True
        m.attention_maps = {}
    try:
        yield modules
    finally:
        for m in modules.values():
            m.record_maps = False
            m.attention_maps = {}
