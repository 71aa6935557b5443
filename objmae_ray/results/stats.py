"""Statistics over trials: mean and sample standard deviation over repeats, Welch's t-test between two
configurations' repeats, the Pareto front."""
from __future__ import annotations

import math
import warnings

from scipy import stats as scipy_stats


def finite(value) -> float | None:
    """value as a finite float, or None (missing, NaN, inf, not a number)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation) of values; (None, None) when empty, std 0.0 for one value."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (unequal variances) that a and b have the same mean; None when it
    cannot be computed (fewer than 2 values on a side, or no spread on either side and equal means). No spread
    on either side but different means gives 0.0: the difference is beyond any noise the repeats show."""
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():  # identical values on one side: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    return float(p) if math.isfinite(p) else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when maximising both coordinates."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
