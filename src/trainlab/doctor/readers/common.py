"""What every reader shares: other tools' metric names mapped to trainlab's, the Trainer's masked
non-finite losses, and the peak lr and warmup read off a logged lr curve."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Optional

from trainlab.doctor.series import RunSeries, is_number, is_step
from trainlab.errors import TrainlabError

# metric names other tools use, mapped to trainlab's (after split prefixes are removed)
ALIASES = {
    "loss": "loss", "learning_rate": "lr", "lr": "lr", "grad_norm": "grad_norm", "gradient_norm": "grad_norm",
    "grad_2_0_norm_total": "grad_norm",  # Lightning's grad_norm(module, norm_type=2)
    "accuracy": "acc", "acc": "acc", "perplexity": "ppl", "ppl": "ppl", "top5": "top5", "top5_acc": "top5",
    "tokens_per_s": "tokens_per_s", "tokens_per_second": "tokens_per_s",
}
# the names `--format` takes, which are also the `source` a diagnosis reports
FORMATS = ("trainlab", "hf_trainer", "lightning", "tensorboard", "mlflow", "wandb", "console")
VAL_PREFIXES = ("val", "valid", "validation", "eval", "test")
TRAIN_PREFIXES = ("train", "training")


def name_parts(name: str) -> list[str]:
    """A metric name's words: 'Loss/train' -> ['loss', 'train'], 'val_loss_epoch' -> ['val', 'loss', 'epoch']."""
    return [p for p in re.split(r"[/_.\-\s]", name.lower()) if p]


def names_split(name: str) -> bool:
    """The name says its split, first or last ('val_loss', 'Loss/train')."""
    parts = name_parts(name)
    return bool(parts) and (parts[0] in VAL_PREFIXES + TRAIN_PREFIXES or parts[-1] in VAL_PREFIXES + TRAIN_PREFIXES)


def classify(name: str, epoch_means: bool = False) -> Optional[tuple[str, str]]:
    """('train' | 'val', trainlab key) for a metric name such as 'val_loss', 'eval/loss', 'train_loss_step',
    'lr-AdamW', 'train/learning_rate', or with the split last, as PyTorch's TensorBoard tutorial writes it
    ('Loss/train', 'Loss/test', 'training loss'); None for names we do not use. A training metric's epoch mean
    (Lightning's train_loss_epoch) is None unless `epoch_means`: a reader that passes it keeps, per metric, the
    name logged most often, so the epoch means are the curve only where no step values were logged (a run
    with fewer batches an epoch than Lightning's log_every_n_steps)."""
    low = name.strip().lower()
    if low.startswith(("lr-", "lr_", "lr/")) or low in ("lr", "learning_rate"):
        return ("train", "lr")  # Lightning's LearningRateMonitor: lr-AdamW, lr-AdamW/pg1
    parts = name_parts(low)
    if not parts:
        return None
    split = "train"
    if parts[0] in VAL_PREFIXES:
        split, parts = "val", parts[1:]
    elif parts[0] in TRAIN_PREFIXES:
        parts = parts[1:]
    elif len(parts) > 1 and parts[-1] in VAL_PREFIXES + TRAIN_PREFIXES:  # the split last: Loss/train, loss_val
        split, parts = ("val" if parts[-1] in VAL_PREFIXES else "train"), parts[:-1]
    if len(parts) > 1 and parts[0] in ("epoch", "batch"):  # Keras: epoch_loss, batch_loss (an epoch's or a batch's)
        parts = parts[1:]
    # Lightning logs a metric with on_step and on_epoch as name_step and name_epoch. In training the steps are
    # the curve (the epoch's mean repeats them); in validation each step is one batch of the same evaluation,
    # and the epoch's mean is the evaluation's value
    if parts and parts[-1] in ("step", "epoch"):
        if (parts[-1] == "epoch") == (split == "train") and not (epoch_means and split == "train"):
            return None
        parts = parts[:-1]
    key = ALIASES.get("_".join(parts))
    return (split, key) if key else None


def unmask_nonfinite(series: RunSeries) -> None:
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


def fill(series: RunSeries, merged: dict[tuple[str, int], dict]) -> None:
    for (split, _), row in sorted(merged.items(), key=lambda kv: kv[0][1]):
        (series.train if split == "train" else series.val).append(row)


def lr_facts(series: RunSeries) -> None:
    """Peak lr and warmup length read off a logged lr curve (foreign logs carry no config)."""
    steps, lrs = series.col("lr")
    if len(lrs) == 0:
        return
    peak = float(lrs.max())
    first_peak = int(steps[int((lrs >= 0.98 * peak).argmax())])
    series.facts.update(peak_lr=peak, warmup_steps=first_peak if lrs[0] < 0.5 * peak else 0)
    if math.isfinite(peak) and peak > 0:
        series.facts["min_lr_ratio_seen"] = float(lrs[-1] / peak)


# hyperparameter names as tools and scripts state them (printed configs, MLflow params, W&B config),
# mapped to the facts the detectors read
SETTINGS = {
    "learning_rate": "peak_lr", "lr": "peak_lr", "max_lr": "peak_lr", "peak_lr": "peak_lr", "base_lr": "peak_lr",
    "warmup_iters": "warmup_steps", "warmup_steps": "warmup_steps", "num_warmup_steps": "warmup_steps",
    "warmup_ratio": "warmup_ratio", "pct_start": "warmup_ratio",
    "grad_clip": "grad_clip", "max_grad_norm": "grad_clip", "clip_grad_norm": "grad_clip",
    "gradient_clip_val": "grad_clip", "clip_norm": "grad_clip", "clipnorm": "grad_clip",
    "weight_decay": "weight_decay", "wd": "weight_decay", "adam_weight_decay": "weight_decay",
    "max_iters": "max_steps", "max_steps": "max_steps", "total_steps": "max_steps",
    "lr_scheduler_type": "schedule", "scheduler": "schedule", "lr_scheduler": "schedule", "schedule": "schedule",
    "decay_lr": "decay_lr", "min_lr": "min_lr", "batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size", "dropout": "dropout",
}


