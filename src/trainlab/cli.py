"""The command line: a thin layer over the library. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from trainlab.errors import TrainlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, measure, diagnose and compare small transformers.")
data_app = typer.Typer(no_args_is_help=True, help="Bundled corpora: list, fetch, check.")
app.add_typer(data_app, name="data")

PRESET = typer.Option(None, "--preset", help="A named preset (tiny, shakespeare-char, shakespeare-bpe, shakespeare-sft, "
                                            "micro-bert, kronos-btc).")
CONFIG = typer.Option(None, "--config", help="A YAML config file (applied on top of the preset).")
SET = typer.Option(None, "--set", help="Override one key: --set optim.lr=1e-3 (repeatable).")


@app.command()
def train(preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG, set_: Optional[List[str]] = SET,
          run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Default: runs/<preset>-<timestamp>."),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir from its last checkpoint."),
          fresh: bool = typer.Option(False, "--fresh", help="Discard the run in --run-dir and start over.")) -> None:
    """Train a model."""
    from trainlab.presets import resolve
    from trainlab.train import run as run_mod

    if resume and fresh:
        raise TrainlabError("--resume and --fresh exclude each other; pick one")
    if resume and run_dir is None:
        raise TrainlabError("--resume needs --run-dir")
    if resume:
        run_mod.prepare_run_dir(run_dir, resume=True, fresh=False)
    if resume and (run_dir / "config.yaml").exists():  # continue the run as it was configured
        from trainlab.config import load_yaml, merge
        from trainlab.presets import apply_overrides, build_config
        from trainlab.rundir import saved_tree

        tree = saved_tree(run_dir)
        if config:
            tree = merge(tree, load_yaml(config))
        cfg = build_config(apply_overrides(tree, list(set_ or [])))
    else:
        if resume:
            print(f"--resume: '{run_dir}' holds no run yet; starting it", file=sys.stderr)
        if not preset and not config:
            preset = "shakespeare-char"
        cfg = resolve(preset, config, list(set_ or []))
    from trainlab.train import distributed

    dist = distributed.from_env()
    if dist.active and run_dir is None:
        raise TrainlabError("under torchrun give --run-dir, so that every process writes to the same run")
    run_dir = run_dir or run_mod.new_run_dir(cfg.preset or (config.stem if config else None))
    from trainlab.train.trainer import Diverged

    try:
        result = run_mod.train(cfg, run_dir, resume=resume, fresh=fresh)
    except Diverged as err:
        print(f"error: training diverged: {err}; checkpoints are intact", file=sys.stderr)
        raise typer.Exit(1)
    if not dist.main:
        return
    val = result.get("val") or {}
    bits = next(((k, val[k]) for k in ("bits_per_char", "bits_per_byte", "bits_per_token") if k in val), None)
    summary = f"done: {result['stop_reason']} at step {result['step']} ({result['tokens']:,} tokens, {result['elapsed_s']:.1f} s)"
    if val:
        summary += f" | val loss {val['loss']:.4f}"
    if bits:
        summary += f" | {bits[1]:.3f} {bits[0].replace('_', ' ')}"
    print(summary)
    print(f"run directory: {run_dir}")
    if result["stop_reason"] == "interrupted":
        raise typer.Exit(130)


@app.command()
def estimate(preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG, set_: Optional[List[str]] = SET,
             measure: bool = typer.Option(False, "--measure", help="Time a few real training steps of the full config."),
             probe: bool = typer.Option(True, "--probe/--no-probe",
                                        help="Time and memory from real steps of the config at depth 1 and 3 on "
                                             "this machine (seconds; a compiled config about 25 s), cached. "
                                             "--no-probe: the matmul peak and an assumed efficiency."),
             gpu: Optional[str] = typer.Option(None, "--gpu", help="Estimate for a GPU this machine lacks, from its "
                                                                   "spec sheet: T4, V100, L4, A100, H100."),
             processes: int = typer.Option(1, "--processes", min=1, help="Processes the run will use (torchrun "
                                                                            "--nproc-per-node): tokens per step count all of them."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON (the contract in DESIGN.md).")) -> None:
    """Parameters, memory, FLOPs, tokens and time of a run, before running it."""
    import json

    import torch

    from trainlab import hardware
    from trainlab.experiment.estimate import estimate as run_estimate
    from trainlab.experiment.estimate import format_table
    from trainlab.presets import resolve

    cfg = resolve(preset or (None if config else "shakespeare-char"), config, list(set_ or []))
    data, task = None, None
    if cfg.model.vocab_size is None or cfg.train.epochs or measure:  # the data decides sizes and lengths
        from trainlab.tasks import prepared, task_class

        cfg, data = prepared(cfg, log=lambda s: None)
        task = task_class(cfg.task)(cfg, data, torch.device("cpu"))

    from trainlab.experiment.estimate import target

    here = hardware.resolve_device("auto")
    device, precision, gpu = target(cfg, gpu, here)
    if measure and (device != here or gpu is not None):
        raise TrainlabError(f"--measure needs the target device; {gpu or cfg.train.device} is not on this machine")
    tokens_per_s = measure_throughput(cfg, data) if measure else None
    timing = None
    if probe and not measure and gpu is None and device == here and hardware.native(precision, device):
        from trainlab.experiment.probe import probe as run_probe

        if data is None:  # the probe's processes read the prepared data; prepare (and cache) it once here
            from trainlab.tasks import prepared, task_class

            cfg, data = prepared(cfg, log=lambda s: None)
            task = task_class(cfg.task)(cfg, data, torch.device("cpu"))
        timing = run_probe(cfg, precision, device, log=lambda s: print(s, file=sys.stderr))
    result = run_estimate(cfg, precision, device, task, tokens_per_s, world=processes, timing=timing, gpu=gpu)
    print(json.dumps(result, indent=1) if as_json else format_table(result))


def measure_throughput(cfg, data, steps: int = 5) -> float:
    import tempfile
    import time

    from trainlab.train.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="trainlab-measure-") as where:
        trainer = Trainer(cfg, data, Path(where), log=lambda s: None)
        for _ in range(3 if cfg.train.compile else 1):  # warm-up (and compilation)
            trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return steps * trainer.tokens_per_step / (time.perf_counter() - t0)


@app.command("lr-find")
def lr_find(preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG, set_: Optional[List[str]] = SET,
            start: float = typer.Option(1e-6, "--start", min=0.0), end: float = typer.Option(1.0, "--end", min=0.0),
            steps: int = typer.Option(100, "--steps", min=5),
            out: Optional[Path] = typer.Option(None, "--out", help="Default: runs/lr-find-<timestamp>.")) -> None:
    """LR range test: an exponential ramp, a smoothed loss, a suggestion and a plot."""
    import shlex
    import time

    from trainlab.presets import resolve
    from trainlab.experiment.lr_find import check_out, lr_range_test
    from trainlab.tasks import prepared

    if not 0 < start < end:
        raise TrainlabError(f"--start ({start}) must be above 0 and below --end ({end})")
    out = out or Path("runs") / f"lr-find-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out(out)
    chosen = preset or (None if config else "shakespeare-char")
    cfg = resolve(chosen, config, list(set_ or []))
    cfg, data = prepared(cfg)
    result = lr_range_test(cfg, data, out, start=start, end=end, steps=steps)
    print(f"{result['steps']} steps{' (stopped at divergence)' if result['stopped_early'] else ''}: "
          f"lowest smoothed loss at lr {result['min_loss_lr']:.2e}, steepest fall at {result['steepest_lr']:.2e}")
    if result["min_at_end"]:
        print(f"note: the smoothed loss was still falling at --end ({end:g}), so the range never reached the rates "
              f"where it rises: the suggestion is a floor; raise --end to find the real one")
    print(f"suggested optim.lr = {result['suggested_lr']:.2e}  (plot: {out / 'lr_find.png'})")
    base = (["--preset", chosen] if chosen else []) + (["--config", str(config)] if config else [])
    kept = [s for s in (set_ or []) if not s.startswith("optim.lr=")]
    args = base + [a for s in kept for a in ("--set", s)] + ["--set", f"optim.lr={result['suggested_lr']:.2e}"]
    print("trainlab train " + " ".join(shlex.quote(a) for a in args))


COLUMNS = typer.Option(None, "--columns", help="A forecaster's CSV columns by candle field, for names the "
                       "aliases miss: timestamp=Date,volume=VolumeFrom.")


@app.command("eval")
def eval_(run: Path = typer.Argument(..., help="A run directory."),
          data: Optional[Path] = typer.Option(None, "--data", help="Another text file, .jsonl or candle .csv to "
                                              "evaluate on."),
          columns: Optional[str] = COLUMNS,
          samples: Optional[int] = typer.Option(None, "--samples", min=2, help="Forecaster: sampled paths per "
                                                "origin (default 100)."),
          stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Forecaster: rows between origins "
                                               "(default 3)."),
          origins: Optional[int] = typer.Option(None, "--origins", min=0, help="Forecaster: at most this many "
                                                "origins, spread evenly (0: all; default 400)."),
          seed: Optional[int] = typer.Option(None, "--seed", help="Forecaster: the sampling seed (default 0).")) -> None:
    """Evaluate a run's best checkpoint on its validation split or on another file. A forecaster gets a
    walk-forward evaluation against naive baselines at horizons 1, 6 and 24 on its test period (with --data,
    on every origin of the file), written to forecast_eval.json."""
    import json

    from trainlab import forecast

    if forecast.is_forecaster(run):
        given = {"samples": samples, "stride": stride, "max_origins": origins, "seed": seed}  # else walk_forward's
        result = forecast.walk_forward(run, data, forecast.parse_columns(columns),
                                       **{k: v for k, v in given.items() if v is not None},
                                       log=lambda line: print(line, file=sys.stderr))
        print(Path(result["path"]).with_name("forecast_eval.md").read_text(encoding="utf-8"), end="")
        print(f"written: {result['path']}")
        return
    # a forecaster's options on another run would be ignored: say so rather than evaluate something else
    given = [flag for flag, value in (("--columns", columns), ("--samples", samples), ("--stride", stride),
                                      ("--origins", origins), ("--seed", seed)) if value is not None]
    if given and run.is_dir():
        raise TrainlabError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a forecaster's run; "
                            f"'{run}' is not one")
    from trainlab.inference import evaluate_run

    print(json.dumps(evaluate_run(run, data), indent=1))


@app.command("forecast")
def forecast_(run: Path = typer.Argument(..., help="A forecaster's run directory (task series_forecast)."),
              horizon: int = typer.Option(..., "--horizon", min=1, help="Steps to forecast."),
              data: Optional[Path] = typer.Option(None, "--data", help="A candle CSV (default: the run's own data)."),
              columns: Optional[str] = COLUMNS,
              at: Optional[str] = typer.Option(None, "--at", help="The timestamp of the last observed row "
                                               "(default: the file's last row)."),
              samples: int = typer.Option(100, "--samples", min=2, help="Sampled paths."),
              temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Default: the one "
                                                          "calibrated on validation (with its spread scale)."),
              top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
              seed: int = typer.Option(0, "--seed"),
              out: Optional[Path] = typer.Option(None, "--out", help="Default: RUN/forecasts/<at>/.")) -> None:
    """Sample future candles from a forecaster: forecast.csv (quantiles of the close) and forecast.png."""
    from trainlab import forecast

    result = forecast.forecast(run, horizon, data, forecast.parse_columns(columns), at, samples, temperature, top_p,
                               seed, out, log=lambda line: print(line, file=sys.stderr))
    plot = "forecast.png" if result["plot"] else "no plot (pip install 'trainlab[plots]')"
    print(f"{result['samples']} paths from {result['at']}, {result['horizon']} steps, temperature "
          f"{result['temperature']:g}: {result['out']}/forecast.csv, {plot}")


@app.command()
def generate(run: Path = typer.Argument(..., help="A run directory."),
             prompt: str = typer.Option("", "--prompt"), max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=1),
             temperature: float = typer.Option(0.8, "--temperature", min=0.0, help="0 = greedy."),
             top_k: int = typer.Option(0, "--top-k", min=0), top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
             repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", min=0.01),
             seed: Optional[int] = typer.Option(None, "--seed")) -> None:
    """Sample text from a run's best checkpoint (a series run: reconstruct a validation window, --seed picks it)."""
    from trainlab.inference import generate_text
    from trainlab.tasks.base import GenerationRequest

    print(generate_text(run, GenerationRequest(prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
                                               seed), log=lambda line: print(line, file=sys.stderr)))


