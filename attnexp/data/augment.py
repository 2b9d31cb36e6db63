"""Modern augmentation: mixup, cutmix, RandAugment, TrivialAugmentWide, random erasing.

Options (``data.augment``)::

    mixup_alpha: 0.0       # > 0: mixup, lam ~ Beta(alpha, alpha) (Zhang et al. 2018)
    cutmix_alpha: 0.0      # > 0: cutmix, box from Beta(alpha, alpha) (Yun et al. 2019)
    mix_prob: 1.0          # probability that a batch is mixed at all
    switch_prob: 0.5       # both alphas > 0: probability of cutmix instead of mixup
    randaugment: null      # {num_ops: 2, magnitude: 9} (Cubuk et al. 2020)
    trivialaugment: false  # TrivialAugmentWide (Mueller & Hutter 2021)
    random_erasing: 0.0    # probability of erasing a box (Zhong et al. 2020), after normalising

Two paths, one distribution:

* streaming (DataLoader workers): torchvision.transforms.v2's ``RandAugment``,
  ``TrivialAugmentWide`` (per image, on uint8) and ``RandomErasing`` (per image, in the
  collate function after normalisation);
* in memory (:mod:`attnexp.data.memory`): :class:`ImageAugment` applies the same operations
  to whole batches on the data's device. The op and magnitude of each image are drawn on
  the host (from the batch's seed), images are grouped by op, and each group is transformed
  at once with per-image parameters (affine grids for the geometric ops, per-image factors
  for the colour ops): at most 14 groups per op slot, no Python loop over images. The op
  space and magnitudes are torchvision's own tables, and each op reproduces torchvision's
  kernel (tests compare them).

Mixup and cutmix (:class:`Mixer`) act in the training step on the device, for both paths:
one lam per batch as torchvision's ``v2.MixUp``/``v2.CutMix`` and timm (partner = the batch
rolled by one), cutmix's lam corrected to the pasted box's area, and the loss is
``lam * CE(y) + (1 - lam) * CE(y_rolled)`` (the soft-target CE of the mixed one-hot labels).
Accuracy keeps using the clean labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from attnexp.errors import ConfigError

# -- options -------------------------------------------------------------------------------
AUGMENT_KEYS = (
    "mixup_alpha",
    "cutmix_alpha",
    "mix_prob",
    "switch_prob",
    "randaugment",
    "trivialaugment",
    "random_erasing",
)


@dataclass(frozen=True)
class AugmentOptions:
    """``data.augment`` checked."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    randaugment: tuple[int, int] | None = None  # (num_ops, magnitude)
    trivialaugment: bool = False
    random_erasing: float = 0.0

    @property
    def mixing(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def image_augment(self) -> ImageAugment | None:
        """The per-image part for the in-memory path (None when off)."""
        if self.randaugment is None and not self.trivialaugment and not self.random_erasing:
            return None
        return ImageAugment(self.randaugment, self.trivialaugment, self.random_erasing)

    def mixer(self, seed: int = 0) -> Mixer | None:
        return Mixer(self, seed) if self.mixing else None


def _number(node: Mapping[str, Any], key: str, low: float, high: float | None = None) -> float:
    value = node.get(key)
    default = AugmentOptions.__dataclass_fields__[key].default
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"data.augment.{key} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"data.augment.{key} must be {bound}, got {value}")
    return float(value)


def augment_options(data: Mapping[str, Any] | None) -> AugmentOptions:
    """``data.augment`` (a mapping or None) as :class:`AugmentOptions`, checked."""
    node = (data or {}).get("augment") or {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"data.augment must be a mapping of {', '.join(AUGMENT_KEYS)}")
    unknown = sorted(set(node) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown data.augment option(s) {', '.join(unknown)}; valid: {', '.join(AUGMENT_KEYS)}"
        )
    ra = node.get("randaugment")
    randaugment = None
    if ra not in (None, False):
        if ra is True:
            ra = {}
        if not isinstance(ra, Mapping) or set(ra) - {"num_ops", "magnitude"}:
            raise ConfigError(
                f"data.augment.randaugment must be null or {{num_ops: 2, magnitude: 9}}, got {ra!r}"
            )
        num_ops, magnitude = ra.get("num_ops", 2), ra.get("magnitude", 9)
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ConfigError(f"data.augment.randaugment.num_ops must be >= 0, got {num_ops!r}")
        if not isinstance(magnitude, int) or not 0 <= magnitude < NUM_BINS:
            raise ConfigError(
                f"data.augment.randaugment.magnitude must be an integer in [0, {NUM_BINS - 1}], "
                f"got {magnitude!r}"
            )
        randaugment = (num_ops, magnitude)
    trivial = node.get("trivialaugment") or False
    if not isinstance(trivial, bool):
        raise ConfigError(f"data.augment.trivialaugment must be true or false, got {trivial!r}")
    if trivial and randaugment is not None:
        raise ConfigError("choose one of data.augment.randaugment and data.augment.trivialaugment")
    return AugmentOptions(
        mixup_alpha=_number(node, "mixup_alpha", 0.0),
        cutmix_alpha=_number(node, "cutmix_alpha", 0.0),
        mix_prob=_number(node, "mix_prob", 0.0, 1.0),
        switch_prob=_number(node, "switch_prob", 0.0, 1.0),
        randaugment=randaugment,
        trivialaugment=trivial,
        random_erasing=_number(node, "random_erasing", 0.0, 1.0),
    )


# -- mixup / cutmix ------------------------------------------------------------------------
@dataclass(frozen=True)
class MixParams:
    """What one batch's mixing drew: ``kind`` none | mixup | cutmix, lam (after the box
    correction for cutmix) and the box (y1, y2, x1, x2) for cutmix."""

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None = None


class Mixer:
    """Mixup/cutmix of a batch on its device; parameters drawn on the host from
    (seed, step, rank) so a resumed run mixes the same way."""

    def __init__(self, options: AugmentOptions, seed: int = 0) -> None:
        self.options = options
        self.seed = int(seed)

    def rng(self, step: int, rank: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step), int(rank), 0x6D6978])

    def sample(self, height: int, width: int, rng: np.random.Generator) -> MixParams:
        """torchvision.transforms.v2.MixUp / CutMix's draws (lam ~ Beta(a, a); cutmix: box
        centre uniform, sides sqrt(1 - lam) x H, W, clipped; lam = 1 - box area / image)."""
        o = self.options
        if rng.random() >= o.mix_prob:
            return MixParams("none", 1.0)
        use_cutmix = o.cutmix_alpha > 0 and (o.mixup_alpha <= 0 or rng.random() < o.switch_prob)
        if not use_cutmix:
            return MixParams("mixup", float(rng.beta(o.mixup_alpha, o.mixup_alpha)))
        lam = float(rng.beta(o.cutmix_alpha, o.cutmix_alpha))
        r_x, r_y = int(rng.integers(width)), int(rng.integers(height))
        r = 0.5 * math.sqrt(1.0 - lam)
        r_w_half, r_h_half = int(r * width), int(r * height)
        x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
        x2, y2 = min(r_x + r_w_half, width), min(r_y + r_h_half, height)
        lam = 1.0 - (x2 - x1) * (y2 - y1) / (width * height)
        return MixParams("cutmix", float(lam), (y1, y2, x1, x2))

    @staticmethod
    def apply(
        x: torch.Tensor, y: torch.Tensor, params: MixParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and the partner labels (the batch rolled by one)."""
        if params.kind == "none":
            return x, y
        partner = x.roll(1, 0)
        if params.kind == "mixup":
            x = partner.mul(1.0 - params.lam).add_(x, alpha=params.lam)
        else:
            y1, y2, x1, x2 = params.box  # type: ignore[misc]
            x = x.clone()
            x[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
        return x, y.roll(1, 0)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, step: int, rank: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        params = self.sample(x.shape[-2], x.shape[-1], self.rng(step, rank))
        mixed, partner = self.apply(x, y, params)
        return mixed, partner, params.lam


def mixed_targets(
    y: torch.Tensor, partner: torch.Tensor, lam: float, num_classes: int
) -> torch.Tensor:
    """The soft targets the loss corresponds to: lam * onehot(y) + (1 - lam) * onehot(partner)."""
    one = F.one_hot(y, num_classes).float()
    return one.mul(lam).add_(F.one_hot(partner, num_classes).float(), alpha=1.0 - lam)


# -- RandAugment / TrivialAugmentWide: the op tables -----------------------------------------
NUM_BINS = 31
OPS: tuple[str, ...] = tuple(v2.RandAugment._AUGMENTATION_SPACE)  # torchvision's 14 ops
RANDAUGMENT_SPACE = v2.RandAugment._AUGMENTATION_SPACE
TRIVIAL_SPACE = v2.TrivialAugmentWide._AUGMENTATION_SPACE


def _magnitude_table(
    space: Mapping[str, Any], height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(14, 31) magnitudes (0 for ops without one) and (14,) signed flags."""
    table = torch.zeros(len(OPS), NUM_BINS, dtype=torch.float64)
    signed = torch.zeros(len(OPS), dtype=torch.bool)
    for i, op in enumerate(OPS):
        fn, is_signed = space[op]
        values = fn(NUM_BINS, height, width)
        if values is not None:
            table[i] = values.to(torch.float64)
        signed[i] = bool(is_signed)
    return table, signed


def sample_ops(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    randaugment: tuple[int, int] | None = None,
    trivial: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ops (slots, n) and signed magnitudes (slots, n) for ``n`` images, as torchvision draws
    them: op uniform over the 14; RandAugment's fixed bin, TrivialAugment's uniform bin; the
    sign flipped with probability 1/2 for signed ops."""
    space = TRIVIAL_SPACE if trivial else RANDAUGMENT_SPACE
    table, signed = _magnitude_table(space, height, width)
    slots = 1 if trivial else randaugment[0]  # type: ignore[index]
    ops = torch.randint(len(OPS), (slots, n), generator=generator)
    if trivial:
        bins = torch.randint(NUM_BINS, (slots, n), generator=generator)
    else:
        bins = torch.full((slots, n), randaugment[1], dtype=torch.long)  # type: ignore[index]
    magnitude = table[ops, bins]
    flip = (torch.rand(slots, n, generator=generator) <= 0.5) & signed[ops]
    return ops, torch.where(flip, -magnitude, magnitude)


# -- the batched kernels (uint8 in, uint8 out; m: per-image magnitudes, float64 on the host) -
def _inverse_affine(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
) -> torch.Tensor:
    """torchvision's ``_get_inverse_affine_matrix`` (scale 1) for a batch: (n, 2, 3)."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], 1).view(-1, 2, 3)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_affine_grid`` + nearest ``grid_sample`` (fill 0), one matrix per image."""
    n, _, h, w = x.shape
    theta = theta.to(device=x.device, dtype=torch.float32)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(
        torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device).unsqueeze(-1)
    )
    base[..., 2].fill_(1)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=x.device)
    rescaled = theta.transpose(1, 2).div(scale)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(x.dtype)