def as_step(value: Any) -> Optional[int]:
    """A logged step as an int: a whole, finite, non-negative number (or its text); None for anything else, so
    that a damaged row is left out rather than stopping the read."""
    if isinstance(value, str):
        value = number(value)
    if not is_number(value) or not math.isfinite(value):
        return None
    return int(value) if is_step(int(value)) else None


def number(text: str) -> Optional[float]:
    """A float from a printed value: 1e-3, 0.001, nan, inf, -inf, 'NaN' in quotes; None for anything else."""
    text = text.strip().strip("'\"").lower()
    try:
        return float(text)
    except ValueError:
        return None


def setting_facts(settings: dict[str, str]) -> dict[str, object]:
    """The facts a run's stated settings give (names as in SETTINGS, values as printed or logged)."""
    facts: dict[str, object] = {}
    for name, text in settings.items():
        key = SETTINGS.get(re.sub(r"[\s.\-]+", "_", name.strip().lower()))
        if key is None:
            continue
        if key == "schedule":
            facts[key] = str(text).strip().strip("'\"").lower().replace("schedulertype.", "")
        elif key == "decay_lr":
            facts[key] = str(text).strip().lower() not in ("false", "0", "no")
        else:
            value = number(str(text))
            if value is not None and math.isfinite(value):
                facts[key] = value
    if facts.get("max_steps") is not None and float(facts["max_steps"]) <= 0:  # the Trainer's -1: not set (epochs rule)
        del facts["max_steps"]
    if facts.get("decay_lr") is False:  # nanoGPT: without decay_lr the lr is constant, with no warmup
        facts.update(schedule="constant", warmup_steps=0)
    if not facts.get("warmup_steps") and facts.get("warmup_ratio") and facts.get("max_steps"):
        facts["warmup_steps"] = round(float(facts["warmup_ratio"]) * float(facts["max_steps"]))
    for key in ("warmup_steps", "max_steps", "batch_size"):
        if key in facts:
            facts[key] = int(facts[key])
    return facts


def stated_facts(series: RunSeries, settings: dict[str, str]) -> None:
    """Settings the run states become facts, unless the logged curves already gave them (a logged lr
    curve beats a stated one); what the doctor needs and the run does not state goes into its notes."""
    stated = setting_facts(settings)
    for key, value in stated.items():
        if series.facts.get(key) is None:
            series.facts[key] = value
    if stated:  # as stated, beside what the curves gave (a check compares the two)
        series.facts["stated"] = stated
    missing = [what for key, what in (("peak_lr", "the learning rate"), ("warmup_steps", "the warmup"),
                                      ("grad_clip", "gradient clipping")) if series.facts.get(key) is None]
    if missing:
        series.notes.append(f"the {series.source} log does not state " + ", ".join(missing)
                            + ": the checks that need it did not run")


def most_logged(points: dict[str, list]) -> dict[tuple[str, str], str]:
    """For each metric, the name among those that mean it which was logged most often: a Trainer's end-of-run
    `train_loss` (one point) is not its `loss`, and Lightning's `train_loss_epoch` is not the curve beside a
    `train_loss_step`."""
    chosen: dict[tuple[str, str], str] = {}
    for name, values in points.items():
        kind = classify(name, epoch_means=True)
        if kind and (kind not in chosen or len(values) > len(points[chosen[kind]])):
            chosen[kind] = name
    return chosen


def by_key(series: RunSeries, points: dict[str, list[tuple[int, float]]]) -> None:
    """Rows from metric histories keyed by name (MLflow, W&B); where two names mean one metric, `most_logged`."""
    merged: dict[tuple[str, int], dict] = {}
    for (split, metric), key in most_logged(points).items():
        for step, value in points[key]:  # in logging order: a step logged twice keeps its last value
            merged.setdefault((split, int(step)), {"step": int(step)})[metric] = float(value)
    fill(series, merged)


def from_points(source: str, path, points: dict[str, list[tuple[int, float]]], settings: dict[str, str],
                empty: str) -> RunSeries:
    """A series from metric histories keyed by name and the run's stated settings; `empty` is the error
    when no loss is among them."""
    from trainlab.errors import TrainlabError

    series = RunSeries(source, path)
    by_key(series, points)
    if not series.train and not series.val:
        raise TrainlabError(empty)
    unmask_nonfinite(series)
    lr_facts(series)
    stated_facts(series, settings)
    return series


def csv_rows(path: Path) -> list[dict]:
    """A CSV file's rows as dicts; a file that is not readable CSV is one clear error."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        raise TrainlabError(f"'{path}' cannot be read as CSV") from None


def finish(series: RunSeries, merged: dict[tuple[str, int], dict], no_loss: str) -> RunSeries:
    """The merged points into the series, masked non-finite values restored, the lr facts; `no_loss` is the
    error when neither a training nor a validation loss was found."""
    fill(series, merged)
    unmask_nonfinite(series)
    if not series.train and not series.val:
        raise TrainlabError(no_loss)
    lr_facts(series)
    return series
