"""The one in-memory form every reader produces and every detector reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


# a logged step beyond this is garbage (a garbled console line, a damaged file), not a step
MAX_STEP = 10**15


def is_number(value: Any) -> bool:
    """An int or float that is not a bool (JSON's true reads as 1 otherwise)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_step(value: Any) -> bool:
    """A whole, non-negative step below MAX_STEP: what a row must carry to be on a curve."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_STEP


@dataclass
class RunSeries:
    """A run's metrics, whoever wrote them.

    `train` and `val` are rows with a `step` and trainlab's names (loss, lr, grad_norm, acc, ...);
    `facts` holds what is known of the run's setup (peak lr, warmup, clipping, parameters, tokens per
    step, precision, ...); a reader leaves out what its format does not record, and says in `notes`
    what a check would have needed.
    """

    source: str  # trainlab | hf_trainer | lightning | tensorboard | mlflow | wandb | console
    path: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the reader could not tell (said in the report)

    def col(self, key: str, split: str = "train", finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, in step order; non-finite values dropped unless finite=False."""
        rows = self.train if split == "train" else self.val
        # readers drop damaged rows; a series built by hand, or a console line garbled into a huge step, may not
        pairs = [(r["step"], float(r[key])) for r in rows if is_number(r.get(key)) and is_step(r.get("step"))]
        if finite:
            pairs = [p for p in pairs if math.isfinite(p[1])]
        pairs.sort(key=lambda p: p[0])
        if not pairs:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        steps, values = zip(*pairs)
        return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)

    def has(self, key: str, split: str = "train") -> bool:
        return len(self.col(key, split)[0]) > 0

    @property
    def last_step(self) -> int:
        steps = [r["step"] for r in self.train + self.val if is_step(r.get("step"))]
        return max(steps) if steps else 0

    def fact(self, key: str, default: Any = None) -> Any:
        value = self.facts.get(key)
        return default if value is None else value


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """A centred rolling median: robust to the single-batch noise of a training loss."""
    if len(values) == 0 or window <= 1:
        return values.copy()
    half = window // 2
    return np.array([np.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))])
