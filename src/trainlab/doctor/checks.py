"""The checks a diagnosis runs, and the ones it could not run with the reason.

Each detector states what it needs (`requires` on the detectors here, `NEEDS` for those in
detectors.py): enough training or validation points, a metric such as the gradient norm, a fact such
as the peak lr or the weight decay, or the run's config. A detector whose needs are not met is not
called, and the diagnosis lists it with `ran: false` and the reason ("no validation loss: no
overfitting check").

The detectors here answer the checks the seed documents asked for: vanishing gradients, a plateau at
a still-large lr, a logged lr that departs from the configured schedule, a gradient norm that keeps
rising, training without weight decay, and loss spikes counted from robust z-scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from trainlab.charts import fmt
from trainlab.doctor.detectors import DETECTORS, SHORT_RUN, Curves, _improvement_after, _round_lr
from trainlab.doctor.series import RunSeries
from trainlab.findings import Finding

WORDS = {"grad_norm": "gradient norm", "lr": "learning rate", "update_ratio": "update-to-weight ratio",
         "weight_norm": "weight norm", "clip_frac": "clipped fraction", "moe_max_load": "expert load",
         "loss_quant": "quantiser loss", "data_wait_frac": "data wait time", "mfu": "MFU", "peak_lr": "the learning rate", "warmup_steps": "the warmup",
         "grad_clip": "the gradient clipping threshold", "weight_decay": "the weight decay", "params":
         "the model's size", "precision": "the precision", "schedule": "the schedule"}


KIND = {"moe_max_load": "not a mixture of experts", "loss_quant": "not a series tokenizer"}


@dataclass(frozen=True)
class Need:
    """What a detector needs before it can say anything."""

    train: int = 0  # finite training losses
    val: int = 0  # validation losses
    metrics: tuple[str, ...] = ()  # logged training metrics (at least `points` points each)
    points: int = 5
    facts: tuple[str, ...] = ()  # facts of the run's setup
    lr: bool = False  # a logged lr curve or a stated peak lr
    config: bool = False  # the run's own config (a trainlab run)
    any_fact: tuple[str, ...] = ()  # at least one of these facts or metrics
    why: str = ""  # the reason when none of any_fact is known (default: names them)
    val_waived_below: int = 0  # runs shorter than this many steps need no validation losses

    def missing(self, c: Curves) -> Optional[str]:
        s = c.s
    def missing(self, c: Curves) -> Optional[str]:
        s = c.s
        if self.config and s.fact("config") is None:
            return "needs the run's config (a trainlab run directory)"
        if c.n < self.train:
            return f"needs {self.train} finite training losses, the run has {c.n}"
        if self.val and len(c.vloss) < self.val and not c.last < self.val_waived_below:
            return "no validation loss" if not len(c.vloss) else (
                f"needs {self.val} validation losses, the run has {len(c.vloss)}")
        for key in self.metrics:
            if len(s.col(key)[0]) < self.points:
                return f"no {WORDS.get(key, key)} logged" + (f" ({KIND[key]})" if key in KIND else "")
        for key in self.facts:
            if s.fact(key) is None:
                return f"{WORDS.get(key, key)} is not known"
        if self.lr and not len(c.lr) and c.peak_lr is None:
            return "the learning rate is neither logged nor stated"
        if self.any_fact and all(s.fact(k) is None and not s.has(k) for k in self.any_fact):
            return self.why or "none of " + ", ".join(WORDS.get(k, k) for k in self.any_fact) + " is known"
        return None


def requires(**need: Any) -> Callable:
    def mark(fn: Callable) -> Callable:
        fn.need = Need(**need)
        return fn

    return mark


# what the detectors of detectors.py need (their own early returns keep the finer conditions)
NEEDS = {
    "no_warmup_instability": Need(train=10, facts=("warmup_steps",)), "lr_too_high": Need(train=10),
    "diverged": Need(), "overfitting": Need(val=4), "lr_too_low": Need(train=10, any_fact=("peak_lr", "update_ratio")),
    "capacity_too_small": Need(facts=("params",)), "undertrained": Need(val=3, train=1, val_waived_below=SHORT_RUN),
    "batch_too_small": Need(train=30), "schedule_decays_too_early": Need(metrics=("lr",)),
    "clip_too_strict": Need(facts=("grad_clip",), metrics=("grad_norm",)), "expert_imbalance": Need(metrics=("moe_max_load",)),
    "negative_loss_explained": Need(metrics=("loss_quant",), points=1), "input_bound": Need(metrics=("data_wait_frac",)),
    "low_mfu": Need(any_fact=("precision", "mfu")), "precision_mismatch": Need(facts=("precision",)),
}


def _post_warmup(c: Curves, key: str) -> tuple[np.ndarray, np.ndarray]:
    steps, v = c.s.col(key)
    warm = c.s.fact("warmup_steps", 0) or 0
    keep = steps > warm
    return (steps[keep], v[keep]) if keep.sum() >= 10 else (steps, v)


# --------------------------------------------------------------------------------------------
# the seeds' checks


@requires(train=20, metrics=("grad_norm",))
def vanishing_gradients(c: Curves) -> Optional[Finding]:
    """The gradient norm collapses (100x below its level after warmup, or below 1e-4 throughout) while the
    loss stops moving well above where a converged run would sit."""
    steps, g = _post_warmup(c, "grad_norm")
    if len(g) < 10:
        return None
    k = max(3, len(g) // 10)
    early, late = float(np.median(g[:k])), float(np.median(g[-max(3, len(g) // 4):]))
    collapsed = (late < early / 100 and late < 1e-2) or float(np.median(g)) < 1e-4
    stall = _improvement_after(c, 0.5)
    if not collapsed or stall >= 0.02 or c.final() < 0.5 * c.initial():
        return None
    over = {"optim.weight_decay": 0.1} if (c.s.fact("weight_decay") or 0) >= 0.3 else {}
    return Finding("vanishing_gradients", "high",
                   f"the gradient norm fell from {fmt(early)} (median, first tenth after warmup) to {fmt(late)} "
                   f"(median, last quarter), and the training loss moved only {stall:.1%} over the second half of "
                   f"the run ({fmt(float(c.sm[len(c.sm) // 2]))} to {fmt(c.final())}).",
                   "The gradients no longer reach the weights, so the run has stopped learning. Look at what "
                   "shrinks them: saturating activations, a missing residual path or normalisation, an "
                   "initialisation far too small, or a weight decay strong enough to pull the weights to zero.",
                   over, {"steps": steps.tolist(), "grad_norm": g.tolist()})


@requires(train=30, lr=True)
def plateau(c: Curves) -> Optional[Finding]:
    """No improvement over the last 30% of the run (smoothed training loss, and validation loss where
    logged) while the learning rate is still at least half its peak: decaying it would go on."""
    i0 = int(np.argmax(c.tsteps >= c.tsteps[0] + 0.7 * (c.tsteps[-1] - c.tsteps[0])))
    if i0 < 5 or c.n - i0 < 10 or c.nonfinite:
        return None
    before, within = float(np.min(c.sm[:i0])), float(np.min(c.sm[i0:]))
    gain = (before - within) / abs(before) if before else 0.0
    start = int(c.tsteps[i0])
    vin, vbefore = c.vloss[c.vsteps >= start], c.vloss[c.vsteps < start]
    val_gain = (float(vbefore.min()) - float(vin.min())) / abs(float(vbefore.min())) if len(vin) and len(vbefore) else 0.0
    if gain >= 0.01 or val_gain >= 0.01:
        return None
    peak = c.peak_lr
    if len(c.lr):
        late = float(np.median(c.lr[c.lsteps >= start])) if (c.lsteps >= start).any() else float(c.lr[-1])
    elif c.s.fact("schedule") == "constant" and peak:
        late = peak
    else:
        return None  # the lr of the stretch is not known
    if not peak or late < 0.5 * peak:
        return None
    after = c.lr[c.lsteps > (c.s.fact("warmup_steps") or 0)]
    constant = c.s.fact("schedule") == "constant" or (len(after) > 0 and float(after.min()) >= 0.9 * peak)
    over = {"schedule.name": "wsd", "schedule.min_lr_ratio": 0.1} if constant else {"optim.lr": _round_lr(peak / 3)}
    return Finding("plateau", "medium",
                   f"from step {start} to step {int(c.tsteps[-1])} (the last 30% of the run) the smoothed training loss "
                   f"did not improve on {fmt(before)} (best in that stretch {fmt(within)}"
                   + (f"; validation best {fmt(float(vin.min()))} against {fmt(float(vbefore.min()))} before" if len(vin) and len(vbefore) else "")
                   + f"), while the lr stayed at {fmt(late)}, {late / peak:.0%} of its peak {fmt(peak)}.",
                   "The loss has stopped falling at this learning rate: the steps are too large to settle into the "
                   "minimum they circle. Decay the rate (a WSD or cosine schedule anneals at the end), or lower it.",
                   over)


# the Hugging Face Trainer's schedules (transformers' get_scheduler), as multipliers of the peak at a step
HF_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": lambda s, w, t: 1.0,
    "constant_with_warmup": lambda s, w, t: s / w if s < w else 1.0,
    "linear": lambda s, w, t: s / w if s < w else max(0.0, (t - s) / max(1, t - w)),
    "cosine": lambda s, w, t: s / w if s < w else max(0.0, 0.5 * (1 + math.cos(math.pi * (s - w) / max(1, t - w)))),
}


def _configured(c: Curves) -> Optional[tuple[str, float, int, int, Callable[[float], float]]]:
    """(name, peak lr, warmup, total steps, multiplier at a step index) of the schedule the run was set up
    with: a trainlab run's config, or the Trainer's settings as a tool logged them (MLflow, W&B)."""
    from trainlab.train.schedules import lr_multiplier

    cfg = c.s.fact("config")
    if cfg is not None:
        total = cfg.train.max_steps
        if not total or not cfg.optim.lr:
            return None
        return cfg.schedule.name, cfg.optim.lr, cfg.schedule.warmup_steps, total, lambda s: lr_multiplier(
            cfg.schedule, s, total)
    st = c.s.fact("stated") or {}
    name, peak, total, warm = st.get("schedule"), st.get("peak_lr"), st.get("max_steps"), int(st.get("warmup_steps") or 0)
    if name not in HF_SCHEDULES or not peak or not total or total <= 0:
        return None
    return name, peak, warm, total, lambda s: HF_SCHEDULES[name](s, warm, total)


@requires(metrics=("lr",), any_fact=("config", "stated"),
          why="needs the configured schedule: a trainlab run's config, or the settings a tool logged with the run")
def schedule_mismatch(c: Curves) -> Optional[Finding]:
    """The logged lr departs from what the configured schedule gives at the same step (by more than 5% on
    more than a tenth of the logged steps, before any rollback's lr cut)."""
    got = _configured(c)
    if got is None:
        return None
    name, peak, warm, total, mult = got
    cut = min((e.get("step", math.inf) for e in c.s.events if e.get("kind") == "rollback"), default=math.inf)
    keep = c.lsteps < cut
    steps, lr = c.lsteps[keep], c.lr[keep]
    if len(lr) < 10:
        return None
    # a tool logs, at step s, the lr of step s (trainlab: the schedule at index s - 1) or of the next one
    # (the Trainer: at index s); the closer reading is the one compared
    tries = [np.array([peak * mult(float(s) + k) for s in steps]) for k in (-1, 0)]
    rels = [np.abs(lr / np.maximum(e, 1e-30) - 1) for e in tries]
    best = int(np.argmin([float(np.median(r)) for r in rels]))
    expected, rel = tries[best], rels[best]
    off = rel > 0.05
    if off.mean() <= 0.1:
        return None
    i = int(np.argmax(rel))
    return Finding("schedule_mismatch", "medium",
                   f"the logged lr departs from the configured {name} schedule (peak {fmt(peak)}, warmup {warm}, "
                   f"{total} steps) by more than 5% at {off.mean():.0%} of the {len(lr)} logged steps; at step "
                   f"{int(steps[i])} it was {fmt(float(lr[i]))} where the schedule gives {fmt(float(expected[i]))}.",
                   "The optimizer did not get the schedule the config describes: a run resumed under a changed "
                   "budget, a second scheduler, or a schedule stepped per epoch instead of per step. Check "
                   "which lr each step used before reading anything else off this run.",
                   {}, {"steps": steps.tolist(), "expected": expected.tolist()})


def _rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


@requires(train=10, metrics=("grad_norm",))
def grad_norm_rising(c: Curves) -> Optional[Finding]:
    """The gradient norm keeps rising after warmup (seed 003): its last fifth's median at least 3x its
    first fifth's, with a rank correlation with the step above 0.6."""
    steps, g = _post_warmup(c, "grad_norm")
    if len(g) < 20:
        return None
    k = max(3, len(g) // 5)
    first, last = float(np.median(g[:k])), float(np.median(g[-k:]))
    rho = _rank_corr(steps.astype(float), np.log(np.maximum(g, 1e-30)))
    if first <= 0 or last < 3 * first or rho < 0.6:
        return None
    over: dict[str, Any] = {"optim.lr": _round_lr(c.peak_lr / 2)} if c.peak_lr else {}
    if c.s.fact("grad_clip") == 0:
        over["optim.grad_clip"] = 1.0
    if c.s.fact("weight_decay") == 0:
        over["optim.weight_decay"] = 0.1
    return Finding("grad_norm_rising", "high" if last > 10 * first else "medium",
                   f"the gradient norm rose from {fmt(first)} (median, first fifth after warmup) to {fmt(last)} "
                   f"(last fifth), {last / first:.1f}x, and kept rising (rank correlation with the step {rho:.2f}).",
                   "A gradient norm that keeps climbing means the updates push the weights into ever sharper "
                   "regions: the lr is on the high side for this model, or the weights grow unchecked. Lower "
                   "the lr (about a half), keep clipping at 1.0 and weight decay on.",
                   over, {"steps": steps.tolist(), "grad_norm": g.tolist()})


@requires(facts=("weight_decay",))
def no_weight_decay(c: Curves) -> Optional[Finding]:
    """The run trained with a weight decay of 0 (seed 000's missing regularisation)."""
    if c.s.fact("weight_decay") != 0:
        return None
    return Finding("no_weight_decay", "low",
                   "the run trained with a weight decay of 0" + (f" over {c.last} steps" if c.last else "") + ".",
                   "AdamW's decoupled weight decay keeps the weights' scale in check, which steadies long runs and "
                   "curbs overfitting; 0.1 is the usual value for transformers.", {"optim.weight_decay": 0.1})


def _z_spikes(steps: np.ndarray, v: np.ndarray, window: int, rel: float) -> list[tuple[int, float, float]]:
    """(step, value, running median) where a value lies more than 6 robust standard deviations (1.4826 x
    MAD of the preceding `window` values) above their median, and more than `rel` above it relatively."""
    out = []
    for i in range(8, len(v)):
        h = v[max(0, i - window): i]
        med = float(np.median(h))
        mad = 1.4826 * float(np.median(np.abs(h - med)))
        if v[i] - med > 6 * max(mad, 1e-12) and v[i] - med > rel * abs(med):
            out.append((int(steps[i]), float(v[i]), med))
    return out


@requires(train=30)
def loss_spikes(c: Curves) -> Optional[Finding]:
    """A spike rate over the training loss and the gradient norm after warmup, from robust z-scores:
    at least 3 loss spikes and 1% of the steps (or 3 gradient-norm spikes and 2%)."""
    window = max(8, 2 * c.window)
    warm = c.s.fact("warmup_steps", 0) or 0
    after = c.tsteps > warm
    ls = _z_spikes(c.tsteps[after], c.loss[after], window, 0.05)
    gsteps, g = _post_warmup(c, "grad_norm")
    gs = _z_spikes(gsteps, g, window, 1.0) if len(g) >= 30 else []
    n, ng = int(after.sum()), max(len(g), 1)
    loss_hit, grad_hit = len(ls) >= 3 and len(ls) >= 0.01 * n, len(gs) >= 3 and len(gs) >= 0.02 * ng
    if not (loss_hit or grad_hit):
        return None
    ev = []
    if ls:
        top = max(ls, key=lambda x: x[1] / max(abs(x[2]), 1e-12))
        ev.append(f"{len(ls)} training-loss spikes in {n} logged steps after warmup ({len(ls) / n:.1%}; robust z-score "
                  f"above 6 against the preceding {window} steps), first at step {ls[0][0]}, the largest "
                  f"{fmt(top[1])} against a running median of {fmt(top[2])} at step {top[0]}")
    if gs:
        ev.append(f"{len(gs)} gradient-norm spikes in {len(g)} logged steps ({len(gs) / ng:.1%}), first at step {gs[0][0]}")
    rate = len(ls) / max(n, 1)
    # high takes a frequent spike that cost something: the validation loss rose at the evaluation after it.
    # A hard batch spikes the training loss and leaves the weights as they were (a heavy-tailed regression
    # target does this all the time); an overshooting update damages them, and held-out data shows it
    hurt = _val_rose_after([s for s, _, _ in ls] + [s for s, _, _ in gs], c)
    if hurt is not None:
        ev.append(f"the validation loss rose from {fmt(hurt[1])} to {fmt(hurt[2])} at the evaluation after the spike "
                  f"at step {hurt[0]}, more than between evaluations without one")
    elif c.s.has("loss", "val"):
        ev.append("the validation loss rose no more after them than between evaluations without one")
    over: dict[str, Any] = {"optim.lr": _round_lr(c.peak_lr / 2)} if c.peak_lr else {}
    if c.s.fact("grad_clip") == 0:
        over["optim.grad_clip"] = 1.0
    return Finding("loss_spikes", "high" if rate >= 0.05 and hurt is not None else "medium", "; ".join(ev) + ".",
                   "Spikes are steps whose update overshot. Lower the lr (about a half) and keep gradient clipping "
                   "at 1.0, which bites only on such steps; a warmup keeps the first ones calm.", over,
                   {"spike_steps": [s for s, _, _ in ls]})


def _val_rose_after(spikes: list[int], c: Curves) -> Optional[tuple[int, float, float]]:
    """(spike step, validation loss before, after) for the spike after which the validation loss rose most,
    when that rise is clearly above the run's own evaluation-to-evaluation noise: more than 1%, and more
    than twice the largest rise between evaluations with no spike between them. None otherwise, or when
    there is no validation loss."""
    vsteps, v = c.s.col("loss", "val")
    if len(v) < 2:
        return None
    spikes = np.asarray(sorted(spikes))
    worst, calm = None, 0.0
    for i in range(1, len(v)):
        inside = spikes[(spikes > vsteps[i - 1]) & (spikes <= vsteps[i])]
        rise = float(v[i] - v[i - 1])
        if not len(inside):
            calm = max(calm, rise)
        elif worst is None or rise > worst[0]:
            worst = (rise, int(inside[0]), float(v[i - 1]), float(v[i]))
    if worst is None or worst[0] <= max(0.01 * worst[2], 2 * calm):
        return None
    return worst[1], worst[2], worst[3]


NEW = [vanishing_gradients, schedule_mismatch, plateau, grad_norm_rising, loss_spikes, no_weight_decay]


def run_checks(series: RunSeries) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Every detector whose needs the run meets; and for each, whether it ran and why not."""
    c = Curves(series)
    found, checks = [], []
    for detector in DETECTORS + NEW:
        need = getattr(detector, "need", None) or NEEDS.get(detector.__name__, Need())
        reason = need.missing(c)
        checks.append({"id": detector.__name__, "ran": reason is None, "reason": reason})
        if reason is None and (f := detector(c)) is not None:
            found.append(f)
    return found, checks
