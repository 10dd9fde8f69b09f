"""Scores of probabilistic forecasts, and the tests that compare two forecasters on the same origins.

CRPS from samples (the energy form, exact for the empirical distribution) and for a Gaussian (closed
form); central-interval coverage; a moving-block bootstrap interval for a mean loss; the Diebold-Mariano
test with the Harvey-Leybourne-Newbold small-sample correction, whose autocovariances run to the
overlap of the forecasts (h-step forecasts from origins `stride` apart share ceil(h / stride) - 1 steps).
scipy (the `experiment` extra) is imported where a distribution is needed.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def crps_samples(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of each row of samples (N, m) at y (N,): E|X - y| - E|X - X'| / 2, from the sorted samples."""
    x = np.sort(samples, axis=1)
    m = x.shape[1]
    first = np.abs(x - y[:, None]).mean(1)
    weights = 2 * np.arange(1, m + 1) - m - 1  # sum_{i<j} (x_j - x_i) = sum_k (2k - m - 1) x_(k)
    spread = (x * weights).sum(1) / (m * m)
    return first - spread


def crps_gaussian(mean: np.ndarray, sd: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy import stats

    z = (y - mean) / sd
    return sd * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))


def covered(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    return float(((y >= lo) & (y <= hi)).mean())


def block_bootstrap_ci(losses: np.ndarray, block: int, seed: int = 0, draws: int = 1000,
                       level: float = 0.95) -> list[float]:
    """A moving-block bootstrap interval for the mean of a serially dependent series of losses."""
    n = len(losses)
    block = max(1, min(block, n))
    rng = np.random.default_rng(seed)
    blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(draws, blocks))
    idx = (starts[..., None] + np.arange(block)).reshape(draws, -1)[:, :n]
    means = losses[idx].mean(1)
    tail = (1 - level) / 2
    return [float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))]


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, overlap: int) -> dict[str, Optional[float]]:
    """Whether forecaster a's losses are lower than b's: the DM statistic of d = a - b with the HLN correction
    and its one-sided p-value (small: a better) from Student's t with n - 1 degrees of freedom. `overlap` is
    the forecast horizon in origins (h for consecutive origins): autocovariances to lag overlap - 1 count."""
    from scipy import stats

    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n, h = len(d), max(1, int(overlap))
    if n < 3:
        return {"stat": None, "p": None}
    c = d - d.mean()
    var = float(c @ c) / n + 2 * sum(float(c[k:] @ c[:-k]) / n for k in range(1, min(h, n)))
    if var <= 0:
        var = float(c @ c) / n  # the long-run variance estimate can go negative; fall back to lag 0
    if var <= 0:
        return {"stat": None, "p": None}
    dm = d.mean() / math.sqrt(var / n)
    correction = math.sqrt(max(n + 1 - 2 * h + h * (h - 1) / n, 1e-12) / n)
    stat = dm * correction
    return {"stat": float(stat), "p": float(stats.t.cdf(stat, n - 1))}
