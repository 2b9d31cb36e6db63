"""Statistics of a table row: mean ± sample std over seeds, Welch's interval vs the baseline.

The interval comes from :func:`scipy.stats.ttest_ind` with ``equal_var=False`` (Welch's
t-test, Welch–Satterthwaite degrees of freedom), not from a formula of our own.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) over the completed runs of a row."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class WelchCI:
    """Confidence interval of mean(a) - mean(b) by Welch's t (unequal variances)."""

    diff: float
    low: float
    high: float
    df: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def welch_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchCI | None:
    """CI of ``mean(a) - mean(b)`` by Welch's t-test (scipy). None when either side has
    fewer than 2 values; a zero-width interval when both sides are constant."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.fmean(a) - statistics.fmean(b)
    if statistics.variance(a) == 0.0 and statistics.variance(b) == 0.0:
        return WelchCI(diff, diff, diff, math.inf, confidence)
    with warnings.catch_warnings():  # near-constant sides: scipy warns, the CI is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(a, b, equal_var=False)
        interval = result.confidence_interval(confidence)
    return WelchCI(diff, float(interval.low), float(interval.high), float(result.df), confidence)
