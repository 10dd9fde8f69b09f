"""Readers of the Hugging Face Trainer's trainer_state.json, Lightning's CSVLogger metrics.csv and
TensorBoard event directories."""

from __future__ import annotations

import json
from pathlib import Path

from trainlab.doctor.readers.common import (TRAIN_PREFIXES, VAL_PREFIXES, as_step, classify, csv_rows, finish, lr_facts,
                                            most_logged, names_split, stated_facts, unmask_nonfinite)
from trainlab.doctor.series import RunSeries
from trainlab.doctor.vocabulary import _training_args, json_beside
from trainlab.errors import TrainlabError

# transformers' classes whose loss is a cross-entropy over the vocabulary (GPT2LMHeadModel, LlamaForCausalLM,
# BertForMaskedLM, T5ForConditionalGeneration, ...; not BertForPreTraining, whose loss adds a second task's)
LM_HEADS = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration")

# --------------------------------------------------------------------------------------------
# Hugging Face Trainer


def read_hf_trainer_state(path: Path) -> RunSeries:
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        history = state["log_history"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainlabError(f"'{path}' is not a Hugging Face trainer_state.json (no log_history)") from None
    series = RunSeries("hf_trainer", Path(path))
    _hf_rows(series, history)
    if not series.train and not series.val:
        raise TrainlabError(f"'{path}': its log_history holds no losses")
    logging_steps, steps = state.get("logging_steps"), state.get("global_step") or state.get("max_steps")
    if not series.train and isinstance(logging_steps, int) and isinstance(steps, int) and logging_steps > steps > 0:
        series.notes.append(f"the Trainer logged no training loss: logging_steps={logging_steps} is more than the "
                            f"run's {steps} steps (set logging_steps to about {max(1, steps // 50)})")
    unmask_nonfinite(series)
    lr_facts(series)
    series.facts.update(max_steps=state.get("max_steps"), batch_size=state.get("train_batch_size"))
    stated_facts(series, _training_args(series))  # a training_args.json saved beside it: weight decay, clipping
    model_facts(series, json_beside(series, "config.json"))  # the model's config.json: tells a fine-tune from scratch
    return series


def _hf_rows(series: RunSeries, history: list) -> None:
    """log_history's entries as training and evaluation rows (the end-of-training summary left out)."""
    for entry in history:
        step = as_step(entry.get("step")) if isinstance(entry, dict) else None
        if step is None:
            continue
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


# --------------------------------------------------------------------------------------------
# Lightning CSVLogger


def read_lightning_csv(path: Path) -> RunSeries:
    """Lightning's CSVLogger metrics.csv; also a CSV with an epoch column and no step column (Keras' CSVLogger,
    a loop's own per-epoch CSV), read with one step per epoch done, and saying so."""
    rows = csv_rows(path)
    axis = next((name for name in ("step", "epoch") if rows and name in rows[0]), None)
    if axis is None:
        raise TrainlabError(f"'{path}' is not a Lightning metrics.csv or a per-epoch CSV (no 'step' or 'epoch' column)")
    series = RunSeries("lightning", Path(path))
    # epochs as Keras counts them from 0: the values of epoch 0 are those after one epoch
    shift = 1 if axis == "epoch" and any((row.get("epoch") or "").strip() in ("0", "0.0") for row in rows) else 0
    if axis == "epoch":
        series.facts["steps_are_epochs"] = True
        series.notes.append(f"'{Path(path).name}' has no step column: its epochs are read as steps, one per epoch "
                            f"done")
    points: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = as_step(row.get(axis))
        if step is None:
            continue
        step += shift
        for name, text in row.items():
            if name in (None, "step", "epoch") or not isinstance(text, str) or not text:
                continue  # None: a row's cells beyond the header's; an empty cell: not logged on that row
            try:
                value = float(text)
            except ValueError:
                continue
            points.setdefault(name, []).append((step, value))
    merged: dict[tuple[str, int], dict] = {}
    for (split, key), name in most_logged(points).items():
        for step, value in points[name]:
            merged.setdefault((split, step), {"step": step})[key] = value
    finish(series, merged, f"'{path}' holds no loss column (train_loss, val_loss, ...)")
    lightning_hparams(series)
    return series


# --------------------------------------------------------------------------------------------
# TensorBoard


# folders named for a split (Keras writes train/ and validation/): the split words metric names use
SPLIT_FOLDERS = TRAIN_PREFIXES + VAL_PREFIXES


def _tensorboard_runs(directory: Path, files: list[Path]) -> dict[Path, list[Path]]:
    """Event files grouped by run. A folder is part of the run above it when it is a split's (train/,
    validation/) or when the folder above holds events of its own (add_scalars' folders sit under their writer's)."""
    def root(folder: Path) -> Path:
        while folder != directory and (folder.name.lower() in SPLIT_FOLDERS
                                       or next(folder.parent.glob("events.out.tfevents.*"), None) is not None):
            folder = folder.parent
        return folder

    runs: dict[Path, list[Path]] = {}
    for f in files:
        runs.setdefault(root(f.parent), []).append(f)
    return runs


def _scalars_name(tag: str, folder: str) -> str:
    """SummaryWriter.add_scalars("Loss", {"train": ..., "val": ...}) writes each curve under the tag "Loss" in a
    folder of its own, named "Loss_train" and "Loss_val": the folder tells the split."""
    head = tag.replace("/", "_") + "_"
    return f"{tag}/{folder[len(head):]}" if folder.startswith(head) and len(folder) > len(head) else tag


def read_tensorboard(directory: Path) -> RunSeries:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[tuple[str, str], list] = {}  # (split, key) -> the longest curve any tag gave it
    texts: dict[str, str] = {}
    files = sorted(Path(directory).rglob("events.out.tfevents.*"))
    if not files:
        raise TrainlabError(f"'{directory}' holds no TensorBoard event files")
    runs = _tensorboard_runs(Path(directory), files)
    if len(runs) > 1:  # several runs (the Trainer's runs/<date>/ of each start, a folder of experiments): the newest
        newest = max(runs, key=lambda r: max(f.stat().st_mtime for f in runs[r]))
        files = runs[newest]
    for run in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            name = _scalars_name(tag, run.name)
            if run != Path(directory) and run.name.lower() in SPLIT_FOLDERS and not names_split(name):
                name = f"{run.name}/{name}"  # Keras, or two SummaryWriters: train/ and validation/ folders, one tag
            kind = classify(name, epoch_means=True)
            if not kind:
                continue
            events = acc.Scalars(tag)
            # where two tags name one metric (Keras' batch_loss and epoch_loss), the one logged more often is the curve
            if len(events) > len(curves.get(kind, ())):
                curves[kind] = events
        for tag in acc.Tags().get("tensors", []):
            if tag in ("args/text_summary", "model_config/text_summary"):
                strings = acc.Tensors(tag)[-1].tensor_proto.string_val
                texts[tag.split("/")[0]] = strings[0].decode("utf-8", "replace") if strings else ""
    merged: dict[tuple[str, int], dict] = {}
    for (split, key), events in curves.items():
        for ev in events:
            merged.setdefault((split, int(ev.step)), {"step": int(ev.step)})[key] = float(ev.value)
    series = finish(RunSeries("tensorboard", Path(directory)), merged, f"'{directory}': its events hold no loss scalars")
    if len(runs) > 1:
        series.notes.append(f"'{directory}' holds {len(runs)} TensorBoard runs; read the newest, '{newest}' (give a "
                            f"run's own folder to read another)")
    _trainer_texts(series, texts)
    lightning_hparams(series)
    return series


def _trainer_texts(series: RunSeries, texts: dict[str, str]) -> None:
    """The Hugging Face Trainer's TensorBoard callback also writes its TrainingArguments and the model's config
    as JSON text: the run's settings, and its vocabulary, as trainer_state.json with the files beside it has."""
    args, model = (_json_object(texts.get(k, "")) for k in ("args", "model_config"))
    if args:
        series.facts["trainer_args"] = args
        stated_facts(series, {k: str(v) for k, v in args.items() if isinstance(v, (int, float, str)) and v is not None})
    model_facts(series, model)


def _json_object(text: str) -> dict:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def model_facts(series: RunSeries, model: dict) -> None:
    """The vocabulary a transformers config states, and whether its head's loss is a cross-entropy over it."""
    vocab = model.get("vocab_size")
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1:
        series.facts["vocab_size"] = vocab
        # a language-model head: its loss is a cross-entropy over the vocabulary (not a classifier's or a regression's)
        series.facts["token_loss"] = any(isinstance(a, str) and a.endswith(LM_HEADS) for a in model.get("architectures") or [])


def lightning_hparams(series: RunSeries) -> None:
    """Lightning's loggers save the module's hyperparameters (`save_hyperparameters()`) as hparams.yaml in the
    version folder beside metrics.csv or the events: its learning rate, warmup, clipping, vocabulary, as stated.
    Nested sections are read by their leaf names."""
    import yaml

    folder = series.path if series.path.is_dir() else Path(series.path).parent
    try:
        data = yaml.safe_load((folder / "hparams.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return
    if not isinstance(data, dict) or not data:
        return
    leaves: dict[str, object] = {}

    def walk(tree: dict) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
                leaves.setdefault(str(key), value)

    walk(data)
    stated_facts(series, {k: str(v) for k, v in leaves.items()})
    model_facts(series, {"vocab_size": leaves.get("vocab_size")})