def _geometric(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    zero = torch.zeros(n, dtype=torch.float64)
    if op in ("ShearX", "ShearY"):
        shear = torch.rad2deg(torch.atan(m))
        sx, sy = (shear, zero) if op == "ShearX" else (zero, shear)
        theta = _inverse_affine(zero, zero, zero, sx, sy, zero - w * 0.5, zero - h * 0.5)
    elif op in ("TranslateX", "TranslateY"):
        t = m.trunc()  # torchvision: int(magnitude)
        tx, ty = (t, zero) if op == "TranslateX" else (zero, t)
        theta = _inverse_affine(zero, tx, ty, zero, zero, zero, zero)
    else:  # Rotate: F.rotate(angle) uses the inverse of -angle about the centre
        theta = _inverse_affine(-(m % 360), zero, zero, zero, zero, zero, zero)
    return _warp(x, theta)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.float().unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _blend(
    x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, rest: torch.Tensor
) -> torch.Tensor:
    # x * ratio + other * (1 - ratio) as torchvision's mul + add_(alpha): one fused op
    return torch.addcmul(x.float() * ratio, other, rest).clamp_(0, 255).to(x.dtype)


def _colour(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    # factor and 1 - factor rounded to float32 from float64, as torchvision's Python floats
    factor = (1.0 + m).to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
    rest = (-m).to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
    if op == "Brightness":
        return x.float().mul(factor).clamp_(0, 255).to(x.dtype)
    if op == "Color":
        return _blend(x, _gray(x), factor, rest)
    if op == "Contrast":
        return _blend(x, _gray(x).mean((-3, -2, -1), keepdim=True), factor, rest)
    # Sharpness: blend with the 3x3 smoothed image inside a 1-pixel border
    c = x.shape[1]
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], device=x.device).expand(c, 1, 3, 3)
    out = x.float()
    blurred = F.conv2d(out, kernel, groups=c).round_()
    view = out[..., 1:-1, 1:-1]
    view.copy_(torch.addcmul(view, blurred - view, rest))
    return out.clamp_(0, 255).to(x.dtype)


