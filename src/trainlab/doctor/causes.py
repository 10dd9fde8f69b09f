"""Root causes first. When several findings fire, one often accounts for another: a learning rate far
above the usual range makes the first steps violent (which looks like a missing warmup), throws the
run into divergence, and keeps the gradient clipped. The cause is what to fix, so the cause is listed
and its effects are left out, named in its `explains`.

The causal order is stated once, here: CAUSES maps a cause to the findings it explains. A finding is
left out only when its cause is present (and, for the warmup, only when the peak lr is out of range).
"""

from __future__ import annotations

from typing import Optional

from trainlab.charts import fmt
from trainlab.doctor.detectors import HIGH_LR, STALL, Curves, _improvement_after, _round_lr
from trainlab.doctor.series import RunSeries
from trainlab.findings import Finding

# findings about speed and bookkeeping, not about how the loss behaved
NOT_TRAINING = {"low_mfu", "input_bound", "precision_mismatch", "negative_loss_explained", "data_duplicates",
                "train_val_leakage"}
FAR_ABOVE = 3 * HIGH_LR  # a peak lr this far above the usual range is the cause, whatever else went wrong

CAUSES: dict[str, tuple[str, ...]] = {
    # an lr far too high: early violence, divergence, clipping on every step and spikes all follow from it
    # (it explains a missing warmup's finding only far above the range: see _lr_before_warmup)
    # and so does the stall at a rate the weights cannot settle at (a plateau)
    "lr_too_high": ("diverged", "clip_too_strict", "loss_spikes", "grad_norm_rising", "batch_too_small", "plateau"),
    # a run that fell apart spiked, grew its gradients and stalled on the way
    "diverged": ("loss_spikes", "grad_norm_rising", "plateau"),
    # no warmup at a sane lr: the early blow-up is the divergence
    "no_warmup_instability": ("diverged", "loss_spikes"),
    # gradients that no longer reach the weights: the loss stops moving
    "vanishing_gradients": ("plateau", "lr_too_low", "undertrained"),
    # an lr that is not the configured one: what looks like a schedule's fault is the mismatch
    "schedule_mismatch": ("schedule_decays_too_early", "plateau"),
    # a model too small for its vocabulary learns slowly whatever else is done
    "capacity_too_small": ("undertrained", "lr_too_low", "plateau"),
    # a forecaster no better than naive: its falling loss says nothing
    "no_better_than_naive": ("undertrained",),
}


def explain(findings: list[Finding], series: RunSeries) -> list[Finding]:
    """The findings with effects folded into their causes (order kept; ranking comes after)."""
    findings = _lr_far_above(_lr_before_warmup(list(findings), series), series)
    present = {f.id: f for f in findings}
    dropped: set[int] = set()
    for cause, effects in CAUSES.items():
        if cause not in present:
            continue
        for f in findings:
            if f.id in effects and f is not present[cause] and id(f) not in dropped:
                dropped.add(id(f))
                if f.id not in present[cause].explains:
                    present[cause].explains.append(f.id)
    return [f for f in findings if id(f) not in dropped]


# what a far too high lr shows: the findings it explains, an early blow-up and a stall (not an undertrained
# or overfitted run: in the corpus, 5x the range's top with warmup trained a 48-wide Llama fine)
UNSTABLE = set(CAUSES["lr_too_high"]) | {"no_warmup_instability", "plateau"}
# what shows noise, not harm: spikes and a scattered loss alone do not make a far lr the cause (in the corpus,
# runs at 10x the range's top that spiked and still trained as well as at a quarter of the lr)
NOISE = {"loss_spikes", "batch_too_small"}  # (spikes count as harm when the validation loss paid for them)
# a peak lr beyond any recipe for Adam on small models (100x the range's top): with any trouble, high
ABSURD_LR = 100 * HIGH_LR


def _lr_far_above(findings: list[Finding], series: RunSeries) -> list[Finding]:
    """A peak lr far above the usual range is a cause in itself when the run shows instability (UNSTABLE):
    what the other detectors saw (spikes, a plateau, a blow-up) follows from it."""
    peak = _peak_lr(series)
    if peak is None or peak < FAR_ABOVE or any(f.id == "lr_too_high" for f in findings):
        return findings
    trouble = [f for f in findings if f.id in UNSTABLE]
    if not trouble:
        return findings
    # high with harm shown (a divergence, a stall, an early blow-up, spikes the validation loss paid for) or
    # at a rate beyond any recipe; with spikes or scatter alone, the lr is the likely cause but not a shown
    # one (in the corpus, runs at 10x the range's top spiked and trained as well as at a quarter of the lr)
    harm = [f for f in trouble if f.id not in NOISE or (f.id == "loss_spikes" and f.severity == "high")]
    return [Finding(
        "lr_too_high", "high" if harm or peak >= ABSURD_LR else "medium",
        f"peak lr {fmt(peak)} is {peak / HIGH_LR:.0f}x the top of the usual range for Adam on small transformers "
        f"(1e-4 to 1e-2); the run also shows " + ", ".join(f.id for f in trouble) + ".",
        "Start from the learning rate: divide it by 10 or more (or run `trainlab lr-find`), then look again at "
        "what remains.", {"optim.lr": _round_lr(min(peak / 10, HIGH_LR / 3))})] + findings


def _lr_before_warmup(findings: list[Finding], series: RunSeries) -> list[Finding]:
    """Warmup advice only where the peak lr is in a sane range: a warmup does not save a run whose lr is
    far too high, so an early blow-up at such an lr is the lr's finding."""
    warm = next((f for f in findings if f.id == "no_warmup_instability"), None)
    peak = _peak_lr(series)
    if warm is None or peak is None or peak < FAR_ABOVE:
        return findings
    if not any(f.id == "lr_too_high" for f in findings):
        # high when the blow-up lasted (the loss went non-finite, or stalled after the first tenth); a run that
        # recovered and trained on is medium: the lr is still the likelier cause, the harm is not shown
        lasting = _lasting_harm(series)
        findings.insert(findings.index(warm), Finding(
            "lr_too_high", "high" if lasting else "medium",
            f"peak lr {fmt(peak)} is above the usual range for Adam on small transformers (1e-4 to 1e-2); "
            + warm.evidence,
            "The learning rate is the cause: at this rate the updates are too large for the weights' scale from "
            "the first step, and a warmup would only delay the blow-up. Divide it by 10 or more (or run "
            "`trainlab lr-find` and take its suggestion), then keep a short warmup.",
            {"optim.lr": _round_lr(min(peak / 10, HIGH_LR / 3))}))
    lr = next(f for f in findings if f.id == "lr_too_high")
    lr.explains.append(warm.id)
    return [f for f in findings if f is not warm]


def _lasting_harm(series: RunSeries) -> bool:
    """The loss went non-finite, or stalled after the first tenth of the run (the lr detector's stall)."""
    c = Curves(series)
    if c.nonfinite:
        return True
    return c.n >= 10 and _improvement_after(c, 0.1) < STALL


def _peak_lr(series: RunSeries) -> Optional[float]:
    peak = series.fact("peak_lr")
    if peak is None:
        _, lr = series.col("lr")
        peak = float(lr.max()) if len(lr) else None
    return peak