@app.command()
def doctor(path: Path = typer.Argument(..., help="A run directory, trainer_state.json, metrics.csv, a TensorBoard, "
                                        "MLflow (mlruns/, mlflow.db) or W&B (offline run, history CSV) run, or a "
                                        "console log."),
           as_json: bool = typer.Option(False, "--json", help="Print the diagnosis as JSON (the contract in DESIGN.md)."),
           probe: bool = typer.Option(False, "--probe", help="Generate from validation prompts and measure repetition."),
           out: Optional[Path] = typer.Option(None, "--out", help="Where diagnosis.json and report.html go; default: "
                                              "the run directory, or doctor/ beside another tool's logs."),
           no_data_check: bool = typer.Option(False, "--no-data-check", help="Skip checking the run's data."),
           fmt: Optional[str] = typer.Option(None, "--format", help="Read the path as this format instead of "
                                             "guessing: trainlab, hf_trainer, lightning, tensorboard, mlflow, "
                                             "wandb or console."),
           verify: bool = typer.Option(False, "--verify", help="For a trainlab run: train its config twice for a "
                                       "short budget, as it was and with the first finding's overrides (same "
                                       "tokens, same seeds), and say whether the change helped. Runs go under "
                                       "RUN/verify/; the same command resumes an interrupted verify."),
           budget: Optional[str] = typer.Option(None, "--budget", help="With --verify, per run: tokens=N, steps=N "
                                                "or seconds=N (seconds become tokens at the baseline's throughput "
                                                "measured here). Default: seconds=20."),
           seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="With --verify: seeds per arm, paired "
                                               "(default 3)."),
           self_check: bool = typer.Option(False, "--self-check", help="For a trainlab run made on this machine: "
                                           "a fresh `trainlab estimate` of its config (a probe of a few seconds, "
                                           "about 25 s compiled) against its measured tokens/s and peak memory; "
                                           "noted when they differ by more than 25%.")) -> None:
    """Diagnose a run: findings with evidence and config changes, and report.html."""
    import json

    from trainlab.doctor import diagnose, summary

    if (budget is not None or seeds is not None) and not verify:
        raise TrainlabError("--budget and --seeds go with --verify")
    if verify:
        from trainlab.experiment import verify as verify_mod

        request = verify_mod.parse_budget(budget)  # bad input stops before anything runs
    diag = diagnose(path, probe=probe, check_data=not no_data_check, fmt=fmt)
    if verify:
        try:
            diag.verify = verify_mod.verify_diagnosis(diag, request, seeds or verify_mod.DEFAULT_SEEDS,
                                                      log=lambda line: print(line, file=sys.stderr))
        except verify_mod.VerifyFailed as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(1)
    if self_check and diag.series.source == "trainlab":
        from trainlab.experiment.estimate import self_check as check_estimate
        from trainlab.experiment.estimate import self_check_note

        diag.estimate_check = check_estimate(diag.series, log=lambda line: print(line, file=sys.stderr))
        diag.notes.append(self_check_note(diag.estimate_check))
    elif self_check:
        diag.notes.append("estimate self-check not run: it needs a trainlab run (its config)")
    report = _write_report(diag, out)
    if as_json:
        print(json.dumps(diag.to_json(), indent=1))
    else:
        print(summary(diag))
        if report:
            print(f"report: {report}")