def _apply_op(x: torch.Tensor, op: str, m: torch.Tensor) -> torch.Tensor:
    if op == "Identity":
        return x
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return _geometric(x, op, m)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return _colour(x, op, m)
    if op == "Posterize":
        bits = m.round().long().clamp(0, 8)
        mask = (((torch.ones_like(bits) << bits) - 1) << (8 - bits)) & 255
        mask = mask.to(torch.uint8)
        return x & mask.to(x.device).view(-1, 1, 1, 1)
    if op == "Solarize":
        threshold = (255.0 * m).to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 255 - x, x)
    if op == "AutoContrast":
        return v2.functional.autocontrast(x)
    if op == "Equalize":
        return v2.functional.equalize(x)
    raise ValueError(op)


def apply_ops(x: torch.Tensor, ops: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Apply slot after slot; within a slot, each op once to the images that drew it."""
    ops_np = ops.numpy()
    x = x.clone()
    for slot in range(ops.shape[0]):
        for k in np.unique(ops_np[slot]):
            if OPS[k] == "Identity":
                continue
            index = torch.from_numpy(np.flatnonzero(ops_np[slot] == k))
            dev_index = index.to(x.device, non_blocking=True)
            x[dev_index] = _apply_op(x[dev_index], OPS[k], magnitudes[slot, index])
    return x


def erasing_boxes(
    n: int, height: int, width: int, p: float, generator: torch.Generator, attempts: int = 10
) -> torch.Tensor:
    """(n, 4) boxes (top, left, h, w) of torchvision's ``RandomErasing`` (scale (0.02, 0.33),
    ratio (0.3, 3.3), 10 attempts); h = w = 0 where nothing is erased."""
    area = height * width
    erase = torch.rand(n, generator=generator) < p
    target = area * torch.empty(n, attempts, dtype=torch.float64).uniform_(
        0.02, 0.33, generator=generator
    )
    log_ratio = torch.empty(n, attempts, dtype=torch.float64).uniform_(
        math.log(0.3), math.log(3.3), generator=generator
    )
    aspect = torch.exp(log_ratio)
    h = torch.sqrt(target * aspect).round().long()
    w = torch.sqrt(target / aspect).round().long()
    ok = (h < height) & (w < width)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    h_sel = torch.where(first >= 0, h[rows, first.clamp_min(0)], 0)
    w_sel = torch.where(first >= 0, w[rows, first.clamp_min(0)], 0)
    top = (torch.rand(n, generator=generator) * (height - h_sel + 1)).long()
    left = (torch.rand(n, generator=generator) * (width - w_sel + 1)).long()
    keep = erase & (first >= 0)
    return torch.stack([top, left, h_sel * keep, w_sel * keep], 1)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero each image's box (after normalisation: the dataset mean), in place."""
    _, _, h, w = x.shape
    b = boxes.to(x.device, non_blocking=True)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_y = (rows >= b[:, :1]) & (rows < b[:, :1] + b[:, 2:3])
    in_x = (cols >= b[:, 1:2]) & (cols < b[:, 1:2] + b[:, 3:4])
    return x.masked_fill_(in_y[:, None, :, None] & in_x[:, None, None, :], 0.0)


