"""trainlab doctor --verify: does the doctor's first suggestion help the run it was made for?

The run's config is trained twice as a fair ablation (experiment/ablate.py): the baseline arm as the run
was configured, the fixed arm with the first finding's suggested overrides. Both arms get the same budget
(tokens by default; a seconds budget becomes tokens at the baseline's throughput measured on this
machine) and the same K seeds, so seed k of one arm is paired with seed k of the other: same
initialisation, same data order. Early stopping is off in both, so both see every token.

The result: the mean final validation loss of each arm, their difference (fixed - baseline), and a 95%
t-interval over the paired per-seed differences. The change `helped` only when there are at least two
seeds and the whole interval lies below zero. A seed that diverges is reported as null; in the means and
the differences it counts as the worst validation loss any run of the verify recorded (a model no better
than the worst point seen, at most the loss at initialisation), so a divergence always counts against its
arm.

The runs live under RUN/verify/ (plan.json, throughput/, runs/<arm>/seed-<k>/, and the ablation's
results.md and report.html). A finished run keeps its result.json and is not trained again; an
interrupted one resumes from its checkpoint, so running the same command again continues a verify.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from trainlab.errors import TrainlabError
from trainlab.experiment.ablate import (Sweep, aggregate, run_dirs, run_one, usable_cores, variant_config,
                                        write_results)
from trainlab.files import atomic_write
from trainlab.monitor.sinks import read_jsonl
from trainlab.stats import finite_number

DEFAULT_BUDGET = ("seconds", 20.0)
DEFAULT_SEEDS = 3
PROBE_STEPS = 20  # steps of the baseline that measure its throughput for a seconds budget
FAIR = {"early_stopping.patience": 0}  # both arms train on every token of the budget
INTERRUPTED = (130, -2, -15)  # the trainer's exit on SIGINT/SIGTERM, or killed by them


class VerifyFailed(Exception):
    """A run of the verify failed for another reason than diverging (its train.log says why)."""


def parse_budget(text: Optional[str]) -> tuple[str, float]:
    """`tokens=N`, `steps=N` or `seconds=N` (None: the default budget)."""
    if text is None:
        return DEFAULT_BUDGET
    m = re.fullmatch(r"\s*(tokens|steps|seconds)\s*=\s*([0-9][0-9_]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*", text)
    amount = float(m[2].replace("_", "")) if m else 0.0
    if not m or amount <= 0 or (m[1] != "seconds" and amount != int(amount)):
        raise TrainlabError(f"--budget {text!r}: give tokens=N, steps=N or seconds=N with N > 0 "
                            f"(e.g. --budget tokens=100000)")
    return m[1], amount if m[1] == "seconds" else int(amount)


def not_ran(reason: str) -> dict[str, Any]:
    return {"ran": False, "reason": reason}


def why_not(diag) -> Optional[str]:
    """Why this diagnosis cannot be verified, or None when it can."""
    series = diag.series
    if series.source != "trainlab":
        return (f"--verify reruns a trainlab run's config; {series.path} is another tool's log "
                f"(read as {series.source}), so nothing was run")
    if series.fact("config") is None:
        return f"--verify needs the run's config.yaml, and {series.path} has none this version can read"
    if not diag.findings:
        return "the run has no findings, so there is no suggestion to verify"
    first = target(diag)
    if first is None:
        return ("the run's findings are about speed or bookkeeping, not about how it trained "
                f"({', '.join(f.id for f in diag.findings)}): a validation loss cannot verify them")
    if not first.suggested_overrides:
        return f"the first finding ({first.id}) suggests no config overrides, so there is nothing to rerun"
    return None


def target(diag):
    """The finding a verify tests: the first one about how the run trained. A speed or bookkeeping finding
    (low_mfu, input_bound, precision_mismatch, ...) can rank above it, but its change is not meant to move the
    validation loss, which is what a verify compares."""
    from trainlab.doctor.causes import NOT_TRAINING

    return next((f for f in diag.findings if f.id not in NOT_TRAINING), None)


def compare(baseline: Sequence[Optional[float]], fixed: Sequence[Optional[float]],
            worst: Optional[float]) -> dict[str, Any]:
    """The paired comparison of two arms' final validation losses, seed by seed (None: that seed diverged
    and counts as `worst`). `interval` is the 95% t-interval of the mean paired difference (fixed -
    baseline), None with fewer than two seeds; `helped` needs two seeds and the interval below zero."""
    from trainlab.stats import describe

    if len(baseline) != len(fixed) or not baseline:
        raise ValueError("both arms need the same seeds, at least one")
    b = [worst if v is None else v for v in baseline]
    f = [worst if v is None else v for v in fixed]
    out: dict[str, Any] = {"baseline_val_loss": None, "fixed_val_loss": None, "delta": None, "interval": None,
                           "helped": False}
    if any(v is None for v in b + f):  # a diverged seed and no loss recorded anywhere to count it as
        return out
    diffs = describe([y - x for x, y in zip(b, f)])
    out.update(baseline_val_loss=sum(b) / len(b), fixed_val_loss=sum(f) / len(f), delta=diffs["mean"])
    if len(b) >= 2:
        out["interval"] = [diffs["lo"], diffs["hi"]]
        # a baseline that diverged on every seed against a fix that did on none helped, whatever loss stands in
        rescued = all(v is None for v in baseline) and all(v is not None for v in fixed)
        out["helped"] = bool(diffs["hi"] < 0) or rescued
    return out


def _val_losses(run: Path) -> list[float]:
    """The finite validation losses a run recorded (at initialisation too, where its task evaluates then)."""
    losses = [row.get("loss") for row in read_jsonl(run / "metrics.jsonl") if row.get("split") == "val"]
    return [float(v) for v in losses if finite_number(v)]


def _diverged(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and any('"diverged"' in line and '"event"' in line
                                 for line in path.read_text(encoding="utf-8").splitlines())


def _settle(sweep: Sweep, name: str, k: int, where: Path) -> dict[str, Any]:
    """Train one run of the verify (or read its result.json). A diverged run gets a result.json of its own,
    so it is not trained again; any other failure stops the verify."""
    res = run_one(sweep, name, k, where)
    if res.get("failed") and not res.get("diverged"):
        if _diverged(where / "run"):
            res = res | {"diverged": True, "val_loss": None}
            atomic_write(where / "result.json", json.dumps(res, indent=1))
        elif res["returncode"] in INTERRUPTED:
            raise KeyboardInterrupt
        else:
            raise VerifyFailed(f"verify run {name} seed {k} failed (exit {res['returncode']}); see {res['log']}")
    elif not res.get("failed") and not finite_number(res["val_loss"]):
        res = res | {"diverged": True, "val_loss": None}
    return res


def _run_arms(sweep: Sweep, out: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of both arms, seed by seed (so a stopped verify leaves whole pairs), `workers` at a time.
    On an interrupt the runs not started are cancelled and the running ones left to stop."""
    jobs = sorted(run_dirs(out, sweep), key=lambda job: (job[1], job[0] != sweep.baseline))
    pool = ThreadPoolExecutor(max_workers=sweep.workers)
    try:
        futures = [pool.submit(_settle, sweep, *job) for job in jobs]
        results = []
        for (name, k, _), fut in zip(jobs, futures):
            res = fut.result()
            state = "diverged" if res.get("diverged") else f"val loss {res['val_loss']:.4f}, {res['tokens']:,} tokens"
            log(f"  {name} seed {k}: {state}")
            results.append(res)
        return results
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _sweep(diag, out: Path, overrides: dict[str, Any], budget: tuple[str, float], seeds: int,
           workers: int) -> Sweep:
    base = out / "base.yaml"  # the run's config as this version reads it
    if not base.exists():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(base, diag.series.fact("config").to_yaml())
    return Sweep(out, None, base, dict(FAIR), budget, seeds, workers, "baseline",
                 {"baseline": {}, "fixed": dict(overrides)})


