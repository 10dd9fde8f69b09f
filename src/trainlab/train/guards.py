"""Guards: a step whose loss or gradient is not finite, or whose loss spikes, is skipped; too many
non-finite steps in a row, or a spike, roll the run back to its last good checkpoint with a lower
learning rate, which then climbs back to the schedule over `guard.lr_recovery_steps`.

The guards' state lives in the trainer's `Progress` (so it is checkpointed and resumes exactly); these
functions read and update it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainlab.config import GuardConfig
from trainlab.stats import is_spike

if TYPE_CHECKING:
    from trainlab.train.trainer import Progress


class Diverged(Exception):
    """The guards rolled back more often than guard.max_rollbacks allows."""


def lr_scale_now(progress: "Progress", g: GuardConfig) -> float:
    """The guards' lr factor: lowered at a rollback, back to 1 over guard.lr_recovery_steps."""
    p, recovery = progress, g.lr_recovery_steps
    if p.lr_scale >= 1.0 or recovery == 0:
        return p.lr_scale
    return p.lr_scale + (1.0 - p.lr_scale) * min((p.step - p.rollback_step) / recovery, 1.0)


def spikes(progress: "Progress", loss: float, g: GuardConfig) -> bool:
    """A loss spike against the running window of recent good losses (once half a window is there)."""
    history = progress.recent_losses
    if len(history) < max(g.spike_window // 2, 5):
        return False
    return is_spike(history, loss, g.spike_factor)


def skips(finite: bool, spike: bool, g: GuardConfig) -> bool:
    """Whether the optimizer step is left out."""
    return spike or (not finite and g.skip_nonfinite)


def record(progress: "Progress", loss: float, finite: bool, spike: bool, skipped: bool, g: GuardConfig) -> None:
    """The step's outcome into the guards' state."""
    progress.skipped_steps += skipped
    progress.nonfinite_streak = 0 if finite else progress.nonfinite_streak + 1
    if finite and not spike:
        progress.recent_losses = (progress.recent_losses + [loss])[-g.spike_window:]


def wants_rollback(progress: "Progress", spike: bool, g: GuardConfig) -> bool:
    return spike or progress.nonfinite_streak >= g.max_nonfinite


def next_lr_scale(progress: "Progress", g: GuardConfig, reason: str) -> float:
    """The lr factor after one more rollback; Diverged past guard.max_rollbacks."""
    if progress.rollbacks + 1 > g.max_rollbacks:
        raise Diverged(f"{reason}; {g.max_rollbacks} rollbacks did not help (guard.max_rollbacks)")
    return lr_scale_now(progress, g) * g.lr_factor
