"""Detectors: one small function per finding. Each reads a RunSeries and returns a Finding (evidence
with the run's own numbers, a recommendation in plain words, trainlab config keys to change) or None.

Thresholds are stated next to the rule that uses them; the golden cases in tests/fixtures/doctor
were made to check them (scripts/golden_runs.py).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Optional

import numpy as np

from trainlab.charts import fmt
from trainlab.doctor.series import RunSeries, smooth
from trainlab.findings import SEVERITY_RANK, Finding
from trainlab.stats import is_spike

# the usual peak learning rates of Adam-family optimisers on transformers of 0.1M-100M parameters
HIGH_LR, LOW_LR = 1e-2, 1e-4
# a stall alone blames the lr only this far above the range: tiny models (a 48-wide Llama or GPT, a 32-wide
# masked LM) train well at 1e-2 to 3e-2 and a masked LM's loss sits near its unigram level for long at any lr
STALL_LR = 5 * HIGH_LR
# a stall: the smoothed training loss fell less than this share from a tenth of the run to its end
STALL = 0.15


def _improvement_after(c: "Curves", frac: float) -> float:
    """Relative fall of the smoothed training loss from `frac` of the run to its end."""
    ref = float(c.sm[int(len(c.sm) * frac)])
    return (ref - c.final()) / ref if ref > 0 else 0.0


def _round_lr(x: float) -> float:
    return float(f"{x:.1e}")


class Curves:
    """What several detectors share: the smoothed training loss, validation points, the lr curve."""

    def __init__(self, s: RunSeries):
        self.s = s
        self.steps, self.loss_raw = s.col("loss", finite=False)
        finite = np.isfinite(self.loss_raw)
        self.nonfinite = int((~finite).sum())
        self.tsteps, self.loss = self.steps[finite], self.loss_raw[finite]
        self.window = max(3, len(self.loss) // 20)
        self.sm = smooth(self.loss, self.window)
        self.vsteps, self.vloss = s.col("loss", "val")
        self.lsteps, self.lr = s.col("lr")
        self.peak_lr = s.fact("peak_lr", float(self.lr.max()) if len(self.lr) else None)
        self.last = s.last_step

    @property
    def n(self) -> int:
        return len(self.loss)

    def initial(self) -> float:
        return float(np.median(self.loss[:3]))

    def final(self) -> float:
        return float(self.sm[-1])

    def at_fraction(self, lo: float, hi: float) -> np.ndarray:
        """Raw training losses logged between two fractions of the run's steps."""
        if self.n == 0:
            return self.loss
        t = self.tsteps / max(self.tsteps[-1], 1)
        return self.loss[(t >= lo) & (t <= hi)]

    def val_best(self) -> tuple[int, float]:
        i = int(self.vloss.argmin())
        return int(self.vsteps[i]), float(self.vloss[i])

    def spikes(self, factor: float = 1.5, start: int = 0) -> list[int]:
        """Steps whose loss exceeds `factor` x the median of the preceding window (for a loss that can be
        negative: (factor - 1) x max(|median|, 5 x its median absolute deviation) above the median)."""
        return [int(self.tsteps[i]) for i in range(max(start, 3), self.n)
                if is_spike(self.loss[max(0, i - self.window * 2): i], float(self.loss[i]), factor)]


# --------------------------------------------------------------------------------------------
# instability


