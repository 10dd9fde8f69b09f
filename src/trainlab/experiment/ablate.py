"""trainlab ablate: a fair comparison of config variants.

Every variant gets the same budget (tokens by default, so each sees the same amount of data), K
seeds, and its own process; W worker processes split the machine's cores. A finished run leaves a
result.json and is skipped when the sweep runs again; an interrupted one resumes from its checkpoint.
The results: results.json, results.md (mean, std and 95% interval of the final validation loss,
the difference from the baseline with Welch's t-test) and report.html.

Across machines: shard K of N (`--shard K/N`) runs every N-th run of the sweep's order, starting at the
K-th, and writes only those runs' result.json; `--report` then gathers what has finished into the
results and names what has not.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from trainlab.charts import num
from trainlab.config import RunConfig, load_yaml, set_dotted
from trainlab.errors import ConfigError
from trainlab.files import atomic_write
from trainlab.presets import build_config, resolve
from trainlab.stats import finite_number

BUDGET_KEYS = {"tokens": "train.max_tokens", "steps": "train.max_steps", "seconds": "train.max_seconds"}


@dataclass
class Sweep:
    path: Path
    preset: Optional[str]
    config: Optional[Path]
    base_set: dict[str, Any]
    budget: tuple[str, float]
    seeds: int
    workers: int
    baseline: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """What makes the variants' losses less than directly comparable (said on stderr and in results.md)."""


def load_sweep(path: Path, seeds: Optional[int] = None, workers: Optional[int] = None) -> Sweep:
    path = Path(path)
    doc = load_yaml(path)
    unknown = set(doc) - {"base", "budget", "seeds", "workers", "baseline", "variants", "grid"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))}; known: base, budget, seeds, "
                          f"workers, baseline, variants, grid")
    base = doc.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: 'base' must be a mapping with preset, config and set")
    config = base.get("config")
    if config is not None:
        config = (path.parent / config) if not Path(config).is_absolute() else Path(config)
    budget = doc.get("budget") or {"tokens": 1_000_000}
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS:
        raise ConfigError(f"{path}: 'budget' must be one of tokens: N, steps: N or seconds: N")
    kind, amount = next(iter(budget.items()))
    if not isinstance(amount, (int, float)) or amount <= 0:
        raise ConfigError(f"{path}: budget {kind} must be a positive number")
    variants: dict[str, dict[str, Any]] = {}
    for name, over in (doc.get("variants") or {}).items():
        if over is not None and not isinstance(over, dict):
            raise ConfigError(f"{path}: variant '{name}' must map config keys to values")
        variants[str(name)] = dict(over or {})
    grid = doc.get("grid") or {}
    if grid:
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise ConfigError(f"{path}: 'grid' must map config keys to non-empty lists of values")
        for combo in itertools.product(*grid.values()):
            over = dict(zip(grid, combo))
            variants[",".join(f"{k}={v}" for k, v in over.items())] = over
    if not variants:
        raise ConfigError(f"{path}: no variants (give 'variants' or 'grid')")
    baseline = str(doc.get("baseline") or next(iter(variants)))
    if baseline not in variants:
        raise ConfigError(f"{path}: baseline '{baseline}' is not one of the variants")
    sweep = Sweep(path, base.get("preset"), config, dict(base.get("set") or {}), (kind, amount),
                  int(seeds or doc.get("seeds") or 1), int(workers or doc.get("workers") or 1), baseline, variants)
    if sweep.seeds < 1 or sweep.workers < 1:
        raise ConfigError("--seeds and --workers must be at least 1")
    built = {}
    for name in variants:  # every variant must build: bad keys are found before anything runs
        try:
            built[name] = variant_config(sweep, name, 0)
        except ConfigError as err:
            raise ConfigError(f"{path}: variant '{name}': {err}") from None
    sweep.notes = comparability_notes(path, built)
    return sweep


