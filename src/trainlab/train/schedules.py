"""Learning-rate schedules as pure functions of (step, total steps) -> multiplier of the peak lr.

Pure functions keep resume exact (the state is the step) and let a time budget drive the same
curves (the trainer passes an estimated total). `cosine` with no warmup equals torch's
`CosineAnnealingLR(T_max=total, eta_min=min_lr_ratio*lr)`; `onecycle` equals `OneCycleLR` with its
default cosine annealing and `three_phase=False`.
"""

from __future__ import annotations

import math

from trainlab.config import ScheduleConfig


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(max(pct, 0.0), 1.0)) + 1.0)


def _warmup(step: float, warmup: int) -> float | None:
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    return None


def lr_multiplier(cfg: ScheduleConfig, step: float, total: float) -> float:
    """Multiplier of the peak lr for the optimizer step with index `step` (0-based) of `total`."""
    total = max(total, 1.0)
    name = cfg.name
    if name == "onecycle":
        initial = 1.0 / cfg.div_factor
        final = initial / cfg.final_div_factor
        rise_end = cfg.pct_start * total - 1
        if step <= rise_end:
            return _cos_anneal(initial, 1.0, step / rise_end if rise_end > 0 else 1.0)
        fall = (total - 1) - rise_end
        return _cos_anneal(1.0, final, (step - rise_end) / fall if fall > 0 else 1.0)

    w = _warmup(step, cfg.warmup_steps)
    if w is not None:
        return w
    if name == "constant":
        return 1.0
    low = cfg.min_lr_ratio
    span = max(total - cfg.warmup_steps, 1.0)
    progress = (step - cfg.warmup_steps) / span
    if name == "cosine":
        return _cos_anneal(1.0, low, progress)
    if name == "cosine_restarts":
        cycle = span / cfg.cycles
        within = ((step - cfg.warmup_steps) % cycle) / cycle
        return _cos_anneal(1.0, low, within)
    if name == "wsd":
        decay_start = 1.0 - cfg.decay_fraction
        if progress < decay_start:
            return 1.0
        return 1.0 + (low - 1.0) * min((progress - decay_start) / cfg.decay_fraction, 1.0)
    raise ValueError(f"unknown schedule {name}")
