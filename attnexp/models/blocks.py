"""Residual blocks with named attention hook points and replaceable convs.

Every block keeps torchvision's parameter names (``conv1``, ``bn1``, ..., ``downsample.0/1``)
so ImageNet weights load unchanged. Attention modules live in ``block.attn[position]`` (an
``nn.Sequential`` per position, created on demand), so their parameters are named
``layerS.B.attn.<position>.<i>.*`` and never collide with backbone names.

The blocks own their placement vocabulary: :attr:`ResidualBlock.POSITIONS` (gate hook points),
``CONV_SITES`` (the convs a conv-kind module may replace) and ``DEFAULT_CONV_SITES`` per block
type. :mod:`attnexp.models.placement` reads them from here; nothing else lists them.

Hook points (the ``position`` of a placement), in forward order::

    residual branch: [before_block] conv1 [after_conv1] conv2 [after_conv2] conv3 [after_conv3]
    shortcut:        identity | 1x1 projection | zero padding, then [identity]
    output:          ReLU(branch + shortcut) [after_add]     (no ReLU in pre-activation blocks)

* ``before_block`` – start of the residual branch (SE-PRE, SENet fig. 5c): the shortcut still
  carries the ungated input; channels = block input channels. In pre-activation blocks it sits
  after the block's BN-ReLU pre-activation, just before the first conv.
* ``after_conv1`` / ``after_conv2`` – after that conv unit: conv+BN+ReLU in post-activation
  blocks (mmdet's plugin convention; ``after_conv2`` of a bottleneck is SENet's SE_3x3), directly
  after the conv in pre-activation blocks.
* ``after_conv3`` – end of the residual branch, before the add (the SE/CBAM placement): after
  the last conv's BN (post-activation) or the last conv (pre-activation). A basic block has two
  convs, so on it ``after_conv2`` and ``after_conv3`` are the same place (applied in that order).
* ``identity`` – on the shortcut branch, after any projection or zero padding (SE-Identity,
  SENet fig. 5e); channels = block output channels.
* ``after_add`` – after the sum and its ReLU (SE-POST, SENet fig. 5d: "after the summation
  with the identity branch (after ReLU)"); pre-activation blocks have no ReLU there.

Conv sites (``position: conv`` with ``sites: [...]``): a conv-kind module takes the place of
the named conv with its channels and stride. Basic blocks: ``conv1`` (3x3, strided),
``conv2`` (3x3), ``downsample`` (the 1x1 projection shortcut, where the block has one);
default: both 3x3 convs. Bottlenecks: ``conv1`` (1x1; strided under ``stride_position="v1"``),
``conv2`` (3x3, grouped in ResNeXt; strided under v1.5), ``conv3`` (1x1), ``downsample``;
default: ``conv2``, the 3x3. A ResNeXt's group count is not passed on (set the module's own
option, e.g. ``groups``). When the module has ``includes_norm_act = True`` the BN (and ReLU)
that follows the replaced conv is removed (the module already normalises and activates).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.attention import fused
from attnexp.models import fused_tail

#: Gate positions inside a block, in forward order (``between_stages`` belongs to the backbone).
BLOCK_POSITIONS: tuple[str, ...] = (
    "before_block",
    "after_conv1",
    "after_conv2",
    "after_conv3",
    "after_add",
    "identity",
)


class HookPoint(NamedTuple):
    """Where a gate can sit in a block: its channel count and whether it lies after the stride
    (then its spatial size is the block's output size, otherwise its input size)."""

    channels: int
    strided: bool


class ConvSite(NamedTuple):
    """A conv a conv-kind module can replace. ``input_strided`` when an earlier layer of the
    block already applied the stride, so the conv's input has the block's output size."""

    attr: str
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    input_strided: bool = False


def conv3x3(w_in: int, w_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, no bias (it is followed by a BN)."""
    return nn.Conv2d(w_in, w_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(w_in: int, w_out: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv, no bias."""
    return nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut option A of He et al. 2016: subsample by ``stride``, zero-pad new channels.

    Parameter-free. The identity occupies the first ``in_channels`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def make_shortcut(
    kind: str, in_channels: int, out_channels: int, stride: int, *, norm: bool = True
) -> nn.Module | None:
    """None when the shapes match, else option "A" (zero pad) or "B" (1x1 conv [+ BN])."""
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    if not norm:  # pre-activation nets: the projection acts on the pre-activated input
        return conv1x1(in_channels, out_channels, stride)
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` (or every module, globally) has forward hooks that must see it run."""
    from torch.nn.modules import module as module_mod

    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module_mod._global_forward_hooks
        or module_mod._global_forward_pre_hooks
    )


class ResidualBlock(nn.Module):
    """Common part of every block: hook storage, the placement vocabulary, conv replacement.

    Subclasses set ``CONV_SITES``, ``DEFAULT_CONV_SITES`` and ``NORM_AFTER``, define
    :meth:`hook_points`, :meth:`conv_sites` and the forward pass, calling
    ``self._gate(position, x)`` at each hook point and ``self._unit(conv, x, relu)`` for each
    conv + norm (+ ReLU) unit.
    """

    #: Gate positions every block offers (keys of :meth:`hook_points`).
    POSITIONS: ClassVar[tuple[str, ...]] = BLOCK_POSITIONS
    #: Convs a conv-kind module may replace, in forward order.
    CONV_SITES: ClassVar[tuple[str, ...]] = ()
    #: Sites replaced when a conv placement names none: the block's 3x3 convs.
    DEFAULT_CONV_SITES: ClassVar[tuple[str, ...]] = ()
    #: conv site -> the norm that follows it (removed if the new module has its own norm+act).
    NORM_AFTER: ClassVar[dict[str, str | None]] = {}
    #: The (only) last BN of the residual branch, zeroed by ``zero_init_residual``.
    last_bn: str | None = None
    #: Pre-activation blocks take their projection shortcut from the pre-activated input.
    preact: bool = False

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        #: Sites replaced by a module that applies its own BN + ReLU.
        self.sites_with_norm_act: set[str] = set()
        self.attn = nn.ModuleDict()

    # -- placement interface ---------------------------------------------------------------
    def hook_points(self) -> dict[str, HookPoint]:
        """Channel count and stride side of every gate position this block offers."""
        raise NotImplementedError

    def conv_sites(self) -> dict[str, ConvSite]:
        """The replaceable convs this block has (``downsample`` only with a projection)."""
        raise NotImplementedError

    def _downsample_site(self) -> dict[str, ConvSite]:
        """``{"downsample": site}`` when the shortcut is a 1x1 projection, else ``{}``."""
        if not self.has_projection:
            return {}
        site = ConvSite("downsample", self.in_channels, self.out_channels, self.stride, 1)
        return {"downsample": site}

    def _set_shortcut(self, shortcut: nn.Module | None) -> None:
        self.downsample = shortcut
        #: True when the shortcut is a 1x1 projection (a conv site), not identity/zero pad.
        self.has_projection = isinstance(shortcut, (nn.Sequential, nn.Conv2d))

    def add_gate(self, position: str, module: nn.Module) -> str:
        """Append ``module`` at ``position``; returns its path inside the block."""
        if position not in self.hook_points():
            raise KeyError(position)
        if position not in self.attn:
            self.attn[position] = nn.Sequential()
        seq = self.attn[position]
        seq.append(module)
        return f"attn.{position}.{len(seq) - 1}"

    def replace_conv(self, site: str, module: nn.Module) -> str:
        """Put ``module`` in place of conv ``site``; drop the following BN if it has its own
        norm + activation. Returns the module's path inside the block."""
        if site not in self.conv_sites():
            raise KeyError(site)
        norm_act = getattr(module, "includes_norm_act", False)
        if site == "downsample":
            if isinstance(self.downsample, nn.Sequential):
                self.downsample[0] = module
                if norm_act:
                    self.downsample[1] = nn.Identity()
                path = "downsample.0"
            else:
                self.downsample = module
                path = "downsample"
        else:
            setattr(self, site, module)
            norm = self.NORM_AFTER.get(site)
            if norm_act and norm is not None:
                setattr(self, norm, nn.Identity())
            path = site
        if norm_act:
            self.sites_with_norm_act.add(site)
        return path

    def _gate(self, position: str, x: torch.Tensor) -> torch.Tensor:
        if position in self.attn:
            return self.attn[position](x)
        return x

    def _unit(self, site: str, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """Conv ``site``, then its BN (and ReLU) unless the conv was replaced by a module
        that has them (post-activation blocks)."""
        out = getattr(self, site)(x)
        if site in self.sites_with_norm_act:
            return out
        out = getattr(self, self.NORM_AFTER[site])(out)  # type: ignore[arg-type]
        return F.relu(out, inplace=True) if relu else out

    def _residual_tail(
        self, site: str, branch: torch.Tensor, x: torch.Tensor, gates: tuple[str, ...]
    ) -> torch.Tensor:
        """Conv ``site`` with its BN, the gates at ``gates``, the shortcut of ``x`` with its
        ``identity`` gate, the add and the ReLU. While compiling, BN + a mean-pooled channel
        gate (SE, ECA) + add + ReLU run as one folded formulation
        (:mod:`attnexp.models.fused_tail`), with the same maths."""
        out = getattr(self, site)(branch)
        identity = x if self.downsample is None else self.downsample(x)
        identity = self._gate("identity", identity)
        plan = self._fused_tail_plan(site, gates) if fused.active() else None
        if plan is not None:
            bn, gate = plan
            return fused_tail.bn_gate_add_relu(out, bn, identity, gate)
        if site not in self.sites_with_norm_act:
            out = getattr(self, self.NORM_AFTER[site])(out)  # type: ignore[arg-type]
        for position in gates:
            out = self._gate(position, out)
        return self.relu(out + identity)

    def _fused_tail_plan(
        self, site: str, gates: tuple[str, ...]
    ) -> tuple[nn.BatchNorm2d, fused_tail.Gate | None] | None:
        """(BN, gate) when the tail can be folded, else None: a plain ``nn.BatchNorm2d``, at
        most one gate module and one with a mean-pooled channel gate, no hooks anywhere (a
        hook, e.g. an identity blend or feature capture, must see the module run)."""
        if site in self.sites_with_norm_act:
            return None
        bn = getattr(self, self.NORM_AFTER[site])  # type: ignore[arg-type]
        if not fused_tail.fusable_norm(bn) or _hooked(bn) or _hooked(self.relu):
            return None
        containers = [self.attn[p] for p in gates if p in self.attn]
        modules = [m for seq in containers for m in seq]
        if not modules:
            return (bn, None) if fused_tail.FOLD_PLAIN_TAIL else None
        if len(modules) > 1 or any(_hooked(m) for m in (*containers, *modules)):
            return None
        pooled_gate = getattr(modules[0], "mean_pool_gate", None)
        gate = pooled_gate() if pooled_gate is not None else None
        return None if gate is None else (bn, gate)

    def _pre_act(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """BN + ReLU between two convs of a pre-activation block, skipped when conv ``site``
        (the one before) was replaced by a module that normalises and activates itself."""
        if site in self.sites_with_norm_act:
            return x
        return F.relu(getattr(self, self.NORM_AFTER[site])(x), inplace=True)  # type: ignore[arg-type]


class BasicBlock(ResidualBlock):
    """Post-activation basic block (He et al. 2016).

    3x3/s - BN - ReLU [after_conv1], 3x3 - BN [after_conv2, after_conv3],
    (+ shortcut [identity]) - ReLU [after_add]; [before_block] on the branch input.
    """

    CONV_SITES = ("conv1", "conv2", "downsample")
    DEFAULT_CONV_SITES = ("conv1", "conv2")
    NORM_AFTER = {"conv1": "bn1", "conv2": "bn2"}
    last_bn = "bn2"

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B"
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self._set_shortcut(make_shortcut(shortcut, in_channels, out_channels, stride))

    def hook_points(self) -> dict[str, HookPoint]:
        return _basic_hook_points(self.in_channels, self.out_channels)

    def conv_sites(self) -> dict[str, ConvSite]:
        return _basic_conv_sites(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._gate("before_block", x)
        out = self._unit("conv1", out, relu=True)
        out = self._gate("after_conv1", out)
        out = self._residual_tail("conv2", out, x, ("after_conv2", "after_conv3"))
        return self._gate("after_add", out)


class Bottleneck(ResidualBlock):
    """Post-activation bottleneck (torchvision's, incl. ResNeXt groups and wide widths).

    1x1 - BN - ReLU [after_conv1], 3x3 (groups) - BN - ReLU [after_conv2],
    1x1 - BN [after_conv3], (+ shortcut [identity]) - ReLU [after_add]; [before_block] on the
    branch input. ``stride_on="conv2"`` is v1.5 (torchvision), ``"conv1"`` is v1 (He et al.).
    """

    CONV_SITES = ("conv1", "conv2", "conv3", "downsample")
    DEFAULT_CONV_SITES = ("conv2",)
    NORM_AFTER = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}
    last_bn = "bn3"

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int = 1,
        *,
        groups: int = 1,
        stride_on: str = "conv2",
        shortcut: str = "B",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.width = width
        self.stride_on = stride_on
        s1, s2 = (stride, 1) if stride_on == "conv1" else (1, stride)
        self.conv1 = conv1x1(in_channels, width, s1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, s2, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self._set_shortcut(make_shortcut(shortcut, in_channels, out_channels, stride))

    def hook_points(self) -> dict[str, HookPoint]:
        c_in, w, c_out = self.in_channels, self.width, self.out_channels
        return {
            "before_block": HookPoint(c_in, False),
            "after_conv1": HookPoint(w, self.stride_on == "conv1"),
            "after_conv2": HookPoint(w, True),
            "after_conv3": HookPoint(c_out, True),
            "identity": HookPoint(c_out, True),
            "after_add": HookPoint(c_out, True),
        }

    def conv_sites(self) -> dict[str, ConvSite]:
        v1 = self.stride_on == "conv1"
        s1, s2 = (self.stride, 1) if v1 else (1, self.stride)
        w = self.width
        return {
            "conv1": ConvSite("conv1", self.in_channels, w, s1, 1),
            "conv2": ConvSite("conv2", w, w, s2, 3, v1),
            "conv3": ConvSite("conv3", w, self.out_channels, 1, 1, True),
            **self._downsample_site(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._gate("before_block", x)
        out = self._unit("conv1", out, relu=True)
        out = self._gate("after_conv1", out)
        out = self._unit("conv2", out, relu=True)
        out = self._gate("after_conv2", out)
        out = self._residual_tail("conv3", out, x, ("after_conv3",))
        return self._gate("after_add", out)


class PreActBasicBlock(ResidualBlock):
    """Pre-activation basic block (He et al. 2016b; the WRN block of Zagoruyko & Komodakis).

    BN - ReLU (pre-activation) [before_block], 3x3/s [after_conv1], BN - ReLU - dropout,
    3x3 [after_conv2, after_conv3], (+ shortcut [identity]) [after_add]. A projection
    shortcut takes the pre-activated input (WRN's official code); identity and zero-pad
    shortcuts take the raw input.
    """

    CONV_SITES = ("conv1", "conv2", "downsample")
    DEFAULT_CONV_SITES = ("conv1", "conv2")
    NORM_AFTER = {"conv1": "bn2", "conv2": None}
    preact = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        dropout: float = 0.0,
        shortcut: str = "B",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        self._set_shortcut(make_shortcut(shortcut, in_channels, out_channels, stride, norm=False))

    def hook_points(self) -> dict[str, HookPoint]:
        return _basic_hook_points(self.in_channels, self.out_channels)

    def conv_sites(self) -> dict[str, ConvSite]:
        return _basic_conv_sites(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(self._gate("before_block", pre))
        out = self._gate("after_conv1", out)
        out = self.conv2(self.dropout(self._pre_act("conv1", out)))
        out = self._gate("after_conv2", out)
        out = self._gate("after_conv3", out)
        identity = _preact_shortcut(self.downsample, x, pre)
        identity = self._gate("identity", identity)
        return self._gate("after_add", out + identity)


class PreActBottleneck(ResidualBlock):
    """Pre-activation bottleneck (He et al. 2016b, the CIFAR ResNet-164).

    BN - ReLU [before_block], 1x1 [after_conv1], BN - ReLU - 3x3/s [after_conv2],
    BN - ReLU - 1x1 [after_conv3], (+ shortcut [identity]) [after_add].
    """

    CONV_SITES = ("conv1", "conv2", "conv3", "downsample")
    DEFAULT_CONV_SITES = ("conv2",)
    NORM_AFTER = {"conv1": "bn2", "conv2": "bn3", "conv3": None}
    preact = True

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        stride: int = 1,
        *,
        shortcut: str = "B",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.width = width
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv1x1(in_channels, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self._set_shortcut(make_shortcut(shortcut, in_channels, out_channels, stride, norm=False))

    def hook_points(self) -> dict[str, HookPoint]:
        c_in, w, c_out = self.in_channels, self.width, self.out_channels
        return {
            "before_block": HookPoint(c_in, False),
            "after_conv1": HookPoint(w, False),
            "after_conv2": HookPoint(w, True),
            "after_conv3": HookPoint(c_out, True),
            "identity": HookPoint(c_out, True),
            "after_add": HookPoint(c_out, True),
        }

    def conv_sites(self) -> dict[str, ConvSite]:
        w = self.width
        return {
            "conv1": ConvSite("conv1", self.in_channels, w, 1, 1),
            "conv2": ConvSite("conv2", w, w, self.stride, 3),
            "conv3": ConvSite("conv3", w, self.out_channels, 1, 1, True),
            **self._downsample_site(),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(self._gate("before_block", pre))
        out = self._gate("after_conv1", out)
        out = self.conv2(self._pre_act("conv1", out))
        out = self._gate("after_conv2", out)
        out = self.conv3(self._pre_act("conv2", out))
        out = self._gate("after_conv3", out)
        identity = _preact_shortcut(self.downsample, x, pre)
        identity = self._gate("identity", identity)
        return self._gate("after_add", out + identity)


def _basic_hook_points(c_in: int, c_out: int) -> dict[str, HookPoint]:
    """Basic blocks (post- and pre-activation): everything after the input is strided."""
    return {
        "before_block": HookPoint(c_in, False),
        "after_conv1": HookPoint(c_out, True),
        "after_conv2": HookPoint(c_out, True),
        "after_conv3": HookPoint(c_out, True),
        "identity": HookPoint(c_out, True),
        "after_add": HookPoint(c_out, True),
    }


def _basic_conv_sites(block: ResidualBlock) -> dict[str, ConvSite]:
    c_in, c_out = block.in_channels, block.out_channels
    return {
        "conv1": ConvSite("conv1", c_in, c_out, block.stride, 3),
        "conv2": ConvSite("conv2", c_out, c_out, 1, 3, True),
        **block._downsample_site(),
    }


def _preact_shortcut(
    downsample: nn.Module | None, x: torch.Tensor, pre: torch.Tensor
) -> torch.Tensor:
    """Identity on ``x``, zero padding of ``x``, or a projection of the pre-activated ``pre``."""
    if downsample is None:
        return x
    if isinstance(downsample, ZeroPadShortcut):
        return downsample(x)
    return downsample(pre)