def comparability_notes(path: Path, built: dict[str, RunConfig]) -> list[str]:
    """Variants of different tasks measure different losses: refused. Variants of different data or tokenizers
    are a legitimate question, but their losses are on different validation text or per different tokens (and a
    token budget is a different amount of text): noted, so the table is not read as a like-for-like ranking."""
    def differ(what: Callable[[RunConfig], Any]) -> Optional[str]:
        seen: dict[Any, str] = {}
        for name, cfg in built.items():
            seen.setdefault(what(cfg), name)
        return None if len(seen) == 1 else ", ".join(f"{name}: {value}" for value, name in seen.items())

    tasks = differ(lambda c: c.task)
    if tasks:
        raise ConfigError(f"{path}: the variants train different tasks ({tasks}), whose losses do not compare; "
                          f"give each task its own sweep")
    notes = []
    tokenizers = differ(lambda c: c.data.tokenizer + (f" {c.data.bpe_vocab_size}" if c.data.tokenizer == "bpe" else ""))
    if tokenizers:
        notes.append(f"the variants use different tokenizers ({tokenizers}): their losses are per different tokens, "
                     f"and a token budget is a different amount of text; compare bits per character (bits_per_char "
                     f"in results.json), not the loss")
    sources = differ(lambda c: c.data.source)
    if sources:
        notes.append(f"the variants read different data ({sources}): each is scored on its own validation text")
    return notes


def set_budget(tree: dict[str, Any], kind: str, amount: float) -> None:
    """Make one budget (tokens, steps or seconds) the run's only one."""
    for key in ("train.max_steps", "train.max_tokens", "train.max_seconds", "train.epochs"):
        set_dotted(tree, key, None)
    set_dotted(tree, BUDGET_KEYS[kind], float(amount) if kind == "seconds" else int(amount))