def _tokens_for(sweep: Sweep, seconds: float, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """A seconds budget as tokens: the baseline trains PROBE_STEPS steps here, at the arms' thread count,
    and its median throughput after the first step sets the tokens (a whole number of steps)."""
    probe = replace(sweep, budget=("steps", PROBE_STEPS), seeds=1, variants={"baseline": {}},
                    base_set={**sweep.base_set, "train.log_interval": 1})
    log(f"measuring the baseline's throughput ({PROBE_STEPS} steps)")
    res = _settle(probe, "baseline", 0, out / "throughput")
    if res.get("diverged") or not res.get("tokens_per_s"):
        raise VerifyFailed(f"the throughput probe of the baseline gave no throughput; see {out / 'throughput'}")
    per_step = res["tokens"] / res["steps"]
    steps = max(1, round(seconds * res["tokens_per_s"] / per_step))
    return {"tokens": int(steps * per_step), "seconds": seconds, "tokens_per_s": res["tokens_per_s"]}


def _plan(diag, sweep: Sweep, request: tuple[str, float], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """plan.json: what this verify compares and its budget in tokens, fixed by the first invocation, so that
    a resumed verify trains the remaining runs exactly as the finished ones were."""
    path = out / "plan.json"
    want = {"finding": target(diag).id, "overrides": sweep.variants["fixed"], "request": list(request)}
    if path.exists():
        plan = json.loads(path.read_text(encoding="utf-8"))
        if {k: plan.get(k) for k in want} != json.loads(json.dumps(want)):
            kind, amount = plan["request"]
            raise TrainlabError(f"'{out}' holds a verify of {plan['finding']} {plan['overrides']} with --budget "
                                f"{kind}={amount:g}; give that budget to resume it, or remove '{out}' to start anew")
        return plan
    kind, amount = request
    budget = _tokens_for(sweep, amount, out, log) if kind == "seconds" else {kind: amount}
    plan = want | {"budget": budget}
    atomic_write(path, json.dumps(plan, indent=1))
    return plan


def verify_diagnosis(diag, budget: tuple[str, float] = DEFAULT_BUDGET, seeds: int = DEFAULT_SEEDS,
                     workers: Optional[int] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Verify the first finding of a diagnosis: the `verify` entry of diagnosis.json."""
    reason = why_not(diag)
    if reason:
        return not_ran(reason)
    if seeds < 1:
        raise TrainlabError("--seeds must be at least 1")
    t0 = time.time()
    first = target(diag)
    out = diag.series.path / "verify"
    workers = workers or max(1, min(usable_cores(), 2 * seeds))
    sweep = _sweep(diag, out, first.suggested_overrides, budget, seeds, workers)
    for name in sweep.variants:  # overrides that make no valid config are found before anything runs
        variant_config(sweep, name, 0)
    plan = _plan(diag, sweep, budget, out, log)
    kind = "tokens" if "tokens" in plan["budget"] else next(iter(plan["budget"]))
    sweep = replace(sweep, budget=(kind, plan["budget"][kind]))
    done = sum((where / "result.json").exists() for _, _, where in run_dirs(out, sweep))
    log(f"verify {first.id}: {' '.join(f'{k}={v}' for k, v in sweep.variants['fixed'].items())} against the run's "
        f"config, {seeds} seed(s) x {sweep.budget[1]:,} {sweep.budget[0]} each ({done} of {2 * seeds} runs done "
        f"already), {workers} at a time, in {out}")
    try:
        results = _run_arms(sweep, out, log)
    except KeyboardInterrupt:
        log(f"verify interrupted: the same command resumes it (finished runs in {out / 'runs'} are kept)")
        raise
    write_results(out, aggregate(sweep, results))
    per_seed = {arm: [r["val_loss"] for r in results if r["variant"] == arm] for arm in ("baseline", "fixed")}
    run_paths = [Path(r["run"]) if "run" in r else Path(r["log"]).parent / "run" for r in results]
    recorded = [v for run in run_paths for v in _val_losses(run)]
    worst = max(recorded) if recorded else None
    diverged = any(v is None for vals in per_seed.values() for v in vals)
    return {"ran": True, "finding": first.id, "overrides": sweep.variants["fixed"], "budget": plan["budget"],
            "seeds": seeds, **compare(per_seed["baseline"], per_seed["fixed"], worst),
            "per_seed": per_seed, "seed_values": [int(diag.series.fact("config").train.seed) + k for k in range(seeds)],
            "diverged_counts_as": worst if diverged else None, "runs": str(out), "wall_s": round(time.time() - t0, 1)}