def _write_report(diag, out: Optional[Path]) -> Optional[Path]:
    """diagnosis.json and report.html; where the default folder beside someone's logs cannot be made (read-only,
    or its name taken) the diagnosis still prints, with one line saying so. An --out that fails is an error."""
    from trainlab.doctor import out_dir_for, write_outputs

    try:
        return write_outputs(diag, out_dir_for(diag.series, out))[1]
    except TrainlabError as err:
        if out is not None:
            raise
        print(f"note: report not written: {err}", file=sys.stderr)
        return None


@app.command()
def ablate(sweep: Path = typer.Argument(..., help="A sweep YAML: base, budget, seeds, variants or grid."),
           out: Optional[Path] = typer.Option(None, "--out", help="Default: runs/ablate-<sweep name>."),
           seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Seeds per variant (overrides the file)."),
           workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                                 help="Runs at once; they split the cores (overrides the file)."),
           shard: Optional[str] = typer.Option(None, "--shard", help="K/N: run only shard K of N (runs dealt "
                                               "round-robin in sweep order), e.g. one per machine into a shared --out; "
                                               "then --report."),
           report: bool = typer.Option(False, "--report", help="Run nothing: gather the finished runs in --out into "
                                       "the results; exit 3 while some are missing.")) -> None:
    """Compare config variants fairly: equal budgets, several seeds, significance."""
    from trainlab.experiment.ablate import gather, load_sweep, parse_shard, run_sweep

    if shard is not None and report:
        raise TrainlabError("--shard and --report exclude each other: run the shards, then --report once")
    part = parse_shard(shard) if shard is not None else None
    plan = load_sweep(sweep, seeds, workers)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    out = out or Path("runs") / f"ablate-{sweep.stem}"
    if part:
        runs = run_sweep(plan, out, shard=part)["runs"]
        again = f" --seeds {seeds}" if seeds else ""
        print(f"shard {part[0]}/{part[1]}: {len(runs)} run(s) in {out} | when every shard is done: "
              f"trainlab ablate {sweep} --out {out}{again} --report")
    else:
        summary = gather(plan, out) if report else run_sweep(plan, out)
        runs = summary["runs"]
        print((out / "results.md").read_text(encoding="utf-8"))
        took = f" | {summary['wall_s']:.0f} s" if "wall_s" in summary else ""
        print(f"results: {out / 'results.md'} | report: {out / 'report.html'}{took}")
        for m in summary.get("missing", []):
            state = "started: still running, or failed (see its train.log)" if m["started"] else "not started"
            print(f"missing: {m['variant']} seed {m['seed']} ({m['dir']}: {state})", file=sys.stderr)
        if summary.get("missing"):
            raise typer.Exit(3)
    failed = sum(1 for r in runs if r.get("failed"))
    if failed:
        print(f"error: {failed} run(s) failed; see their train.log", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def tune(space: Path = typer.Argument(..., help="A search space YAML: params, budget, pruner."),
         preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG, set_: Optional[List[str]] = SET,
         trials: int = typer.Option(20, "--trials", min=1, help="Finished trials in the study, all processes together."),
         storage: Optional[str] = typer.Option(None, "--storage", help="Default: a journal file in --out; or a "
                                               "database URL (postgresql://...) shared by several machines."),
         out: Optional[Path] = typer.Option(None, "--out", help="Default: runs/tune-<space name>.")) -> None:
    """Tune hyperparameters with Optuna (TPE, pruning on validation loss); several processes may share a study."""
    from trainlab.doctor import diagnose, summary, write_outputs
    from trainlab.experiment.tune import tune as run_tune

    out = out or Path("runs") / f"tune-{space.stem}"
    result = run_tune(space, preset, config, list(set_ or []), trials, storage, out)
    for t in result["trials"]:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        print(f"trial {t['number']:>3} {t['state']:9s} {value:>8s} {t['params']}")
    best = result["best"]
    print(f"best: trial {best['number']} val loss {best['value']:.4f} {best['params']}")
    print(f"best config: {out / 'best.yaml'}  (trainlab train --config {out / 'best.yaml'})")
    diag = diagnose(Path(best["run_dir"]), check_data=False)
    write_outputs(diag, Path(best["run_dir"]))
    print(summary(diag))


@app.command()
def export(run: Path = typer.Argument(..., help="A run directory."),
           format_: str = typer.Option("hf", "--format", help="hf: a transformers directory (Llama for a causal "
                                                               "LM, Qwen3 with model.qk_norm)."),
           out: Path = typer.Option(..., "--out", help="The directory to create.")) -> None:
    """Export a run's best checkpoint for other tools."""
    from trainlab.export import export_hf

    if format_ != "hf":
        raise TrainlabError(f"--format {format_!r}: only 'hf' is supported")
    print(export_hf(run, out))


@app.command("config")
def config_(section: Optional[str] = typer.Argument(None, help="Only this section (optim, train, sft, ...) or key."),
            preset: Optional[str] = PRESET, config: Optional[Path] = CONFIG, set_: Optional[List[str]] = SET,
            as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {key, type, value, doc}.")) -> None:
    """Every config key of every task, one a line: the key --set takes, its type, its value and what it does."""
    import json

    from trainlab.config import describe_keys
    from trainlab.presets import config_class, resolve

    cfg = resolve(preset, config, list(set_ or [])) if (preset or config or set_) else config_class()()
    rows = describe_keys(cfg)
    if section:
        rows = [r for r in rows if r["key"] == section or r["key"].startswith(section.rstrip(".") + ".")]
        if not rows:
            sections = sorted({r["key"].split(".")[0] for r in describe_keys(cfg) if "." in r["key"]})
            raise TrainlabError(f"no config section or key '{section}'; sections: {', '.join(sections)}")
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    values = [json.dumps(r["value"]) if not isinstance(r["value"], str) else repr(r["value"]) for r in rows]
    key_w, type_w = max(len(r["key"]) for r in rows), min(max(len(r["type"]) for r in rows), 28)
    value_w = min(max(len(v) for v in values), 16)
    for r, value in zip(rows, values):
        print(f"{r['key']:<{key_w}}  {r['type']:<{type_w}}  {value:<{value_w}}  {r['doc']}")


@data_app.command("list")
def data_list() -> None:
    """The bundled corpora."""
    from trainlab.data.corpora import CORPORA, corpus_path, default_cache_dir

    for c in CORPORA.values():
        here = "cached" if corpus_path(c.name, default_cache_dir()).exists() else "not fetched"
        print(f"{c.name:14s} {c.package + '==' + c.version:20s} {here:12s} {c.description}")
    from trainlab.data import shakespeare_qa

    here = "cached" if shakespeare_qa.dataset_path(default_cache_dir()).exists() else "not built"
    print(f"{shakespeare_qa.NAME:14s} {'(built here)':20s} {here:12s} {shakespeare_qa.DESCRIPTION}")


@data_app.command("get")
def data_get(name: str = typer.Argument(...),
             cache_dir: Optional[Path] = typer.Option(None, "--cache-dir")) -> None:
    """Fetch a bundled corpus into the cache (verified by sha256) and print its path."""
    from trainlab.data import shakespeare_qa
    from trainlab.data.corpora import get_corpus

    print(shakespeare_qa.get_dataset(cache_dir) if name == shakespeare_qa.NAME else get_corpus(name, cache_dir))


@data_app.command("check")
def data_check(path: str = typer.Argument(..., help="A bundled corpus name, a .txt file or folder, a .jsonl, or a "
                                          "candle .csv."),
               val_fraction: float = typer.Option(0.1, "--val-fraction", min=0.0, max=0.5),
               text_field: str = typer.Option("text", "--text-field", help="The .jsonl field holding the text."),
               columns: Optional[str] = COLUMNS,
               as_json: bool = typer.Option(False, "--json")) -> None:
    """Duplicates, train/validation overlap, lengths and unseen characters of a dataset; for candles, the
    spacing, gaps and impossible candles."""
    import json

    from trainlab import forecast
    from trainlab.config import DataConfig
    from trainlab.data import corpora
    from trainlab.data.check import check_candles, check_config, findings_from_check, format_candles, format_report

    file = corpora.get_corpus(path, quiet=True) if path in corpora.CORPORA else Path(path)
    if file.suffix.lower() == ".csv":
        if not file.is_file():
            raise TrainlabError(f"'{path}' does not exist")
        candles = check_candles(file, forecast.parse_columns(columns))
        print(json.dumps(candles, indent=1) if as_json else format_candles(candles))
        return
    if columns:
        raise TrainlabError("--columns applies to a candle .csv")
    report = check_config(DataConfig(source=path, val_fraction=val_fraction, text_field=text_field))
    findings = findings_from_check(report)
    if as_json:
        print(json.dumps(report | {"findings": [f.to_json() for f in findings]}, indent=1))
        return
    print(format_report(report))
    for f in findings:
        print(f"  [{f.severity}] {f.id}: {f.evidence}")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)  # click returns Exit codes in this mode
    except TrainlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # usage errors (typer ships its own click, so match by shape): one line, exit 2
        if hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int):
            print(f"error: {err.format_message()}", file=sys.stderr)
            sys.exit(err.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
