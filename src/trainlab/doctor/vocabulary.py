"""Advice in the user's own vocabulary. Detectors speak trainlab's config keys; a run that trainlab did
not make gets the same change in its tool's names (`suggested_changes`) and no `--set` lines.

For a Hugging Face Trainer run the names are TrainingArguments' (from the logged learning rate and
trainer_state.json, or a training_args.json saved beside it, never the pickled training_args.bin); for
other tools, the quantity in words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainlab.doctor.series import RunSeries
from trainlab.findings import Finding

HF_TRAINER = {"optim.lr": "learning_rate", "schedule.warmup_steps": "warmup_steps", "optim.grad_clip": "max_grad_norm",
              "optim.weight_decay": "weight_decay", "train.batch_size": "per_device_train_batch_size",
              "train.grad_accum": "gradient_accumulation_steps", "train.max_steps": "max_steps",
              "model.dropout": "dropout (the model config's)", "train.label_smoothing": "label_smoothing_factor",
              "schedule.name": "lr_scheduler_type"}
# trainlab's schedule names as the Trainer's lr_scheduler_type spells them
HF_SCHEDULES = {"wsd": "warmup_stable_decay", "cosine": "cosine", "constant": "constant_with_warmup",
                "cosine_restarts": "cosine_with_restarts"}
IN_WORDS = {"optim.lr": "learning rate", "schedule.warmup_steps": "warmup steps",
            "optim.grad_clip": "gradient clipping (max norm)", "optim.weight_decay": "weight decay",
            "train.batch_size": "batch size", "train.grad_accum": "gradient accumulation steps",
            "train.max_steps": "training steps", "train.epochs": "epochs", "model.dropout": "dropout",
            "train.precision": "precision", "train.label_smoothing": "label smoothing",
            "early_stopping.patience": "early stopping patience (evaluations)",
            "schedule.min_lr_ratio": "final lr as a fraction of the peak", "schedule.name": "lr schedule", "model.d_model": "model width",
            "model.n_layer": "layers", "train.sample_tokens": "sample length"}


def localize(findings: list[Finding], series: RunSeries) -> None:
    """Move each finding's overrides into the run's tool's names, unless trainlab made the run."""
    if series.source == "trainlab":
        return
    # a Trainer run: its trainer_state.json, or TensorBoard events that hold its TrainingArguments
    trainer = series.source == "hf_trainer" or series.fact("trainer_args") is not None
    names = HF_TRAINER if trainer else IN_WORDS
    args = _training_args(series) if trainer else {}
    for f in findings:
        changes: dict[str, Any] = {}
        for key, value in f.suggested_overrides.items():
            name = names.get(key) or IN_WORDS.get(key) or key
            if trainer:
                name, value = _hf_value(key, name, value, args, series)
            changes[name] = value
        f.suggested_changes, f.suggested_overrides = changes, {}


def _hf_value(key: str, name: str, value: Any, args: dict, series: RunSeries) -> tuple[str, Any]:
    """TrainingArguments take precision as flags, and a warmup as a ratio when the run was set up that way."""
    if key == "train.precision":
        return {"fp16": "fp16", "bf16": "bf16"}.get(str(value), "fp16"), True
    if key == "schedule.name":
        return name, HF_SCHEDULES.get(str(value), str(value))
    if key == "schedule.warmup_steps" and args.get("warmup_ratio") and not args.get("warmup_steps"):
        total = args.get("max_steps") if (args.get("max_steps") or 0) > 0 else series.fact("max_steps")
        if total:
            return "warmup_ratio", round(min(int(value) / int(total), 0.5), 3)
    return name, value


def _training_args(series: RunSeries) -> dict[str, Any]:
    """TrainingArguments as the run saved them: in its TensorBoard events, or a training_args.json beside
    trainer_state.json (a JSON dump of them)."""
    return series.fact("trainer_args") or json_beside(series, "training_args.json")


def json_beside(series: RunSeries, name: str) -> dict[str, Any]:
    """A JSON object saved beside the log (a checkpoint folder) or in the folder above it; {} if none."""
    folder = series.path if series.path.is_dir() else Path(series.path).parent
    for path in (folder / name, folder.parent / name):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}
