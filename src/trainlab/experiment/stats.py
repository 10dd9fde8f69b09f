"""Statistics for comparing runs: mean, spread, t-intervals, Welch's t-test."""

from __future__ import annotations

import math
from typing import Any, Sequence


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std, and a 95% t-interval for the mean (a point when there is one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": n, "values": list(values)}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Difference of means (a - b) and Welch's two-sided t-test p-value (None when undefined)."""
    from scipy import stats

    diff = sum(a) / len(a) - sum(b) / len(b)
    p = None
    if len(a) > 1 and len(b) > 1:
        res = stats.ttest_ind(a, b, equal_var=False)
        p = None if math.isnan(res.pvalue) else float(res.pvalue)
    return {"diff": diff, "p": p}
