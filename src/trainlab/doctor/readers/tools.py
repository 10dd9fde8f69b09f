"""Readers: a trainlab run directory, a Hugging Face trainer_state.json, a Lightning metrics.csv, a
TensorBoard event directory. Each returns one RunSeries with trainlab's metric names."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Optional

from trainlab.doctor.series import RunSeries
from trainlab.errors import TrainlabError

# metric names other tools use, mapped to trainlab's (after split prefixes are removed)
ALIASES = {
    "loss": "loss", "learning_rate": "lr", "lr": "lr", "grad_norm": "grad_norm", "gradient_norm": "grad_norm",
    "accuracy": "acc", "acc": "acc", "perplexity": "ppl", "ppl": "ppl", "top5": "top5", "top5_acc": "top5",
    "tokens_per_s": "tokens_per_s", "tokens_per_second": "tokens_per_s",
}
VAL_PREFIXES = ("val", "valid", "validation", "eval", "test")
TRAIN_PREFIXES = ("train", "training")


def classify(name: str) -> Optional[tuple[str, str]]:
    """('train' | 'val', trainlab key) for a metric name such as 'val_loss', 'eval/loss',
    'train_loss_step', 'lr-AdamW' or 'train/learning_rate'; None for names we do not use."""
    low = name.strip().lower()
    if low.startswith("lr-") or low.startswith("lr_") or low in ("lr", "learning_rate"):
        return ("train", "lr")  # Lightning's LearningRateMonitor: lr-AdamW, lr-AdamW/pg1
    parts = [p for p in re.split(r"[/_.\-]", low) if p]
    if not parts:
        return None
    split = "train"
    if parts[0] in VAL_PREFIXES:
        split, parts = "val", parts[1:]
    elif parts[0] in TRAIN_PREFIXES:
        parts = parts[1:]
    if parts and parts[-1] == "epoch":  # Lightning's per-epoch aggregate of a step metric
        return None
    if parts and parts[-1] == "step":
        parts = parts[:-1]
    key = ALIASES.get("_".join(parts))
    return (split, key) if key else None


def read(path: Path) -> RunSeries:
    """Pick the reader by what the path holds."""
    path = Path(path)
    if not path.exists():
        raise TrainlabError(f"'{path}' does not exist")
    if path.is_dir():
        if (path / "metrics.jsonl").exists():
            return read_trainlab(path)
        if (path / "trainer_state.json").exists():
            return read_hf_trainer_state(path / "trainer_state.json")
        if (path / "metrics.csv").exists():
            return read_lightning_csv(path / "metrics.csv")
        if any(path.rglob("events.out.tfevents.*")):
            return read_tensorboard(path)
        raise TrainlabError(f"'{path}' holds no metrics.jsonl, trainer_state.json, metrics.csv or TensorBoard events")
    if path.name == "metrics.jsonl":
        return read_trainlab(path.parent)
    if path.suffix == ".json":
        return read_hf_trainer_state(path)
    if path.suffix == ".csv":
        return read_lightning_csv(path)
    if path.name.startswith("events.out.tfevents."):
        return read_tensorboard(path.parent)
    raise TrainlabError(f"'{path}': not a run directory, trainer_state.json, metrics.csv or TensorBoard directory")


# --------------------------------------------------------------------------------------------
# trainlab


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_trainlab(run_dir: Path) -> RunSeries:
    rows = _jsonl(run_dir / "metrics.jsonl")
    if not rows:
        raise TrainlabError(f"'{run_dir / 'metrics.jsonl'}' holds no metrics yet")
    series = RunSeries("trainlab", run_dir,
                       train=[r for r in rows if r.get("split") == "train"],
                       val=[r for r in rows if r.get("split") == "val"],
                       events=[r for r in rows if r.get("split") == "event"],
                       samples=_jsonl(run_dir / "samples.jsonl"))
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    series.facts.update(_trainlab_facts(run_dir, env))
    series.facts["tokens_seen"] = max((r.get("tokens", 0) for r in rows), default=0)
    counted = [r for r in series.train if r.get("step") and r.get("tokens")]
    if counted:  # the trainer's own count (all processes, SFT's mean example length) beats the config's
        series.facts["tokens_per_step"] = round(counted[-1]["tokens"] / counted[-1]["step"])
    return series


def _trainlab_facts(run_dir: Path, env: dict) -> dict[str, Any]:
    import yaml

    from trainlab.presets import build_config

    hw = env.get("hardware") or {}
    facts: dict[str, Any] = {"precision": env.get("precision"), "device": env.get("device"),
                             "cpu_bf16": hw.get("cpu_bf16"), **_gpu_facts(hw, env.get("device"))}
    try:
        cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    except Exception:  # a config from another version: the metrics alone still diagnose
        return facts
    facts.update(config=cfg, peak_lr=cfg.optim.lr, warmup_steps=cfg.schedule.warmup_steps,
                 schedule=cfg.schedule.name, min_lr_ratio=cfg.schedule.min_lr_ratio, grad_clip=cfg.optim.grad_clip,
                 tokens_per_step=_tokens_per_step(cfg, env), batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                 seq_len=cfg.model.seq_len, d_model=cfg.model.d_model, n_layer=cfg.model.n_layer,
                 vocab_size=cfg.model.vocab_size, dropout=cfg.model.dropout, weight_decay=cfg.optim.weight_decay,
                 patience=cfg.early_stopping.patience, data_source=cfg.data.source, max_steps=cfg.train.max_steps,
                 compile=cfg.train.compile)
    if cfg.model.vocab_size:
        from trainlab.models.base import param_counts
        from trainlab.tasks import meta_model

        counts = param_counts(meta_model(cfg))
        facts.update(params=counts["total"], embedding_params=counts["embedding"])
    return facts


def _gpu_facts(hw: dict, device: Any) -> dict[str, Any]:
    """The run's GPU: the trainer writes `cuda_devices` (names) and `cuda_capability` ("7.5") for every
    visible device, and the run used `device` ("cuda" is the first, "cuda:1" the second); env.json files
    from before name it under `gpu`."""
    names, caps = hw.get("cuda_devices"), hw.get("cuda_capability")
    index = 0
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    name = names[index] if isinstance(names, list) and index < len(names) else hw.get("gpu")
    cap = caps[index] if isinstance(caps, list) and index < len(caps) else hw.get("gpu_capability")
    return {"gpu_name": name if isinstance(name, str) else None,
            "gpu_capability": str(cap) if isinstance(cap, (str, int, float)) else None}


def _tokens_per_step(cfg, env: dict) -> int:
    """As the trainer counted them (`train/budget.py`): all processes, padding excluded."""
    from trainlab.tasks import task_class
    from trainlab.train.budget import StepSize

    world = int(env.get("world_size") or 1)
    return StepSize.of(cfg, *task_class(cfg.task).example_tokens(cfg), world).tokens


# --------------------------------------------------------------------------------------------
# Hugging Face Trainer


def read_hf_trainer_state(path: Path) -> RunSeries:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        history = state["log_history"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainlabError(f"'{path}' is not a Hugging Face trainer_state.json (no log_history)") from None
    series = RunSeries("hf_trainer", Path(path))
    for entry in history:
        if not isinstance(entry, dict) or "step" not in entry:
            continue
        step = int(entry["step"])
        train, val = {"step": step}, {"step": step}
        for name, value in entry.items():
            if name in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            if name.startswith("train_") and name[6:] in ("runtime", "loss", "samples_per_second", "steps_per_second"):
                continue  # the end-of-training summary
            kind = classify(name)
            if kind:
                (train if kind[0] == "train" else val)[kind[1]] = float(value)
        if len(train) > 1:
            series.train.append(train)
        if len(val) > 1:
            series.val.append(val)
    if not series.train and not series.val:
        raise TrainlabError(f"'{path}': its log_history holds no losses")
    _unmask_nonfinite(series)
    _lr_facts(series)
    series.facts.update(max_steps=state.get("max_steps"), batch_size=state.get("train_batch_size"))
    return series


def _unmask_nonfinite(series: RunSeries) -> None:
    """(Every foreign reader: the Trainer's numbers reach TensorBoard too.) The Trainer's
    `logging_nan_inf_filter` (on by default) leaves non-finite step losses out of the
    logged mean, so a window whose every step was NaN logs a loss of exactly 0.0, while its grad_norm (or
    the evaluation after it) shows NaN. Such a 0.0 is a NaN."""
    bad_eval = [r["step"] for r in series.val if not math.isfinite(r.get("loss", 0.0))]
    for row in series.train:
        if row.get("loss") != 0.0:
            continue
        grad = row.get("grad_norm")
        if (grad is not None and not math.isfinite(grad)) or (grad is None and any(s >= row["step"] for s in bad_eval)):
            row["loss"] = float("nan")
            series.facts["masked_nonfinite"] = series.facts.get("masked_nonfinite", 0) + 1


# --------------------------------------------------------------------------------------------
# Lightning CSVLogger


def read_lightning_csv(path: Path) -> RunSeries:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        raise TrainlabError(f"'{path}' cannot be read as CSV") from None
    if not rows or "step" not in rows[0]:
        raise TrainlabError(f"'{path}' is not a Lightning metrics.csv (no 'step' column)")
    series = RunSeries("lightning", Path(path))
    merged: dict[tuple[str, int], dict] = {}
    for row in rows:
        try:
            step = int(float(row["step"]))
        except (TypeError, ValueError):
            continue
        for name, text in row.items():
            if name in ("step", "epoch") or text in (None, ""):
                continue
            kind = classify(name)
            if not kind:
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            merged.setdefault((kind[0], step), {"step": step})[kind[1]] = value
    _fill(series, merged)
    _unmask_nonfinite(series)
    if not series.train and not series.val:
        raise TrainlabError(f"'{path}' holds no loss column (train_loss, val_loss, ...)")
    _lr_facts(series)
    return series


# --------------------------------------------------------------------------------------------
# TensorBoard


def read_tensorboard(directory: Path) -> RunSeries:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[tuple[str, int], dict] = {}
    files = sorted(Path(directory).rglob("events.out.tfevents.*"))
    if not files:
        raise TrainlabError(f"'{directory}' holds no TensorBoard event files")
    for run in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            kind = classify(tag)
            if not kind:
                continue
            for ev in acc.Scalars(tag):
                merged.setdefault((kind[0], int(ev.step)), {"step": int(ev.step)})[kind[1]] = float(ev.value)
    series = RunSeries("tensorboard", Path(directory))
    _fill(series, merged)
    _unmask_nonfinite(series)
    if not series.train and not series.val:
        raise TrainlabError(f"'{directory}': its events hold no loss scalars")
    _lr_facts(series)
    return series


def _fill(series: RunSeries, merged: dict[tuple[str, int], dict]) -> None:
    for (split, _), row in sorted(merged.items(), key=lambda kv: kv[0][1]):
        (series.train if split == "train" else series.val).append(row)


def _lr_facts(series: RunSeries) -> None:
    """Peak lr and warmup length read off a logged lr curve (foreign logs carry no config)."""
    steps, lrs = series.col("lr")
    if len(lrs) == 0:
        return
    peak = float(lrs.max())
    first_peak = int(steps[int((lrs >= 0.98 * peak).argmax())])
    series.facts.update(peak_lr=peak, warmup_steps=first_peak if lrs[0] < 0.5 * peak else 0)
    if math.isfinite(peak) and peak > 0:
        series.facts["min_lr_ratio_seen"] = float(lrs[-1] / peak)
