"""Budgets: one definition of what an optimizer step processes, and of every stop condition.

Tokens per step are the input positions processed per optimizer step over all processes, padding
excluded (a mean where examples vary in length, as SFT's do). Loss tokens per step are those that
carry loss: all of them for a causal LM and a series tokenizer, SFT's response tokens, the masked
LM's predicted positions. The trainer, `estimate` and the doctor all count through this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from trainlab.config import RunConfig


@dataclass(frozen=True)
class StepSize:
    examples: int
    """Examples per optimizer step: batch_size x grad_accum x processes."""
    tokens: int
    """Input positions per optimizer step over all processes, padding excluded."""
    loss_tokens: float
    """Positions that carry loss per optimizer step (a mean where it varies)."""

    @classmethod
    def of(cls, cfg: RunConfig, tokens_per_example: float, loss_tokens_per_example: float,
           world: int = 1) -> "StepSize":
        examples = cfg.train.batch_size * cfg.train.grad_accum * world
        return cls(examples, max(int(round(examples * tokens_per_example)), 1), examples * loss_tokens_per_example)


def total_steps(cfg: RunConfig, step: StepSize, examples_per_epoch: Optional[int] = None) -> Optional[int]:
    """The step budget the fixed budgets imply (the smallest of steps, tokens and epochs); None when only a
    time budget (or none) is set. Epochs need the examples an epoch holds."""
    t = cfg.train
    candidates = []
    if t.max_steps:
        candidates.append(t.max_steps)
    if t.max_tokens:
        candidates.append(math.ceil(t.max_tokens / step.tokens))
    if t.epochs and examples_per_epoch:
        candidates.append(math.ceil(t.epochs * examples_per_epoch / step.examples))
    return min(candidates) if candidates else None


@dataclass(frozen=True)
class Pace:
    """How far a run is through its budgets, from its step count and the seconds it has trained."""

    total_steps: Optional[int]
    max_seconds: Optional[float]

    def fraction_done(self, step: int, elapsed_s: float) -> float:
        fractions = [0.0]
        if self.total_steps:
            fractions.append(step / self.total_steps)
        if self.max_seconds:
            fractions.append(elapsed_s / self.max_seconds)
        return max(fractions)

    def schedule_total(self, step: int, elapsed_s: float) -> float:
        """Total steps the schedule spans; for a time budget, estimated from the pace so far."""
        done = self.fraction_done(step, elapsed_s)
        if self.total_steps and (not self.max_seconds or done == step / self.total_steps):
            return float(self.total_steps)
        if done <= 0:
            return float(self.total_steps or 1e12)
        return max(step / done, step + 1.0)

    def done(self, step: int, elapsed_s: float) -> bool:
        if self.total_steps is None and not self.max_seconds:
            return False
        return self.fraction_done(step, elapsed_s) >= 1.0
