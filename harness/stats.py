"""Intervals over seeds: the mean of a few runs and its 95% Student-t interval.

Seeds are few (2-5), so the normal 1.96 would be far too narrow; scipy is not a dependency, hence the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}; beyond df 30 the normal quantile is within 2% of it."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval) of independent runs; half-width NaN for a single run."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan
    n = len(finite)
    mean = sum(finite) / n
    if n == 1:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return mean, t_quantile_975(n - 1) * std / math.sqrt(n)
