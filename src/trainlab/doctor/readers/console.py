"""A training script's console output, read as it is.

Recognised lines (anything else is skipped):
- nanoGPT: `iter N: loss X, time ...` (training) and `step N: train loss X, val loss Y` (evaluation),
  and the settings it prints (`Overriding: learning_rate = 0.01`, the config file's `key = value` lines);
- Keras: `Epoch 3/30` followed by `50/50 - 1s - loss: 2.31 - val_loss: 2.40 - learning_rate: 0.001`
  (the progress bar's carriage returns and escapes are removed; the epoch's last values count);
- the Hugging Face Trainer's printed dicts, `{'loss': 2.3, 'grad_norm': 0.9, 'learning_rate': 0.001,
  'epoch': 0.25}` (they carry epochs, not steps);
- epoch lines such as `Epoch 3/30 | train loss: 0.41 | val loss: 0.44 | lr: 0.0002`;
- plain `key=value` or `key: value` lines that carry a step (step, iter, iteration, num_updates) or an
  epoch, and lines of `|`-separated `key value` fields, `step 40 | loss 2.31 | lr 1.0e-02 | grad_norm 0.84`
  (fairseq's `train_inner` and `valid` lines among them);
- tqdm progress bars (a custom loop's, or Lightning's default), `Epoch 3:  40%|####  | 8/20 [00:05<00:07,
  8.1it/s, train_loss=2.31, val_loss=2.40]`: the step is the batch, counted on from the epochs before it.
A line that names an evaluation (`valid`, `validation`, `eval`, `evaluation`, `dev`) and whose metrics
carry no split of their own holds evaluation metrics.
A `key = value` line with neither a step nor an epoch is a setting (learning rate, warmup, clipping,
weight decay, ...). Steps count optimizer steps where the log gives them; a log of epochs alone is read
with one step per epoch (times the batches per epoch when Keras prints them), and says so.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from trainlab.doctor.readers.common import FORMATS, classify, fill, lr_facts, number, stated_facts, unmask_nonfinite
from trainlab.doctor.series import RunSeries
from trainlab.errors import TrainlabError

VALUE = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf(?:inity)?)"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NANO_ITER = re.compile(rf"^iter (\d+): loss ({VALUE})", re.I)
NANO_EVAL = re.compile(rf"^step (\d+): train loss ({VALUE}), val loss ({VALUE})", re.I)
# `name: value`, `name=value`, `'name': value`; a name may hold spaces ("Train Loss: 0.41")
PAIR = re.compile(rf"(?<![\w/.\-])['\"]?([A-Za-z_][\w/.\-]*(?: [A-Za-z_][\w/.\-]*){{0,3}})['\"]?\s*[:=]\s*['\"]?"
                  rf"({VALUE})(?![\w.])", re.I)
POSITION = re.compile(r"\b(epoch|step|iter|iteration|global_step|num_updates|it)\b['\"]?\s*[:=]?\s*['\"]?(\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?",
                      re.I)
# one `|`-separated field of `name value`, as in `step 40 | loss 2.31 | lr 1.0e-02`
FIELD = re.compile(rf"^\s*([A-Za-z_][\w/.\-]*)\s+({VALUE})\s*$", re.I)
KERAS_BATCHES = re.compile(r"^\s*(\d+)/(\d+)\s")
# a tqdm bar, `Epoch 3:  40%|####      | 40/100 [00:05<00:07, 8.1it/s, loss=2.31]`: batch n of total
TQDM = re.compile(r"(\d+)/(\d+)\s*\[\d+:\d+(?::\d+)?<")
# a word that makes a line's unprefixed metrics evaluation ones (`| valid | epoch 003 | loss 2.1`,
# `Validation: loss=2.1`), unless a number follows it (then it names a value)
EVAL_WORD = re.compile(r"(?<![\w/.\-])(valid|validation|eval|evaluation|dev)(?![\w/.\-])(?!['\"]?\s*[:=]?\s*[-+]?[\d.])",
                       re.I)
SETTING = re.compile(r"^\s*(?:Overriding:\s*)?([A-Za-z_][\w.]*)\s*[=:]\s*([^#,]+?)\s*(?:#.*)?$")


class Parsed:
    """What the lines gave: rows keyed by (split, position), settings, and which tool printed them."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, float], dict] = {}  # (split, "step" | "epoch", position) -> row
        self.settings: dict[str, str] = {}
        self.style: Optional[str] = None
        self.epoch: Optional[float] = None  # the epoch a Keras header opened
        self.batches: Optional[int] = None  # batches per epoch, from Keras' "50/50"
        self.bar: dict = {}  # the metrics the last tqdm update showed (shown again until logged anew)
        self.total_steps: Optional[tuple[int, float]] = None  # (optimizer steps, at epoch), from the Trainer's summary

    def put(self, split: str, unit: str, at: float, key: str, value: float) -> None:
        self.rows.setdefault((split, unit, at), {})[key] = value


def read_console(path: Path) -> RunSeries:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise TrainlabError(f"'{path}' cannot be read: {err.strerror}") from None
    parsed = Parsed()
    for raw in re.split(r"[\r\n]+", text.replace("\x08", "")):
        _line(ANSI.sub("", raw).strip(), parsed)
    series = RunSeries("console", Path(path))
    merged = _positions(parsed, series)
    fill(series, merged)
    if not any("loss" in r for r in series.train + series.val):
        raise TrainlabError(f"'{path}': no training log lines with a loss and a step or epoch; known formats: "
                            f"{', '.join(FORMATS)} (--format forces one)")
    unmask_nonfinite(series)
    lr_facts(series)
    stated_facts(series, parsed.settings)
    series.facts["console_style"] = parsed.style or "plain"
    return series