def variant_config(sweep: Sweep, name: str, seed_index: int) -> RunConfig:
    tree = resolve(sweep.preset, sweep.config, []).to_dict()
    for key, value in {**sweep.base_set, **sweep.variants[name]}.items():
        set_dotted(tree, key, value)  # a misspelt key fails in build_config, naming the closest one
    set_budget(tree, *sweep.budget)
    set_dotted(tree, "train.seed", int(tree["train"].get("seed", 1337)) + seed_index)
    if "train.threads" not in {**sweep.base_set, **sweep.variants[name]}:  # else as the sweep file says
        set_dotted(tree, "train.threads", max(1, usable_cores() // sweep.workers))
    return build_config(tree)


def usable_cores() -> int:
    """The cores this process may run on (a batch scheduler's allocation, not the whole node's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_dirs(out: Path, sweep: Sweep) -> list[tuple[str, int, Path]]:
    """Every run of the sweep in its order: each variant's seeds, variant by variant."""
    return [(name, k, out / "runs" / _safe(name) / f"seed-{k}") for name in sweep.variants for k in range(sweep.seeds)]


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` (1 <= K <= N) as (K, N)."""
    m = re.fullmatch(r"(\d+)/(\d+)", str(text).strip())
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ConfigError(f"--shard {text!r}: give K/N with 1 <= K <= N (shard K of N), e.g. --shard 1/4")
    return int(m[1]), int(m[2])


def shard_of(jobs: list, shard: tuple[int, int]) -> list:
    """Shard K of N's share, dealt round-robin: run i (from 0, in sweep order) goes to shard i % N + 1."""
    k, n = shard
    return [job for i, job in enumerate(jobs) if i % n == k - 1]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in name)


def run_one(sweep: Sweep, name: str, k: int, where: Path) -> dict[str, Any]:
    """Run `k` of variant `name` in `where`, as a child `trainlab train` (resumed from its last checkpoint when
    one exists); its result.json when the run finished before."""
    done = where / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    where.mkdir(parents=True, exist_ok=True)
    cfg = variant_config(sweep, name, k)
    (where / "config.in.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    run = where / "run"
    resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*"))
    cmd = [sys.executable, "-m", "trainlab", "train", "--run-dir", str(run)]
    cmd += ["--resume"] if resume else ["--config", str(where / "config.in.yaml"), "--fresh"]
    threads = str(cfg.train.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with open(where / "train.log", "a", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 130:  # Ctrl-C or SIGTERM: stopped at a checkpoint, which the next sweep resumes
        return {"variant": name, "seed": k, "interrupted": True, "log": str(where / "train.log")}
    if proc.returncode != 0:
        return {"variant": name, "seed": k, "failed": True, "returncode": proc.returncode,
                "log": str(where / "train.log")}
    result = summarise_run(run) | {"variant": name, "seed": k, "seed_value": cfg.train.seed}
    if not finite_number(result["val_loss"]):  # it ended on a NaN (its guards were off)
        result |= {"val_loss": None, "failed": True, "diverged": True, "returncode": 0, "log": str(where / "train.log")}
    atomic_write(done, json.dumps(result, indent=1))
    return result


def summarise_run(run: Path) -> dict[str, Any]:
    from trainlab.doctor import diagnose_series
    from trainlab.doctor.readers import read_trainlab

    series = read_trainlab(run)
    last = series.val[-1]
    speeds = sorted(r["tokens_per_s"] for r in series.train[1:] if "tokens_per_s" in r) or [0.0]
    diag = diagnose_series(series, check_data=False)
    top = diag.findings[0] if diag.findings else None
    return {"run": str(run), "val_loss": last["loss"], "acc": last.get("acc"), "top5": last.get("top5"),
            "ppl": last.get("ppl"), "bits_per_char": last.get("bits_per_char"), "tokens": last["tokens"], "steps": last["step"], "elapsed_s": last["elapsed_s"],
            "tokens_per_s": speeds[len(speeds) // 2],
            "curve": [[r["step"], r["tokens"], r["elapsed_s"], r["loss"]] for r in series.val],
            "doctor": f"{top.id} ({top.severity})" if top else "no findings"}


def run_sweep(sweep: Sweep, out: Path, log: Callable[[str], None] = print,
              shard: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    """Run the sweep's runs (only shard K of N's share, given `shard`), skipping finished ones. Unsharded, it
    writes results.json, results.md and report.html; a shard writes only its runs' result.json files."""
    out.mkdir(parents=True, exist_ok=True)
    every = run_dirs(out, sweep)
    jobs = shard_of(every, shard) if shard else every
    pending = sum(not (where / "result.json").exists() for _, _, where in jobs)
    share = f"; shard {shard[0]}/{shard[1]} runs {len(jobs)} of them" if shard else ""
    log(f"{len(sweep.variants)} variants x {sweep.seeds} seeds = {len(every)} runs{share} ({len(jobs) - pending} done "
        f"already), budget {sweep.budget[1]:,} {sweep.budget[0]} each, {sweep.workers} worker(s)")
    t0 = time.time()
    stop = threading.Event()  # an interrupted run stops the sweep: no further run starts

    def job(item):
        name, k, where = item
        if stop.is_set():
            return None
        res = run_one(sweep, name, k, where)
        if res.get("interrupted"):
            stop.set()
            log(f"  {name} seed {k}: interrupted; its checkpoint is kept, and running the sweep again resumes it")
            return res
        status = ("diverged: its validation loss is not finite" if res.get("diverged") else
                  "FAILED (see " + res["log"] + ")") if res.get("failed") else \
            f"val loss {res['val_loss']:.4f}, {res['tokens']:,} tokens, {res['elapsed_s']:.0f} s"
        log(f"  {name} seed {k}: {status}")
        return res

    pool = ThreadPoolExecutor(max_workers=sweep.workers)
    try:
        results = list(pool.map(job, jobs))
    except KeyboardInterrupt:  # Ctrl-C reached this process and the running children alike
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)  # the children write their checkpoints and exit
        raise
    pool.shutdown()
    if stop.is_set():
        raise KeyboardInterrupt  # what finished keeps its result.json; the rest resumes on the next run
    if shard:
        return {"sweep": str(sweep.path), "shard": list(shard), "runs": results, "wall_s": time.time() - t0}
    summary = aggregate(sweep, results)
    summary["wall_s"] = time.time() - t0
    write_results(out, summary)
    return summary


def gather(sweep: Sweep, out: Path) -> dict[str, Any]:
    """The results of every run that has finished (its result.json), whichever process or machine ran it,
    written to results.json, results.md and report.html; `missing` lists the runs without one."""
    results, missing = [], []
    for name, k, where in run_dirs(out, sweep):
        done = where / "result.json"
        if done.exists():
            results.append(json.loads(done.read_text()))
        else:
            missing.append({"variant": name, "seed": k, "dir": str(where),
                            "started": (where / "train.log").exists()})
    summary = aggregate(sweep, results)
    summary["missing"] = missing
    write_results(out, summary)
    return summary


def write_results(out: Path, summary: dict[str, Any]) -> None:
    from trainlab.experiment.report import sweep_report

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(summary, indent=1))
    atomic_write(out / "results.md", results_markdown(summary).encode("utf-8"))
    atomic_write(out / "report.html", sweep_report(summary).encode("utf-8"))


def aggregate(sweep: Sweep, results: list[dict[str, Any]]) -> dict[str, Any]:
    from trainlab.stats import describe, welch

    by: dict[str, list[dict]] = {name: [] for name in sweep.variants}
    for r in results:
        if not r.get("failed") and r.get("val_loss") is not None:  # a diverged run has no loss to average
            by[r["variant"]].append(r)
    base = [r["val_loss"] for r in by[sweep.baseline]]
    rows = []
    for name, runs in by.items():
        losses = [r["val_loss"] for r in runs]
        row: dict[str, Any] = {"variant": name, "overrides": sweep.variants[name], "n": len(runs),
                               "failed": sum(1 for r in results if r["variant"] == name
                                             and (r.get("failed") or r.get("val_loss") is None))}
        if runs:
            row |= {"val_loss": describe(losses)}
            for key in ("acc", "top5", "ppl", "bits_per_char", "tokens", "tokens_per_s", "elapsed_s", "steps"):
                vals = [r[key] for r in runs if r.get(key) is not None]
                row[key] = sum(vals) / len(vals) if vals else None
            row["tokens_all"] = sorted({r["tokens"] for r in runs})
            if name != sweep.baseline and base:
                row["vs_baseline"] = welch(losses, base)
            row["doctor"] = runs[0]["doctor"]
        rows.append(row)
    return {"sweep": str(sweep.path), "budget": {sweep.budget[0]: sweep.budget[1]}, "seeds": sweep.seeds,
            "baseline": sweep.baseline, "variants": rows, "runs": results, "notes": sweep.notes}


def results_markdown(s: dict[str, Any]) -> str:
    (kind, amount), = s["budget"].items()
    lines = [f"# Sweep {s['sweep']}", "",
             f"Budget: {amount:,} {kind} per run; {s['seeds']} seed(s) per variant; baseline `{s['baseline']}`. "
             f"Validation loss in nats per token on each run's fixed validation subset; the interval is a 95% "
             f"t-interval over seeds; p is Welch's t-test against the baseline.", "",
             "| variant | val loss (mean ± std) | 95% interval | Δ vs baseline | p | acc | top-5 | ppl | tokens | "
             "tokens/s | time (s) | doctor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(s["variants"], key=lambda r: r.get("val_loss", {}).get("mean", math.inf)):
        if not r["n"]:
            lines.append(f"| {r['variant']} | {'failed' if r['failed'] else 'missing'} | | | | | | | | | | |")
            continue
        d = r["val_loss"]
        vs = r.get("vs_baseline")
        delta = f"{vs['diff']:+.4f}" if vs else "(baseline)"
        p = ("n/a" if vs["p"] is None else f"{vs['p']:.3g}") if vs else ""
        tokens = "/".join(f"{t:,}" for t in r["tokens_all"])
        lines.append(f"| {r['variant']} | {d['mean']:.4f} ± {d['std']:.4f} | [{d['lo']:.4f}, {d['hi']:.4f}] | {delta} | "
                     f"{p} | {num(r.get('acc'), '.3f')} | {num(r.get('top5'), '.3f')} | {num(r.get('ppl'), '.2f')} | "
                     f"{tokens} | {num(r.get('tokens_per_s'), ',.0f')} | {num(r.get('elapsed_s'), '.0f')} | {r['doctor']} |")
    tokens = {t for r in s["variants"] for t in r.get("tokens_all", [])}
    lines += [] if not tokens else ["", "All runs saw the same number of tokens." if len(tokens) == 1 else
              f"Runs saw different token counts ({', '.join(f'{t:,}' for t in sorted(tokens))}): the budget is not a "
              f"multiple of every variant's tokens per step, or the budget is in steps or seconds."]
    lines += [""] + [f"Note: {note}." for note in s["notes"]] if s.get("notes") else []
    if s.get("missing"):
        lines += ["", f"Missing {len(s['missing'])} run(s), not finished (or failed; see each train.log): "
                  + ", ".join(f"{m['variant']} seed {m['seed']}" for m in s["missing"]) + "."]
    return "\n".join(lines) + "\n"