def diverged(c: Curves) -> Optional[Finding]:
    """The loss went non-finite, the guards gave up, or training ended above where it started."""
    s = c.s
    gave_up = [e for e in s.events if e.get("kind") in ("diverged",)]
    rollbacks = [e for e in s.events if e.get("kind") == "rollback"]
    if c.n == 0:  # nothing finite was logged at all: diverged from the first logged step, if anything was
        return Finding("diverged", "high", f"all {c.nonfinite} logged training losses are not finite.",
                       "Training fell apart from the start. Lower the learning rate (a tenth), keep a warmup and "
                       "gradient clipping at 1.0; `trainlab lr-find` measures where the loss blows up.",
                       {"optim.lr": _round_lr(c.peak_lr / 10)} if c.peak_lr else {}) if c.nonfinite else None
    ended_above = c.n >= 10 and c.final() > c.initial() * 0.98 and float(c.sm.min()) < c.initial() * 0.9
    chance, tail = chance_loss(s), float(np.median(c.loss[-max(1, c.n // 10):])) if c.n else math.nan
    # worse than a uniform guess at the end, after a blow-up (or after having learnt): fell apart, even though every
    # logged loss is finite (a run that never left ln V did not diverge; it never started)
    worse_than_chance = (chance is not None and c.n >= 10 and tail >= chance
                         and (float(c.loss.max()) >= 1.5 * chance or float(c.sm.min()) < 0.9 * chance))
    if not (c.nonfinite or gave_up or ended_above or worse_than_chance or len(rollbacks) >= 3):
        return None
    parts = []
    if c.nonfinite:
        masked = s.fact("masked_nonfinite")
        parts.append(f"{c.nonfinite} logged training losses are not finite"
                     + (f" ({masked} logged as 0.0 by the Trainer's logging_nan_inf_filter, with a NaN gradient "
                        f"norm or evaluation)" if masked else ""))
    if rollbacks:
        parts.append(f"the guards rolled back {len(rollbacks)} times (first at step {rollbacks[0]['step']})")
    if gave_up:
        parts.append(f"the guards gave up at step {gave_up[-1]['step']}")
    parts.append(f"training loss went from {fmt(c.initial())} at the start to a low of {fmt(float(c.sm.min()))} "
                 f"and ended at {fmt(c.final())}")
    if worse_than_chance:
        parts.append(f"the last tenth's median, {fmt(tail)}, is above {fmt(chance)}, the loss of a uniform guess over "
                     f"the {s.fact('vocab_size'):,}-token vocabulary (ln V): the model ended worse than chance")
    lr = c.peak_lr
    return Finding("diverged", "high", "; ".join(parts) + ".",
                   "Training fell apart rather than converged. Lower the learning rate (a third to a tenth), keep "
                   "a warmup, and keep gradient clipping at 1.0; `trainlab lr-find` measures where the loss "
                   "starts to blow up.",
                   {"optim.lr": _round_lr(lr / 10)} if lr else {})


def chance_loss(s: RunSeries) -> Optional[float]:
    """ln V, the loss of a uniform guess over the vocabulary, where the run's loss is a cross-entropy over it and
    V is known: a trainlab language-model task, or another tool's log with the model's config.json beside it."""
    vocab, cfg = s.fact("vocab_size"), s.fact("config")
    if not vocab or vocab < 2:
        return None
    if cfg is not None:
        from trainlab.tasks import task_class

        if not task_class(cfg.task).token_loss:
            return None
    elif not s.fact("token_loss"):
        return None
    return math.log(vocab)


def _weight_growth(c: Curves) -> Optional[float]:
    """The weight norm's peak over its first value. Under AdamW a sane lr leaves it within ~1.5x of its start
    (weight decay balances the updates); steps far too large for the weights' scale blow it up several-fold.
    Growth alone is no symptom: weights that start small (an embedding-fed decoder, a fresh head) grow
    several-fold at a sound rate (a series forecaster grew 5.5x at lr 2e-3 with updates of 1.5e-3 of the
    weights per step while its loss kept falling, and a fifth of that rate did far worse), so lr_too_high
    counts it only with updates above 1% of the weights per step (ten times the usual ~1e-3) or with a
    stalled loss."""
    _, wn = c.s.col("weight_norm")
    return float(wn.max() / wn[0]) if len(wn) >= 5 and wn[0] > 0 else None


def _stalled_words(c: Curves, stall: float) -> str:
    moved = (f"improved only {stall:.0%}" if stall >= 0 else f"rose {-stall:.0%}") \
        + f" ({fmt(float(c.sm[len(c.sm) // 10]))} to {fmt(c.final())})"
    return moved + (": it dropped to a plateau and stayed" if stall >= 0 else ": it never settled")


# a loss that jumps to this multiple of its lowest so far while the lr is still warming up
WARMUP_JUMP = 1.5


def _warmup_jump(c: Curves, warm: int) -> Optional[tuple[int, float, float]]:
    """(step, loss, lowest before it) of the first training loss within the warmup that jumped to WARMUP_JUMP x
    the lowest logged before it and above where the run started. A warmup exists so that the early, poorly
    estimated updates stay small; a loss that blows up while the lr is still below its peak says that a
    fraction of the peak already overshoots, so the peak is too high and a longer warmup would not save it.
    A mean over a logging window (the Trainer's) can hide a one-step jump; a per-step log shows it."""
    for i in range(1, c.n):
        if c.tsteps[i] > warm:
            break
        low = float(c.loss[:i].min())
        if low > 0 and c.loss[i] >= WARMUP_JUMP * low and c.loss[i] > c.loss[0]:
            return int(c.tsteps[i]), float(c.loss[i]), low
    return None


def _lr_at(c: Curves, step: int) -> Optional[float]:
    if not len(c.lr):
        return None
    return float(c.lr[min(int(np.searchsorted(c.lsteps, step)), len(c.lr) - 1)])


def _rose_back(c: Curves, warm: int) -> tuple[bool, int, float, float]:
    """(whether, step of the best, rebound, drop): after falling, the smoothed training loss climbed back by a
    quarter of its drop and beyond its own noise (a fine-tune whose loss barely moves "climbs back" by noise
    alone: its drop is as small as the scatter)."""
    best_i = int(np.argmin(c.sm))
    rebound = c.final() - float(c.sm[best_i])
    drop = c.initial() - float(c.sm[best_i])
    noise = float(np.std(c.loss - c.sm)) / math.sqrt(c.window)
    return drop > 0 and rebound > max(0.25 * drop, 3 * noise) and c.tsteps[best_i] > warm, int(c.tsteps[best_i]), rebound, drop


def lr_too_high(c: Curves) -> Optional[Finding]:
    """The loss jumps while the lr warms up; after warmup it climbs back up, spikes repeatedly, or the guards
    must step in; or it stalls at a rate far above the usual range."""
    if c.n < 10:
        return None
    warm = c.s.fact("warmup_steps", 0) or 0
    after = c.tsteps > warm
    if after.sum() < 5:
        return None
    rose_back, best_step, rebound, drop = _rose_back(c, warm)
    spikes = c.spikes(1.5, start=int(np.argmax(after)))
    rollbacks = [e for e in c.s.events if e.get("kind") in ("rollback", "spike_skip", "nonfinite_skip")
                 and e.get("step", 0) > warm]
    many_spikes = len(spikes) >= max(3, int(0.03 * after.sum()))
    jump = _warmup_jump(c, warm) if warm else None
    # a spike (1.5x the running median), a jump or a rebound of the smoothed loss means something only when the
    # step-to-step scatter is well below that margin: a regression on heavy-tailed targets scatters 35-110%
    # of its loss from batch to batch (language models in the corpus: 1-4%), and its noise is neither
    scatter = _scatter(c)
    if scatter is not None and scatter >= 0.25:
        rose_back = many_spikes = False
        jump = None
    stall = _improvement_after(c, 0.1)
    wsteps, wn = c.s.col("weight_norm")
    growth, ratio = _weight_growth(c), _update_ratio(c)
    oversized = growth is not None and growth >= 4.0 and (stall < STALL or (ratio is not None and ratio >= 1e-2))
    # a stall at a rate outside the usual range: Adam-family optimisers train small transformers at peak
    # rates of about 1e-4 to 1e-2; far above that the loss drops to a plateau within warmup and stays
    stalled = c.peak_lr is not None and c.peak_lr >= STALL_LR and stall < STALL
    lasting = rose_back or many_spikes or oversized or stalled or len(rollbacks) >= 2 or (c.nonfinite and c.tsteps[0] > warm)
    if not (lasting or jump):
        return None
    ev = []
    if jump:
        at = _lr_at(c, jump[0])
        ev.append(f"while the lr was still warming up{f' (at {fmt(at)})' if at else ''} the training loss jumped to "
                  f"{fmt(jump[1])} at step {jump[0]}, {jump[1] / jump[2]:.1f}x its lowest so far ({fmt(jump[2])})")
    if stalled and not oversized:
        ev.append(f"peak lr {fmt(c.peak_lr)} is above the usual range for Adam on small transformers (1e-4 to 1e-2), "
                  f"and after the first tenth of the run the smoothed training loss {_stalled_words(c, stall)}")
    if oversized:
        at = int(wsteps[int(np.argmax(wn >= 0.5 * (wn[0] + wn.max())))])
        ev.append(f"the weight norm grew {fmt(growth, 1)}x ({fmt(float(wn[0]), 1)} to {fmt(float(wn.max()), 1)}; half of "
                  f"that by step {at})" + (f" with a median update-to-weight ratio of {fmt(ratio)} per step" if ratio else "")
                  + f", and the training loss stalled at {fmt(c.final())}")
    if rose_back:
        ev.append(f"after falling to {fmt(c.final() - rebound)} at step {best_step} the smoothed training "
                  f"loss climbed back to {fmt(c.final())} ({rebound / drop:.0%} of what it had gained)")
    if many_spikes:
        ev.append(f"{len(spikes)} loss spikes above 1.5x the running median after warmup (first at step {spikes[0]})")
    if rollbacks:
        ev.append(f"{len(rollbacks)} guard interventions (skipped steps or rollbacks) after warmup")
    if c.peak_lr and not stalled:
        ev.append(f"peak lr {fmt(c.peak_lr)}")
    # a warmup jump the run then trained past shows the symptom more than the harm: medium
    return _lr_too_high_finding(c, "high" if lasting or stall < STALL else "medium", ev, best_step)


def _lr_too_high_finding(c: Curves, severity: str, ev: list[str], best_step: int) -> Finding:
    lr = c.peak_lr
    return Finding("lr_too_high", severity, "; ".join(ev) + ".",
                   "The learning rate is too high for this model and batch: the updates are too large for the weights' scale, so they overshoot, inflate the weights and stall or undo progress. "
                   "Divide it by 3 to 10 (or run `trainlab lr-find` and take its suggestion).",
                   {"optim.lr": _round_lr(lr / 5)} if lr else {}, {"rebound_from_step": best_step})


def no_warmup_instability(c: Curves) -> Optional[Finding]:
    """No warmup, and the first steps are the violent ones: the loss rises or spikes early, the gradient
    norm or the update size peaks far above its later level, and the run then crawls from a plateau."""
    if c.n < 30:  # in a run this short the first twentieth is its first few steps, violent in any run
        return None
    warm = c.s.fact("warmup_steps")
    if warm is None or warm > 0 or c.s.fact("schedule") == "onecycle":  # onecycle rises over pct_start itself
        return None
    early_n = max(3, c.n // 20)
    early = c.loss[:early_n]
    rise = float(early.max()) - float(c.loss[0])
    ev = [f"the lr starts at its peak ({fmt(c.peak_lr)}) with no warmup"]
    signs, violent = 0, False
    if rise > 0.05 * c.initial():
        signs += 1
        ev.append(f"the training loss rose from {fmt(float(c.loss[0]))} to {fmt(float(early.max()))} within the "
                  f"first {int(c.tsteps[early_n - 1])} steps")
    for key, what in (("grad_norm", "gradient norm"), ("update_ratio", "update-to-weight ratio")):
        steps, v = c.s.col(key)
        if len(v) >= 4 * early_n:
            peak, later = float(np.max(v[:early_n])), float(np.median(v[early_n:]))
            if later > 0 and peak > 4 * later:
                signs += 1
                # first updates a tenth of the weights' size or more (ten times the top of the healthy 1e-3
                # to 1e-2 per step) wipe out the initialisation whether or not the loss shows it later
                violent = violent or (key == "update_ratio" and peak >= 0.1)
                ev.append(f"the {what} reached {fmt(peak)} in the first {int(steps[early_n - 1])} steps, "
                          f"{peak / later:.0f}x its later median")
    if not signs:
        return None
    steps = c.s.fact("max_steps") or c.last
    # high when the blow-up lasted (the loss went non-finite, or stalled after the first tenth of the run) or
    # the first updates were violent; a run that recovered from milder ones shows the symptom, not the harm:
    # in the corpus no run of a small pre-norm model did measurably better with a warmup, so it is medium
    lasting = bool(c.nonfinite) or _improvement_after(c, 0.1) < STALL
    if not (lasting or violent):
        ev.append("the run recovered and trained on")
    return Finding("no_warmup_instability", "high" if lasting or violent else "medium",
                   "; ".join(ev) + f"; the run ended at loss {fmt(c.final())}.",
                   "Warm the learning rate up: Adam's first updates rest on poorly estimated second moments and "
                   "are far larger than later ones, which can throw the weights into a plateau the run then "
                   "crawls out of. A warmup of a few percent of the run (at least ~30 steps) avoids it.",
                   {"schedule.warmup_steps": int(max(30, min(1000, round(0.05 * steps))))})


def clip_too_strict(c: Curves) -> Optional[Finding]:
    """Nearly every step clipped. Under AdamW that mostly rescales all gradients alike and changes little."""
    s = c.s
    clip = s.fact("grad_clip")
    _, clipped = s.col("clip_frac")
    _, gn = s.col("grad_norm")
    if clip is None or clip <= 0 or len(gn) < 5:
        return None
    frac = float(np.mean(gn > clip)) if not len(clipped) else float(np.mean(clipped))
    if frac < 0.9:
        return None
    med, p90 = float(np.median(gn)), float(np.quantile(gn, 0.9))
    spread = p90 / max(float(np.quantile(gn, 0.1)), 1e-12)
    return Finding("clip_too_strict", "low",
                   f"{frac:.0%} of steps were clipped: median gradient norm {fmt(med)} against grad_clip {fmt(clip)} "
                   f"(10th to 90th percentile spread {spread:.1f}x).",
                   "Clipping every step is not the brake it looks like: AdamW divides each update by the running "
                   "RMS of the gradients, so scaling every gradient by about the same factor leaves the update "
                   "nearly unchanged. It only matters on the steps where the factor differs (spikes). Set the "
                   "threshold near the 90th percentile of the gradient norm so that it bites only on outliers.",
                   {"optim.grad_clip": float(f"{p90:.2g}")})


# --------------------------------------------------------------------------------------------
# learning too slowly, or too little


def _update_ratio(c: Curves) -> Optional[float]:
    steps, ratio = c.s.col("update_ratio")
    if len(ratio) < 3:
        return None
    warm = c.s.fact("warmup_steps", 0) or 0
    keep = ratio[steps > warm] if (steps > warm).sum() >= 3 else ratio
    return float(np.median(keep))


def from_pretrained(c: Curves) -> bool:
    """The run starts from pretrained weights: a trainlab run with init_from, or a first training loss well
    below a uniform guess over the vocabulary (ln V, where a config.json beside the log gives V), which is
    where a model trained from scratch starts."""
    cfg = c.s.fact("config")
    if cfg is not None and getattr(cfg, "init_from", None):
        return True
    vocab = c.s.fact("vocab_size")
    return bool(vocab and vocab > 1 and c.n and c.initial() < 0.6 * math.log(vocab))


def lr_too_low(c: Curves) -> Optional[Finding]:
    """Updates tiny relative to the weights (or, without that metric, a peak lr below the usual range),
    and the loss has lost less than a third of its starting value."""
    if c.n < 10:
        return None
    ratio = _update_ratio(c)
    drop = c.initial() - c.final()
    # shape: the share of the total improvement made in the first half of the run; a well-set lr makes
    # most of its progress early (the curve bends), a far too low one falls at an even pace
    rel_drop = drop / max(c.initial(), 1e-12)
    # thresholds from the doctor's corpus (tests/fixtures/doctor/corpus, fit half): runs whose lr x3 did
    # measurably better had median ratios up to 2.5e-3, runs it did not help 4.9e-3 and above; a peak lr
    # 2x below the range's floor (2e-4) still trained a char LM too slowly
    tiny_updates = ratio is not None and ratio < 3e-3
    # the usual range is pretraining's: a fine-tune of pretrained weights runs at 1e-5 to 1e-4 by design
    low_lr = c.peak_lr is not None and c.peak_lr <= 3 * LOW_LR and not from_pretrained(c)
    if not (tiny_updates or (ratio is None and low_lr and rel_drop < 0.35)):
        return None
    if rel_drop >= 0.35:  # a third of the starting loss gone: whatever the lr, it is learning
        return None
    ev = []
    if ratio is not None:
        ev.append(f"median update-to-weight ratio {fmt(ratio)} per step (healthy runs sit near 1e-3 to 1e-2)")
    tail = c.sm[int(0.8 * len(c.sm)):]
    fell = (f"training loss fell only {rel_drop:.0%}" if rel_drop >= 0.005 else "training loss did not fall") \
        + f" ({fmt(c.initial())} to {fmt(c.final())})"
    ev.append(fell + (f" and was still falling at the end ({fmt(float(tail[0] - tail[-1]))} over the last fifth of "
                      f"the run)" if tail[0] > tail[-1] and rel_drop >= 0.005 else ""))
    lr = c.peak_lr
    factor = 10.0 if ratio is None else float(min(100.0, max(3.0, 3e-3 / max(ratio, 1e-9))))
    # from the lr alone, a loss that did not move at all is also what a fine-tune of pretrained weights looks
    # like when nothing says whether the run started from them: likely, not shown
    flat = ratio is None and drop <= 3 * float(np.std(c.loss - c.sm))
    # and from the lr alone, with neither the update size nor the vocabulary known, a slow fall is also what a
    # fine-tune looks like: the cause is likely, not shown, so medium (a Trainer log with the model's
    # config.json beside it, or a trainlab run, tells pretraining from a fine-tune)
    unsure = ratio is None and c.s.fact("vocab_size") is None and c.s.fact("config") is None
    if flat:
        ev.append("the loss barely moved from its first logged value, as a fine-tune of pretrained weights also "
                  "does (where 1e-5 to 1e-4 is the usual range): nothing in the log says which this run is")
    elif unsure:
        ev.append("nothing in the log says whether the run trains from scratch or fine-tunes pretrained weights, "
                  "where 1e-5 to 1e-4 is the usual range (the model's config.json beside the log would tell)")
    return Finding("lr_too_low", "medium" if flat or unsure else "high",
                   (f"peak lr {fmt(lr)}; " if lr else "") + "; ".join(ev) + ".",
                   f"The learning rate is too low: each step moves the weights too little. Raise it about "
                   f"{factor:.0f}x, or run `trainlab lr-find` and take its suggestion.",
                   {"optim.lr": _round_lr(lr * factor)} if lr else {})


# a run from scratch shorter than this many optimizer steps stopped while it was still starting: recipes for
# small transformers run thousands (nanoGPT's character model 5000), warmups alone are often 100 or more, and
# Adam's second-moment average (beta2 0.999) spans ~1000 steps
SHORT_RUN = 100
# readers whose step is the optimizer step; another writer's step may count epochs or logged points
OPTIMIZER_STEPS = {"trainlab", "hf_trainer", "lightning"}


def _tokens_per_param(c: Curves) -> Optional[float]:
    params, tokens = c.s.fact("params"), c.s.fact("tokens_seen")
    return tokens / params if params and tokens else None


def _short_run(c: Curves) -> Optional[Finding]:
    """A run from scratch stopped after fewer than SHORT_RUN optimizer steps while its loss was still falling.
    Too few evaluations to see a trend in the validation loss is what such a run looks like, so this does
    not ask for three. The steps count as optimizer steps when the reader says so, or when the training loss
    was logged every few steps (a log with a point at every step from 0 may be counting epochs)."""
    if c.n < 5 or c.last >= SHORT_RUN or c.nonfinite or from_pretrained(c):
        return None
    interval = float(np.median(np.diff(c.tsteps)))
    if (c.s.source not in OPTIMIZER_STEPS or c.s.fact("steps_are_epochs")) and interval <= 1:
        return None
    first = float(c.loss[0])
    fell = (first - c.final()) / first if first > 0 else 0.0
    if len(c.vloss) >= 2:
        still = float(c.vloss[-2] - c.vloss[-1]) > 1e-3 * abs(float(c.vloss[-1]))
    else:
        still = float(c.sm[(3 * len(c.sm)) // 4]) > c.final()
    if fell < 0.05 or not still:
        return None
    tpp = _tokens_per_param(c)
    ev = [f"the run stopped after {c.last} optimizer steps, with the training loss down from {fmt(first)} to "
          f"{fmt(c.final())}"]
    if len(c.vloss) >= 2:
        ev.append(f"the validation loss was still falling at its last evaluation ({fmt(float(c.vloss[-2]))} at step "
                  f"{int(c.vsteps[-2])} to {fmt(float(c.vloss[-1]))} at step {int(c.vsteps[-1])})")
    if tpp is not None:
        ev.append(f"the run saw {fmt(tpp, 2)} tokens per parameter (compute-optimal training is near 20)")
    ev.append(f"training from scratch takes hundreds to thousands of steps; fewer than {SHORT_RUN} is still the start")
    steps = c.s.fact("max_steps") or c.last
    return Finding("undertrained", "high" if tpp is not None and tpp < 0.1 else "medium", "; ".join(ev) + ".",
                   "The model stopped while it was still learning. Train longer: ten times the steps is a fair next "
                   "run; keep the learning rate, and let the schedule (warmup, decay) stretch with the budget.",
                   {"train.max_steps": int(max(steps, 1) * 10)})


def undertrained(c: Curves) -> Optional[Finding]:
    """Validation loss still falling when the run stopped; few tokens per parameter; or a run from scratch
    stopped after fewer than SHORT_RUN steps."""
    if c.n == 0:
        return None
    short = _short_run(c)
    if short is not None or len(c.vloss) < 3:
        return short
    recent_drop = float(c.vloss[-2] - c.vloss[-1])
    # the whole drop counts from the start of training (the first logged training loss), not from the
    # first evaluation, which may come after most of the fall
    start = max(float(c.loss[0]), float(c.vloss[0]))
    total_drop = start - float(c.vloss.min())
    if recent_drop <= 1e-3 * abs(float(c.vloss[-1])) or total_drop <= 0:  # a last fall of 0.1% is no trend
        return None
    span = int(c.vsteps[-1] - c.vsteps[-2])
    # the last evaluation interval's share of the drop, per tenth of the run it covers
    share = recent_drop / total_drop / max(span / max(c.last, 1) * 10, 1e-9)
    tpp = _tokens_per_param(c)
    if share < 0.02 and (tpp is None or tpp >= 0.1):
        return None
    ev = [f"validation loss fell {fmt(recent_drop)} between steps {int(c.vsteps[-2])} and {int(c.vsteps[-1])} and was "
          f"still falling ({share:.0%} of the run's whole drop per tenth of the run)"]
    if tpp is not None:
        ev.append(f"the run saw {fmt(tpp, 2)} tokens per parameter (compute-optimal training is near 20)")
    # high: still falling fast, or so few tokens that most weights have barely been trained
    high = share > 0.15 or (tpp is not None and tpp < 0.1)
    steps = c.s.fact("max_steps") or c.last
    return Finding("undertrained", "high" if high else ("medium" if share > 0.05 else "low"), "; ".join(ev) + ".",
                   "The model stopped while it was still learning. Train longer (more steps or tokens); keep the "
                   "learning rate and schedule, which stretch with the budget.",
                   {"train.max_steps": int(steps * (4 if high else 2))} if steps else {})


def overfitting(c: Curves) -> Optional[Finding]:
    """Validation loss turned up while training loss kept falling."""
    if len(c.vloss) < 4:
        return None
    best_step, best = c.val_best()
    final = float(c.vloss[-1])
    rise = final - best
    if rise < max(0.01, 0.01 * best) or best_step == int(c.vsteps[-1]):
        return None
    if c.n == 0 and not c.nonfinite:
        return _overfitting_without_training_loss(c, best_step, best, final)
    after_best = c.loss[c.tsteps > best_step]
    before = c.loss[c.tsteps <= best_step]
    if len(after_best) < 2 or len(before) == 0:
        return None
    train_fell = float(np.median(after_best[-max(2, len(after_best) // 5):])) < float(np.median(before[-max(2, len(before) // 5):]))
    if not train_fell:
        return None
    patience = c.s.fact("patience") or 3
    i_best = int(c.vloss.argmin())
    stop_i, best_so_far, since = None, math.inf, 0
    for i, v in enumerate(c.vloss):
        if v < best_so_far:
            best_so_far, since = v, 0
        else:
            since += 1
            if since >= patience:
                stop_i = i
                break
    stop_at = int(c.vsteps[stop_i]) if stop_i is not None else None
    gap = final - float(c.sm[-1])
    ev = (f"validation loss reached its best {fmt(best)} at step {best_step}, then rose to {fmt(final)} by step "
          f"{int(c.vsteps[-1])} (+{fmt(rise)}) while the training loss kept falling to {fmt(c.final())} "
          f"(gap {fmt(gap)} nats)")
    if stop_at is not None:
        ev += f"; early stopping with patience {patience} would have stopped at step {stop_at}, keeping step {int(c.vsteps[i_best])}"
    over = {"early_stopping.patience": patience}
    if (c.s.fact("dropout") or 0) < 0.1:
        over["model.dropout"] = 0.1
    return Finding("overfitting", "high" if rise > 0.1 * best else "medium", ev + ".",
                   "The model memorises the training set. Stop at the best validation loss (early stopping keeps "
                   "that checkpoint), get more data, or regularise (dropout, weight decay, a smaller model).",
                   over, {"best_step": best_step, "stop_step": stop_at})


def _overfitting_without_training_loss(c: Curves, best_step: int, best: float, final: float) -> Optional[Finding]:
    """A log with validation losses only (the Trainer logs no training loss in a run shorter than its
    logging_steps, 500 by default): a validation loss whose last two evaluations both sit above its best by the
    rise overfitting asks of any run is overfitting or instability; without the training curve the two cannot
    be told apart, so medium, and said so."""
    later = c.vloss[c.vsteps > best_step]
    if len(later) < 2 or float(later[-2:].min()) - best < max(0.01, 0.01 * best):
        return None
    return Finding("overfitting", "medium",
                   f"validation loss reached its best {fmt(best)} at step {best_step}, then rose to {fmt(final)} by step "
                   f"{int(c.vsteps[-1])} (+{fmt(final - best)}, above the best at each of the last two evaluations); "
                   f"the log holds no training loss, so a run that became unstable looks the same.",
                   "Likely memorisation of the training set: keep the best checkpoint (early stopping), train fewer "
                   "epochs, or regularise. Log the training loss too (more often than once a run) to tell it from "
                   "instability.",
                   {"early_stopping.patience": c.s.fact("patience") or 3}, {"best_step": best_step})


# a vocabulary above this is what a smaller BPE would cut (the advice's 4k-16k)
LARGE_VOCAB = 16384


def capacity_too_small(c: Curves) -> Optional[Finding]:
    """The parameter budget sits in the embeddings and the network itself is tiny (seed 000)."""
    params, emb, d = c.s.fact("params"), c.s.fact("embedding_params"), c.s.fact("d_model")
    if not params or emb is None or not d:
        return None
    share = emb / params
    if share < 0.6 or d > 96:
        return None
    vocab, cfg = c.s.fact("vocab_size"), c.s.fact("config")
    evidence = (f"{share:.0%} of the {params:,} parameters are embeddings ({emb:,}; vocabulary {vocab:,} x width "
                f"{d}); the transformer layers hold only {params - emb:,}.")
    if cfg is not None and getattr(cfg, "init_from", None):  # the shape and the tokenizer are the base model's
        advice, over = ("Each token gets only a few dimensions, and a fine-tune keeps its base model's shape and "
                        "tokenizer: start from a wider base model."), {}
    elif vocab and vocab > LARGE_VOCAB:
        advice = ("The vocabulary eats the budget and each token gets only a few dimensions: the model can barely "
                  "represent context. Use a smaller vocabulary (a BPE of 4k-16k trained on your data) and spend "
                  "the parameters on width and depth.")
        over = {"data.tokenizer": "bpe", "data.bpe_vocab_size": 8192, "model.d_model": max(128, d * 4)}
    else:  # a small vocabulary already: the network is what is too narrow
        advice = (f"The vocabulary is already small ({vocab:,}); each token gets only {d} dimensions, too few to "
                  "represent context. Widen the model, and keep it deeper than two layers.")
        over = {"model.d_model": max(128, d * 4)}
    return Finding("capacity_too_small", "high" if share > 0.9 and d <= 32 else "medium", evidence, advice, over)


def _scatter(c: Curves) -> Optional[float]:
    """The training loss's step-to-step scatter over the second half of the run: the std of its deviation
    from the rolling median, relative to its mean (None for a loss that reaches zero or below, such as a
    series tokenizer's, which has no relative scale)."""
    half = c.loss[c.n // 2:]
    if c.n < 30 or float(half.min()) <= 0:
        return None
    return float(np.std(half - c.sm[c.n // 2:])) / max(float(np.mean(half)), 1e-12)


def batch_too_small(c: Curves) -> Optional[Finding]:
    """Step-to-step loss noise large next to the progress the run makes."""
    if c.n < 30:
        return None
    noise = _scatter(c)
    if noise is None or noise < 0.05:
        return None
    tps = c.s.fact("tokens_per_step")
    ev = f"the training loss scatters {noise:.1%} (std of its deviation from the rolling median, second half of the run)"
    if tps:
        ev += f" with {tps:,} tokens per step"
    over = {}
    if c.s.fact("grad_accum"):
        over["train.grad_accum"] = int(c.s.fact("grad_accum")) * 4
    return Finding("batch_too_small", "medium" if noise > 0.1 else "low", ev + ".",
                   "Each step sees too few tokens for a steady gradient. Accumulate gradients (train.grad_accum) or "
                   "raise the batch; if you raise it, raise the lr by about the square root of the factor.", over)


def schedule_decays_too_early(c: Curves) -> Optional[Finding]:
    """The lr reached its floor long before the end while the loss was still falling, or restarts."""
    if len(c.lr) < 10 or not c.peak_lr:
        return None
    low = c.lr <= 0.1 * c.peak_lr
    past_warm = c.lsteps > (c.s.fact("warmup_steps") or 0)
    frac_low = float(low[past_warm].mean()) if past_warm.any() else 0.0
    first_peak = int(np.argmax(c.lr >= 0.98 * c.lr.max()))
    rises = int(np.sum(np.diff(c.lr[first_peak:]) > 0.2 * c.peak_lr))  # jumps up after warmup: restarts
    if rises:
        return Finding("schedule_decays_too_early", "low",
                       f"the lr jumped back up {rises} times (restarts); each restart undoes part of the annealing.",
                       "Warm restarts rarely help a single pretraining run: use one cosine (or WSD) over the whole "
                       "budget.", {"schedule.name": "cosine"})
    if frac_low < 0.3:
        return None
    return Finding("schedule_decays_too_early", "medium" if frac_low > 0.5 else "low",
                   f"{frac_low:.0%} of the steps after warmup ran at 10% of the peak lr ({fmt(c.peak_lr)}) or less.",
                   "The schedule spends much of the budget at a rate too low to learn. Decay over the whole run "
                   "(cosine to ~10% at the last step) or use WSD, which holds the peak and decays at the end.",
                   {"schedule.name": "wsd", "schedule.min_lr_ratio": 0.1})


# --------------------------------------------------------------------------------------------
# series tokenizer


def negative_loss_explained(c: Curves) -> Optional[Finding]:
    """A Kronos-style tokenizer's total loss below zero: the quantiser's entropy reward, not a bug (seed 004)."""
    steps, quant = c.s.col("loss_quant")
    _, recon = c.s.col("loss_all")
    if not len(quant) or not len(recon) or c.n == 0 or float(c.loss.min()) >= 0:
        return None
    i = int(c.loss.argmin())
    evidence = (f"the total loss went as low as {float(c.loss[i]):.4f} (step {int(c.tsteps[i])}). It is "
                f"(mse_pre + mse_all + quantiser loss) / 2, and the quantiser loss reached {float(quant.min()):.4f}: "
                f"its codebook-entropy term is subtracted (a reward for spreading over many codes), so it can be "
                f"negative while the reconstruction errors stay positive (last mse_all {float(recon[-1]):.4f}).")
    return Finding("negative_loss_explained", "low", evidence,
                   "Nothing is broken. Judge the tokenizer by its validation reconstruction (mse, and mse_ratio "
                   "against uniform quantisation) and its codebook usage, not by the sign of the total.")


# --------------------------------------------------------------------------------------------
# mixture of experts


def expert_imbalance(c: Curves) -> Optional[Finding]:
    """The most-loaded expert gets more than 2x the mean load (over the last quarter of the run)."""
    steps, load = c.s.col("moe_max_load")
    if len(load) < 4:
        return None
    recent = float(np.median(load[steps >= steps[-1] * 0.75]))
    if recent <= 2.0:
        return None
    cfg = c.s.fact("config")
    experts = cfg.model.moe.experts if cfg is not None else None
    weight = cfg.model.moe.aux_loss_weight if cfg is not None else None
    collapsed = experts is not None and recent >= 0.9 * experts / cfg.model.moe.top_k
    evidence = (f"over the last quarter of the run the most-loaded expert received {recent:.2f}x the mean load"
                + (f" of {experts} experts" if experts else "") + (f" (load-balancing weight {weight:g})" if weight is not None else "")
                + (": routing has collapsed onto a few experts, the others barely train." if collapsed else "."))
    overrides = {"model.moe.aux_loss_weight": _round_lr(max((weight or 0.01) * 3, 0.01))}
    return Finding("expert_imbalance", "high" if collapsed else "medium", evidence,
                   "Raise the load-balancing weight so the router spreads tokens (most runs balance between 0.01 "
                   "and 0.1); a shared expert also takes the common patterns off the routed ones.", overrides,
                   {"steps": steps.tolist(), "moe_max_load": load.tolist()})


# --------------------------------------------------------------------------------------------
# speed


def input_bound(c: Curves) -> Optional[Finding]:
    _, wait = c.s.col("data_wait_frac")
    if len(wait) < 5:
        return None
    med = float(np.median(wait[1:]))
    if med < 0.2:
        return None
    return Finding("input_bound", "medium" if med > 0.35 else "low",
                   f"the median step spent {med:.0%} of its time waiting for data.",
                   "The model waits for its input. Data comes from memmapped shards, so this usually means the "
                   "steps are tiny: raise the batch size (compute per step grows, loading cost does not) or put "
                   "the shards on a local disk.", {"train.batch_size": int((c.s.fact("batch_size") or 16) * 2)})


def low_mfu(c: Curves) -> Optional[Finding]:
    s = c.s
    precision, device = s.fact("precision"), s.fact("device") or ""
    _, mfu = s.col("mfu")
    med = float(np.median(mfu)) if len(mfu) else None
    if precision == "fp32" and s.fact("cpu_bf16") and device.startswith("cpu"):
        return Finding("low_mfu", "medium",
                       "the run trained in fp32 on a CPU with native bf16 (avx512_bf16/amx), where a bf16 training "
                       "step runs about 2.7x faster" + (f"; median MFU {med:.1%}" if med is not None else "") + ".",
                       "Train in bf16 autocast (weights and optimizer stay fp32).", {"train.precision": "bf16"})
    if precision == "fp32" and device.startswith("cuda"):
        return Finding("low_mfu", "medium", "the run trained in fp32 on a GPU" +
                       (f"; median MFU {med:.1%}" if med is not None else "") + ".",
                       "Use mixed precision: bf16 on compute capability 8.0+, fp16 with a grad scaler on older GPUs "
                       "such as a T4 (precision: auto picks).", {"train.precision": "auto"})
    if med is not None and med < 0.05:
        return Finding("low_mfu", "low", f"median MFU {med:.1%} of the measured matmul peak.",
                       "The steps are too small to keep the cores busy: raise the batch size or sequence length"
                       + ("." if s.fact("compile") else ", or turn on train.compile."),
                       {} if s.fact("compile") else {"train.compile": True})
    return None


# GPUs below compute capability 8.0 (no bf16 tensor cores), by name, for an env.json that gives no capability
NO_BF16_GPU = re.compile(r"\b(t4|v100|p100|p40|p4|k80|m60|m40|titan v|titan rtx|quadro rtx \d+|rtx 20\d0|gtx)\b")


def gpu_without_bf16(name: str, capability: Optional[str]) -> bool:
    """Whether a GPU lacks bf16 tensor cores: compute capability below 8.0 (a T4 is 7.5, a V100 7.0), or,
    where env.json gives no capability, a name from before Ampere."""
    if capability:
        try:
            return int(str(capability).split(".")[0]) < 8
        except ValueError:
            pass
    return bool(NO_BF16_GPU.search(name.lower()))


def precision_mismatch(c: Curves) -> Optional[Finding]:
    """bf16 asked for on a GPU without bf16 tensor cores (seed 001's T4), or on a CPU without fast bf16."""
    gpu, capability = c.s.fact("gpu_name") or "", c.s.fact("gpu_capability")
    device = c.s.fact("device") or ""
    on_gpu = device.startswith("cuda") or (not device and bool(gpu))  # a foreign env.json may not say
    if c.s.fact("precision") == "bf16" and on_gpu and (gpu or capability) and gpu_without_bf16(gpu, capability):
        what = " ".join(x for x in (gpu, f"(compute capability {capability})" if capability else "") if x)
        return Finding("precision_mismatch", "medium",
                       f"the run used bf16 on a {what}, which has no bf16 tensor cores (they came with compute "
                       "capability 8.0): bf16 there is emulated and slower than fp16.",
                       "Train in fp16 with a grad scaler on this GPU (train.precision=fp16; precision: auto picks it).",
                       {"train.precision": "fp16"})
    if c.s.fact("precision") == "bf16" and device.startswith("cpu") and c.s.fact("cpu_bf16") is False:
        return Finding("precision_mismatch", "medium",
                       "the run used bf16 on a CPU without AVX-512 bf16 or AMX, where a bf16 matmul runs tens of "
                       "times slower than fp32 (1 against 99 GFLOP/s on an AVX2 EPYC).",
                       "Train in fp32 on this CPU (precision: auto picks it).", {"train.precision": "fp32"})
    return None


DETECTORS: list[Callable[[Curves], Optional[Finding]]] = [
    no_warmup_instability, lr_too_high, diverged, overfitting, lr_too_low, capacity_too_small, undertrained,
    batch_too_small, schedule_decays_too_early, clip_too_strict, expert_imbalance, negative_loss_explained,
    input_bound, low_mfu, precision_mismatch,
]
# within a severity, findings are listed in this order: causes (a too-high lr) before symptoms (divergence)
PRIORITY = [d.__name__ for d in DETECTORS] + ["repetition", "data_duplicates", "train_val_leakage"]


def run_detectors(s: RunSeries) -> list[Finding]:
    c = Curves(s)
    found = [f for f in (d(c) for d in DETECTORS) if f is not None]
    return found


# findings about speed: they say how fast the run went, never why its loss went where it did, so they come
# after every finding about the training itself, whatever their severity (the first finding is the cause)
SPEED = {"low_mfu", "input_bound", "precision_mismatch"}


def rank(findings: list[Finding]) -> list[Finding]:
    order = {name: i for i, name in enumerate(PRIORITY)}
    return sorted(findings, key=lambda f: (f.id in SPEED, SEVERITY_RANK[f.severity], order.get(f.id, len(order))))


def verdict(findings: list[Finding]) -> str:
    if any(f.severity == "high" for f in findings):
        return "failing"
    if any(f.severity == "medium" for f in findings):
        return "needs_attention"
    return "healthy"