def _line(line: str, p: Parsed) -> None:
    if not line:
        return
    if m := NANO_ITER.match(line):
        p.style = "nanogpt"
        p.put("train", "step", int(m.group(1)), "loss", float(m.group(2)))
        return
    if m := NANO_EVAL.match(line):
        p.style = "nanogpt"
        p.put("val", "step", int(m.group(1)), "loss", float(m.group(3)))
        return
    found = list(POSITION.finditer(line))
    position = next((m for m in found if m.group(1).lower() != "epoch"), found[0] if found else None)
    fields = [m.groups() for f in line.split("|") if (m := FIELD.match(f))] if "|" in line else []
    pairs = PAIR.findall(line) + fields
    pairs = [(name, value) for name, value in pairs if not POSITION.fullmatch(f"{name.strip()} 0")]
    named = [(classify(re.sub(r"\s+", "_", name.strip())), value, name.strip().lower()) for name, value in pairs]
    named = [(kind, value, name) for kind, value, name in named if kind]
    metrics = [(kind, value) for kind, value, _ in named]
    if (m := KERAS_BATCHES.match(line)) and metrics and p.epoch is not None:
        p.style, p.batches = "keras", int(m.group(2))
    if position and position.group(1).lower() == "epoch" and not metrics:
        p.epoch = float(position.group(2))  # a header: the metrics follow on the next lines
        return
    unit, at = _where(line, position, p)
    if (bar := TQDM.search(line)) and metrics and (unit == "epoch" or at is None):
        # a progress bar: the step is the batch, counted on from the epochs before it; its postfix shows the
        # last logged values until they are logged again, so a value it repeats adds nothing, except at the
        # epoch's last batch, whose final update carries that epoch's evaluation
        n, total = int(bar.group(1)), int(bar.group(2))
        unit, at = "step", (int(at) * total if at is not None else 0) + n
        p.style = p.style or "tqdm"
        shown, p.bar = p.bar, dict(metrics)
        if n < total:
            metrics = [(kind, value) for kind, value in metrics if shown.get(kind) != value]
        if not metrics:
            return
    if metrics and not any(split == "val" or name.startswith("train") for (split, _), _, name in named) \
            and EVAL_WORD.search(line):
        metrics = [(("val", key), value) for (_, key), value in metrics]
    if not metrics or at is None:
        if not position and (m := SETTING.match(line)):
            p.settings[m.group(1)] = m.group(2)
        return
    if line.startswith("{") and unit == "epoch":
        p.style = p.style or "hf_trainer"
    if line.startswith("{") and any(n.strip() in ("train_runtime", "train_loss") for n, _ in pairs):
        # the Trainer's end-of-training summary: its runtime times its steps per second is the run's count of
        # optimizer steps, which turns the fractional epochs of its other lines into steps
        said = {n.strip(): number(v) for n, v in pairs}
        runtime, rate = said.get("train_runtime"), said.get("train_steps_per_second")
        if runtime and rate and unit == "epoch" and at and math.isfinite(runtime * rate):
            p.total_steps = (max(1, round(runtime * rate)), float(at))
        return
    for (split, key), value in metrics:
        p.put(split, unit, at, key, number(value))


def _where(line: str, position, p: Parsed) -> tuple[str, Optional[float]]:
    """Which step (or epoch) a metrics line belongs to."""
    if position:
        name = position.group(1).lower()
        return ("epoch" if name == "epoch" else "step"), float(position.group(2))
    if p.epoch is not None:
        return "epoch", p.epoch
    return "step", None


def _positions(p: Parsed, series: RunSeries) -> dict[tuple[str, int], dict]:
    """Rows keyed by integer steps. Steps win over epochs; a log of epochs alone gets one step per epoch
    (times Keras' batches per epoch), or, for fractional epochs (the Trainer's dicts), one per logging
    interval."""
    stepped = {k: v for k, v in p.rows.items() if k[1] == "step"}
    if stepped:
        return {(split, int(at)): {"step": int(at), **row} for (split, _, at), row in stepped.items()}
    epochs = sorted({at for (_, _, at) in p.rows})
    if all(float(e).is_integer() for e in epochs):
        scale = p.batches or 1
        step_of = {e: int(e * scale) for e in epochs}
        series.notes.append("the log gives epochs, not steps: "
                            + (f"a step here is one of the {scale} batches of an epoch" if p.batches
                               else "each step here is an epoch"))
    elif p.total_steps:
        # the summary's product is rounded (1595 s x 0.125 steps/s = 199 for 200 steps): each line is put on
        # the grid of the first line's step, the logging interval, which the Trainer logs at multiples of
        total, last = p.total_steps
        interval = max(1, round(min(e for e in epochs if e > 0) / last * total)) if any(epochs) else 1
        step_of = {e: max(1, round(e / last * total / interval)) * interval for e in epochs}
        if len(set(step_of.values())) < len(epochs):  # too coarse to keep the lines apart: count intervals
            step_of = {e: i + 1 for i, e in enumerate(epochs)}
        series.notes.append(f"the log gives fractional epochs; steps are reckoned from the summary's "
                            f"{total} optimizer steps (train_runtime x train_steps_per_second), every "
                            f"{interval} a logging interval")
    else:
        step_of = {e: i + 1 for i, e in enumerate(epochs)}
        series.notes.append("the log gives fractional epochs, not steps: a step here is one logging interval")
    series.facts["epochs_seen"] = max(epochs) if epochs else None
    return {(split, step_of[at]): {"step": step_of[at], **row} for (split, _, at), row in p.rows.items()}
