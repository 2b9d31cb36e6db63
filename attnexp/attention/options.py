"""Option checks and small layers shared by every family of the zoo.

One implementation each, so every module words its errors the same way: a
:class:`~attnexp.errors.ConfigError` that names the module, the option, the bad value and
what would be valid. Constructors call these before building any layer, so a bad knob
fails in the config check, not three hours into a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.errors import ConfigError, check

__all__ = [
    "SafeBatchNorm1d",
    "SafeBatchNorm2d",
    "check_choice",
    "check_flag",
    "check_groups",
    "check_heads",
    "check_int",
    "check_int_list",
    "check_number",
    "check_odd",
    "divisors",
    "reduced",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_choice(module: str, option: str, value: object, valid: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``valid``; else a ConfigError listing the choices."""
    check(
        isinstance(value, str) and value in valid,
        f"{module}: invalid value {value!r} for option {option!r}; "
        f"valid choices: {', '.join(valid)}",
    )
    return value  # type: ignore[return-value]


def check_int(module: str, option: str, value: object, low: int = 1) -> int:
    """Return ``value`` if it is an int >= ``low`` (bools rejected); else a ConfigError."""
    check(
        _is_int(value) and value >= low,  # type: ignore[operator]
        f"{module}: option {option!r} must be an integer >= {low}, got {value!r}",
    )
    return value  # type: ignore[return-value]


def check_odd(module: str, option: str, value: object) -> int:
    """Return ``value`` if it is a positive odd int.

    An even kernel with padding (k-1)//2 shifts the output by one position, so it is
    refused rather than padded.
    """
    check(
        _is_int(value) and value >= 1 and value % 2 == 1,  # type: ignore[operator]
        f"{module}: option {option!r} must be a positive odd integer (1, 3, 5, 7, ...), "
        f"got {value!r}; an even kernel shifts the output by one position",
    )
    return value  # type: ignore[return-value]


def check_flag(module: str, option: str, value: object) -> bool:
    """Return ``value`` if it is a bool; else a ConfigError."""
    check(
        isinstance(value, bool),
        f"{module}: option {option!r} must be true or false, got {value!r}",
    )
    return value  # type: ignore[return-value]


def check_number(
    module: str,
    option: str,
    value: object,
    low: float,
    high: float | None = None,
    *,
    low_inclusive: bool = False,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float if it is a number in the interval; else a ConfigError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)  # type: ignore[arg-type]  # inf/nan: never a setting
    if ok:
        ok = value >= low if low_inclusive else value > low  # type: ignore[operator]
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high  # type: ignore[operator]
    interval = (
        f"{'[' if low_inclusive else '('}{low:g}, "
        f"{'inf)' if high is None else f'{high:g}' + (']' if high_inclusive else ')')}"
    )
    check(ok, f"{module}: option {option!r} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int_list(module: str, option: str, values: object) -> tuple[int, ...]:
    """A non-empty list of ints (a single int is accepted as a list of one)."""
    if _is_int(values):
        values = (values,)
    check(
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and len(values) > 0
        and all(_is_int(v) for v in values),
        f"{module}: option {option!r} must be a non-empty list of integers, got {values!r}",
    )
    return tuple(values)  # type: ignore[arg-type]


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_groups(module: str, option: str, groups: object, *channels: tuple[str, int]) -> int:
    """``groups`` must divide every named channel count; the error lists the valid values."""
    groups = check_int(module, option, groups)
    if all(c % groups == 0 for _, c in channels):
        return groups
    common = math.gcd(*(c for _, c in channels))
    counts = " and ".join(f"{n}={c}" for n, c in channels)
    raise ConfigError(
        f"{module}: option {option!r}={groups} does not divide {counts}; "
        f"valid {option}: {', '.join(map(str, divisors(common)))}"
    )


def check_heads(module: str, channels: int, heads: object) -> int:
    """Attention heads must divide the channel count (each head gets C / heads channels)."""
    heads = check_int(module, "heads", heads)
    if channels % heads:
        raise ConfigError(
            f"{module}: option 'heads'={heads} does not divide channels={channels}; valid "
            f"heads for {channels} channels: {', '.join(map(str, divisors(channels)))}"
        )
    return heads


def reduced(channels: int, reduction: int) -> int:
    """Hidden width of a bottleneck MLP: ``C // r``, at least 1, never rounded to 8.

    The papers (SE, CBAM, BAM) use ``C / r``; rounding to a multiple of 8, as some
    libraries do, changes the parameter counts away from the published ones.
    """
    return max(channels // reduction, 1)


class _SingleValueSafe:
    """BatchNorm that survives a single value per channel in training mode.

    PyTorch's BatchNorm raises "Expected more than 1 value per channel when training" for
    a batch of one pooled vector (B=1 with a 1x1 map, e.g. the last batch of an epoch with
    ``drop_last=False``). Batch statistics of one value are meaningless anyway, so in that
    case the layer normalises with its running statistics and leaves them untouched (as in
    eval mode); every other input is the ordinary BatchNorm. The parameters and buffers
    are those of ``nn.BatchNorm*d``, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() <= x.shape[1]:  # type: ignore[attr-defined]
            return F.batch_norm(
                x,
                self.running_mean,  # type: ignore[attr-defined]
                self.running_var,  # type: ignore[attr-defined]
                self.weight,  # type: ignore[attr-defined]
                self.bias,  # type: ignore[attr-defined]
                False,
                0.0,
                self.eps,  # type: ignore[attr-defined]
            )
        return super().forward(x)  # type: ignore[misc]


class SafeBatchNorm1d(_SingleValueSafe, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that falls back to running statistics for one value per channel."""


class SafeBatchNorm2d(_SingleValueSafe, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that falls back to running statistics for one value per channel."""
