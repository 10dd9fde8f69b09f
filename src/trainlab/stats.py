"""Statistics shared by the trainer, the doctor and the experiments: the robust spike test, mean, spread,
t-intervals, Welch's t-test. scipy (the `experiment` extra) is imported only where a distribution is needed."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def finite_number(value: Any) -> bool:
    """A real, finite number (a loss read back from JSON may be None, or NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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


def is_spike(history: Sequence[float], value: float, factor: float) -> bool:
    """Whether `value` lies more than (factor - 1) x max(|median|, 5 x MAD) above the median of `history`:
    above `factor` x the median for a positive loss, with a scale that stays meaningful when a loss can be
    negative (a series tokenizer's entropy reward) or hovers near zero."""
    values = np.asarray(history, dtype=np.float64)
    median = float(np.median(values))
    spread = float(np.median(np.abs(values - median)))
    return value - median > (factor - 1) * max(abs(median), 5 * spread, 1e-8)