@dataclass(frozen=True)
class ImageAugment:
    """The per-image policies for the in-memory path, applied a batch at a time."""

    randaugment: tuple[int, int] | None = None
    trivialaugment: bool = False
    random_erasing: float = 0.0

    def on_uint8(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """RandAugment / TrivialAugmentWide on a uint8 batch (after crop and flip)."""
        if self.randaugment is None and not self.trivialaugment:
            return x
        n, _, h, w = x.shape
        ops, mags = sample_ops(n, h, w, generator, self.randaugment, self.trivialaugment)
        return apply_ops(x, ops, mags)

    def on_float(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing on the normalised batch."""
        if not self.random_erasing:
            return x
        n, _, h, w = x.shape
        return erase(x, erasing_boxes(n, h, w, self.random_erasing, generator))


# -- the streaming path: torchvision's transforms ----------------------------------------------
def policy_transforms(extra: ImageAugment | None) -> list[Any]:
    """Per-sample uint8 transforms (after crop and flip) for the streaming path."""
    if extra is None:
        return []
    if extra.randaugment is not None:
        num_ops, magnitude = extra.randaugment
        return [v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=NUM_BINS)]
    if extra.trivialaugment:
        return [v2.TrivialAugmentWide(num_magnitude_bins=NUM_BINS)]
    return []


def erasing_transform(extra: ImageAugment | None) -> Any | None:
    """Per-sample random erasing on normalised tensors (streaming collate), or None."""
    if extra is None or not extra.random_erasing:
        return None
    return v2.RandomErasing(p=extra.random_erasing, value=0)
