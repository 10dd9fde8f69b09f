"""The doctor's readers of MLflow stores, W&B runs and console logs, format detection and --format.

Fixtures under tests/fixtures/doctor/foreign/ were written by the real tools: mlflow/ and wandb/ by the
Hugging Face Trainer reporting to MLflow and W&B (offline), console/hf_trainer/ by its printed dicts
(scripts/tracker_logs.py); console/nanogpt/ by nanoGPT's train.py, console/keras/ by Keras 3, and
console/epoch/ and console/keyvalue/ by a plain PyTorch loop (scripts/console_logs.py). None of those
tools is needed here: the readers read the files directly.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, cli
from trainlab.doctor import diagnose
from trainlab.doctor.readers import FORMATS, detect, read, read_console
from trainlab.doctor.readers.mlflow_store import read_mlflow
from trainlab.doctor.readers.wandb_run import _decode_wire, _records
from trainlab.errors import TrainlabError

FOREIGN = REPO / "tests" / "fixtures" / "doctor" / "foreign"
CASES = ("healthy", "lr_too_high", "lr_too_low", "nan")
CONSOLE_TOOLS = ("nanogpt", "keras", "hf_trainer", "epoch", "keyvalue")
# (writer, the path its run is read from, relative to foreign/<writer>/<case>/)
WRITERS = [("mlflow", "mlruns"), ("mlflow", "mlflow.db"), ("wandb", "wandb"), ("wandb", "history.csv")] + [
    (f"console/{tool}", "train.log") for tool in CONSOLE_TOOLS]


def _path(writer: str, case: str, name: str) -> Path:
    return FOREIGN / writer / case / name


# the first finding each induced pathology should get (lr_x30, nanoGPT at 30x its lr, is a subtler case the
# doctor misses from a loss-only log: kept for the corpus, not asserted here)
EXPECTED = {"healthy": None, "lr_too_high": "lr_too_high", "lr_too_low": "lr_too_low", "nan": "diverged",
            "lr_far_no_clip": "lr_too_high"}
RUNS = [(w, n, case.name) for w, n in WRITERS for case in sorted((FOREIGN / w).iterdir()) if case.name in EXPECTED]


def test_every_writer_has_the_cases():
    for writer, _ in WRITERS:
        assert {"healthy", "lr_too_high", "lr_too_low", "nan"} <= {p.name for p in (FOREIGN / writer).iterdir()}, writer


# the loop's key=value log at lr 0.09 (9x the range's top) shows only gradient-norm spikes that the
# validation loss did not pay for: the lr is named first, at medium (likely, not shown)
SEVERITY = {("console/keyvalue", "lr_too_high"): "medium"}
# these logs state neither the update size nor the model's vocabulary, so a slow fall at a low lr could as well
# be a fine-tune: the lr is named first, at medium, saying what would tell
SEVERITY.update({(writer, "lr_too_low"): "medium" for writer, _ in WRITERS})


@pytest.mark.parametrize("writer,name,case", RUNS)
def test_foreign_runs_are_diagnosed(writer, name, case):
    """Healthy: nothing high. The induced pathology is the first finding (a run driven to NaN: diverged,
    or the lr that caused it with diverged in its explains). Advice in the run's own words."""
    diag = diagnose(_path(writer, case, name))
    ids = [(f.id, f.severity) for f in diag.findings]
    assert diag.series.source == writer.split("/")[0]
    if case == "healthy":
        assert not [f for f in diag.findings if f.severity == "high"], ids
    elif case == "nan":
        first = diag.findings[0]
        assert first.id == "diverged" or (first.id == "lr_too_high" and "diverged" in first.explains), ids
    else:
        assert diag.findings and diag.findings[0].id == EXPECTED[case], ids
        assert diag.findings[0].severity == SEVERITY.get((writer, case), "high")
    assert all(not f.suggested_overrides for f in diag.findings)
    text = " ".join(f.evidence for f in diag.findings)
    assert "0 to 0" not in text and "ended at loss 0." not in text


@pytest.mark.parametrize("writer,name", WRITERS)
def test_detected_format(writer, name):
    path = _path(writer, "healthy", name)
    assert detect(path) == writer.split("/")[0]
    assert read(path, writer.split("/")[0]).source == writer.split("/")[0]


def test_mlflow_file_and_sqlite_stores_hold_the_same_run():
    for case in CASES:
        a, b = read_mlflow(_path("mlflow", case, "mlruns"), client=False), read_mlflow(
            _path("mlflow", case, "mlflow.db"), client=False)
        for key, split in (("loss", "train"), ("lr", "train"), ("grad_norm", "train"), ("loss", "val")):
            (sa, va), (sb, vb) = a.col(key, split, finite=False), b.col(key, split, finite=False)
            assert list(sa) == list(sb) and np.array_equal(va, vb, equal_nan=True), (case, key)
        assert a.fact("weight_decay") == b.fact("weight_decay") == 0.1  # from the Trainer's logged params
        assert a.fact("grad_clip") == b.fact("grad_clip")
    healthy = read_mlflow(_path("mlflow", "healthy", "mlruns"), client=False)
    assert healthy.fact("peak_lr") == pytest.approx(3e-3, rel=1e-2) and healthy.fact("warmup_steps") > 0
    assert len(healthy.col("loss")[0]) >= 30 and len(healthy.col("loss", "val")[0]) >= 5


def test_mlflow_sqlite_nan_is_read_back():
    """The SQLite store keeps NaN as is_nan with a value of 0: read back as NaN, not a loss of 0."""
    s = read_mlflow(_path("mlflow", "nan", "mlflow.db"), client=False)
    _, grad = s.col("grad_norm", finite=False)
    _, loss = s.col("loss", finite=False)
    assert np.isnan(grad).any() or np.isnan(loss).any()
    assert not (loss == 0).any()


def test_mlflow_client_reads_what_the_store_holds(tmp_path, monkeypatch):
    """With mlflow installed: a store it writes reads the same through its client and directly, and reading
    it writes nothing, neither in the store nor in the working directory."""
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("t")).info.run_id
    client.log_param(run, "learning_rate", "0.001")
    for step, loss in enumerate([4.0, 3.5, math.nan, 3.0, math.inf, 2.5]):
        client.log_metric(run, "train/loss", loss, step=step)
    client.log_metric(run, "eval/loss", 3.1, step=5)
    store, cwd = tmp_path / "mlflow.db", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = (store.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir()))
    via_client, direct = read_mlflow(store), read_mlflow(store, client=False)
    assert (store.stat().st_mtime_ns, sorted(p.name for p in tmp_path.iterdir())) == before
    assert not any(cwd.iterdir())
    for s in (via_client, direct):
        steps, loss = s.col("loss", finite=False)
        assert list(steps) == list(range(6)) and np.isnan(loss[2]) and loss[4] == math.inf and loss[5] == 2.5
        assert s.fact("peak_lr") == 0.001 and s.col("loss", "val")[1].tolist() == [3.1]


def test_wandb_records_decode_as_wandb_decodes_them():
    """The small wire decoder agrees with wandb's own message classes on every record (when installed)."""
    pytest.importorskip("wandb")
    from trainlab.doctor.readers.wandb_run import _decode

    (run,) = (FOREIGN / "wandb" / "healthy" / "wandb").glob("*/run-*.wandb")
    records = list(_records(run))
    assert len(records) > 40
    for record in records:
        assert _decode_wire(record) == _decode(record)


def test_wandb_run_and_its_exported_history_agree():
    for case in CASES:
        a, b = read(_path("wandb", case, "wandb")), read(_path("wandb", case, "history.csv"))
        for key, split in (("loss", "train"), ("lr", "train"), ("loss", "val")):
            (sa, va), (sb, vb) = a.col(key, split, finite=False), b.col(key, split, finite=False)
            assert list(sa) == list(sb) and np.allclose(va, vb, equal_nan=True), (case, key)
    s = read(_path("wandb", "healthy", "wandb"))
    assert s.fact("weight_decay") == 0.1 and s.fact("peak_lr") == pytest.approx(3e-3, rel=1e-2)
    assert s.col("loss")[0][0] == 5  # the Trainer's global step, not wandb's count of log calls


def test_a_wandb_file_cut_short_reads_up_to_the_cut(tmp_path):
    (run,) = (FOREIGN / "wandb" / "healthy" / "wandb").glob("*/run-*.wandb")
    whole = read(run.parent)
    cut = tmp_path / "offline-run-x" / run.name
    cut.parent.mkdir()
    data = run.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])  # a crash in the middle of a record
    part = read(cut.parent)
    n = len(part.col("loss")[0])
    assert 0 < n < len(whole.col("loss")[0])
    assert list(part.col("loss")[1]) == list(whole.col("loss")[1][:n])


def test_console_settings_are_taken_from_the_log_or_said_missing():
    nano = read(_path("console/nanogpt", "lr_too_high", "train.log"))
    assert nano.fact("console_style") == "nanogpt"
    assert nano.fact("peak_lr") == 0.1  # "Overriding: learning_rate = 0.1" beats the config file's 1e-3
    assert nano.fact("warmup_steps") == 40 and nano.fact("max_steps") == 400
    assert any("gradient clipping" in n for n in nano.notes)  # nanoGPT's default is not printed
    nan = read(_path("console/nanogpt", "nan", "train.log"))
    assert nan.fact("grad_clip") == 0 and nan.fact("schedule") == "constant" and nan.fact("warmup_steps") == 0
    keras = read(_path("console/keras", "healthy", "train.log"))
    steps, _ = keras.col("loss")
    assert keras.fact("console_style") == "keras" and list(steps[:3]) == [10, 20, 30]  # 10 batches an epoch
    assert keras.has("lr") and any("epochs, not steps" in n for n in keras.notes)  # its scheduler prints the rate
    assert any("gradient clipping" in n for n in keras.notes)  # clipnorm is not printed
    hf = read(_path("console/hf_trainer", "healthy", "train.log"))
    assert hf.fact("console_style") == "hf_trainer" and any("summary's 199 optimizer steps" in n for n in hf.notes)
    # its dicts carry fractional epochs: the summary's runtime x steps/s (1595 x 0.125) makes them steps, on
    # the grid of its logging interval (5) and evaluations (25) as the Trainer ran them
    assert list(hf.col("loss")[0][:3]) == [5, 10, 15] and hf.col("loss")[0][-1] == 200
    assert list(hf.col("loss", "val")[0][:2]) == [25, 50]
    epoch = read(_path("console/epoch", "healthy", "train.log"))
    assert len(epoch.col("loss")[0]) == 30 and len(epoch.col("loss", "val")[0]) == 30 and epoch.has("lr")
    kv = read(_path("console/keyvalue", "healthy", "train.log"))
    assert kv.has("grad_norm") and kv.fact("grad_clip") == 1.0 and kv.fact("schedule") == "onecycle"


@pytest.mark.parametrize("text,rows", [
    ("iter 0: loss 4.1994, time 153.13ms, mfu -100.00%\nstep 50: train loss 3.1, val loss 3.2\n",
     {"train": [(0, 4.1994)], "val": [(50, 3.2)]}),
    ("Epoch 1/2\n10/10 - 1s - 50ms/step - loss: 3.9000 - val_loss: 3.5000\nEpoch 2/2\n"
     "10/10 - 0s - 20ms/step - loss: nan - val_loss: nan\n", {"train": [(10, 3.9), (20, math.nan)],
                                                              "val": [(10, 3.5), (20, math.nan)]}),
    ("{'loss': '0.0', 'grad_norm': 'nan', 'learning_rate': '0.001', 'epoch': '0.5'}\n"
     "{'loss': '2.5', 'grad_norm': '1.0', 'learning_rate': '0.001', 'epoch': '1.0'}\n",
     {"train": [(1, math.nan), (2, 2.5)], "val": []}),  # the Trainer's masked 0.0 with a NaN gradient norm
    ("Epoch 3/30 | Train Loss: 0.4100 | Val Loss: 0.4400 | LR: 0.000200 | time: 380.2s\n",
     {"train": [(3, 0.41)], "val": [(3, 0.44)]}),
    ("lr = 0.001\nstep=10 epoch=1 loss=2.31 lr=1.0e-03 grad_norm=0.52\nstep: 20, loss: inf\n",
     {"train": [(10, 2.31), (20, math.inf)], "val": []}),
    ("step 2 | loss 4.2852 | lr 2.000e-03 | grad_norm 1.4156\nstep 20 | loss nan | lr 2.000e-02 | grad_norm nan\n"
     "step 20 | val_loss 3.2150\n", {"train": [(2, 4.2852), (20, math.nan)], "val": [(20, 3.215)]}),  # `| key value |`
    # a tqdm bar (a custom loop's, or Lightning's): the batch counted on from the epochs before it; a value the
    # bar repeats is not read again, except at the epoch's last batch, whose final update carries its evaluation
    ("Epoch 0:  50%|#####     | 1/2 [00:00<00:00, 5.0it/s, train_loss=3.000]\r"
     "Epoch 0: 100%|##########| 2/2 [00:00<00:00, 5.0it/s, train_loss=3.000]\r"
     "Epoch 0: 100%|##########| 2/2 [00:01<00:00, 2.0it/s, train_loss=2.900, val_loss=3.100]\n"
     "Epoch 1:  50%|#####     | 1/2 [00:00<00:00, 5.0it/s, train_loss=2.800, val_loss=3.100]\n",
     {"train": [(1, 3.0), (2, 2.9), (3, 2.8)], "val": [(2, 3.1)]}),
    ("  5%|5         | 50/1000 [00:10<03:10, 5.00it/s, loss=2.31]\n", {"train": [(50, 2.31)], "val": []}),
    # fairseq's lines: the update count is the step; a `valid` line's unprefixed loss is the evaluation's
    ("2024-01-01 10:00:01 | INFO | train_inner | epoch 001:    100 / 400 loss=9.812, ppl=898.1, num_updates=100, "
     "lr=0.0005, gnorm=1.234\n2024-01-01 10:00:03 | INFO | valid | epoch 001 | valid on 'valid' subset | "
     "loss 8.1 | ppl 274.4 | num_updates 400\n", {"train": [(100, 9.812)], "val": [(400, 8.1)]}),
    ("Validation: step=20 loss=3.2\nstep=20 train_loss=3.1 eval_loss=3.3\n",
     {"train": [(20, 3.1)], "val": [(20, 3.3)]}),
])
def test_console_lines(tmp_path, text, rows):
    log = tmp_path / "train.log"
    log.write_text(text)
    s = read_console(log)
    for split, expected in rows.items():
        steps, values = s.col("loss", split, finite=False)
        assert list(steps) == [e[0] for e in expected]
        assert np.allclose(values, [e[1] for e in expected], equal_nan=True)


def test_lightning_console_progress_bars_are_read_by_batch():
    """Lightning's own console (scripts/console_logs.py): model summary, warnings, and tqdm bars with carriage
    returns, 15 epochs of 20 batches, evaluated after each epoch."""
    for case in ("healthy", "lr_too_high", "lr_too_low"):
        s = read(_path("console/lightning", case, "train.log"))
        steps, _ = s.col("loss")
        val_steps, _ = s.col("loss", "val")
        assert s.fact("console_style") == "tqdm" and steps[0] == 1 and steps[-1] <= 300 and len(steps) > 200
        assert list(val_steps) == list(range(20, 301, 20))
        assert any("learning rate" in n for n in s.notes)  # Lightning prints no rate: said, not guessed
    # a loss-only log: the lr x30 and x0.01 runs are missed (a smooth curve that ends higher; no stated rate),
    # the healthy run gets nothing high
    assert not [f for f in diagnose(_path("console/lightning", "healthy", "train.log"), check_data=False).findings
                if f.severity == "high"]


def test_unreadable_input_is_one_line_naming_the_formats(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("a diary of my run\nit went well\n")
    with pytest.raises(TrainlabError, match="known formats: " + ", ".join(FORMATS)):
        read(junk)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\x00\x01" * 100)
    proc = cli("doctor", str(blob), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and ", ".join(FORMATS) in proc.stderr
    proc = cli("doctor", str(FOREIGN / "hf" / "healthy" / "trainer_state.json"), "--format", "mlflow", check=False)
    assert proc.returncode == 2 and "MLflow" in proc.stderr and ", ".join(FORMATS) in proc.stderr


def test_format_forces_the_reader(tmp_path):
    log = tmp_path / "run.json"  # a console log whose name says JSON: detection guesses wrong, --format reads it
    shutil.copy(_path("console/keyvalue", "healthy", "train.log"), log)
    with pytest.raises(TrainlabError):
        read(log)
    assert read(log, "console").source == "console"
    with pytest.raises(TrainlabError, match="the known formats are"):
        read(log, "csv")


def test_a_store_with_several_runs_is_read_at_its_newest(tmp_path):
    store = tmp_path / "mlruns"
    for case in ("healthy", "lr_too_high"):
        for exp in (FOREIGN / "mlflow" / case / "mlruns").iterdir():
            shutil.copytree(exp, store / f"{case}-{exp.name}")
    s = read(store)
    newest = max(("healthy", "lr_too_high"), key=_start)
    assert s.fact("peak_lr") == read(_path("mlflow", newest, "mlruns")).fact("peak_lr")
    assert any("holds 2 runs" in n for n in s.notes)


def _start(case: str) -> int:
    import yaml

    (meta,) = (FOREIGN / "mlflow" / case / "mlruns").glob("*/*/meta.yaml")
    return yaml.safe_load(meta.read_text())["start_time"]


def test_a_wandb_chart_export_reads_its_run_columns(tmp_path):
    """A chart's CSV export: `Step` and `<run> - <metric>` columns, with __MIN/__MAX beside each."""
    path = tmp_path / "wandb_export.csv"
    path.write_text('"Step","run-a - train/loss","run-a - train/loss__MIN","run-a - train/loss__MAX","run-a - eval/loss"\n'
                    '"5","4.3","4.2","4.4",""\n"10","3.9","3.8","4.0","3.95"\n"15","NaN","NaN","NaN",""\n')
    assert detect(path) == "wandb"
    s = read(path)
    steps, loss = s.col("loss", finite=False)
    assert list(steps) == [5, 10, 15] and loss[:2].tolist() == [4.3, 3.9] and math.isnan(loss[2])
    assert s.col("loss", "val")[1].tolist() == [3.95]


def test_the_names_other_loops_give_the_same_curves_read_the_same(tmp_path):
    """A plain PyTorch loop's real TensorBoard run (corpus case pt-char-cosine) written again under the names
    PyTorch's TensorBoard tutorial uses (the split last: 'Loss/train'; SummaryWriter.add_scalars, which puts
    each split in a folder of its own under one tag), and as Lightning's CSVLogger writes metrics logged with
    on_step and on_epoch (train_loss_step beside train_loss_epoch, val_loss_step beside val_loss_epoch, and
    grad_norm(module, 2)'s grad_2.0_norm_total): the same curves, the same diagnosis."""
    from torch.utils.tensorboard import SummaryWriter

    base = read(REPO / "tests" / "fixtures" / "doctor" / "corpus" / "pt-char-cosine" / "tb")
    assert {"loss", "lr", "grad_norm"} <= set(base.train[0]) and base.val
    want = {k: base.col(*k) for k in [("loss",), ("loss", "val"), ("lr",), ("grad_norm",)]}
    expect = [(f.id, f.severity) for f in diagnose(base.path).findings]

    tutorial, scalars = tmp_path / "tutorial", tmp_path / "scalars"
    for folder, grouped in ((tutorial, False), (scalars, True)):
        w = SummaryWriter(str(folder))
        for r in base.train:
            if grouped:
                w.add_scalars("Loss", {"train": r["loss"]}, r["step"])
            else:
                w.add_scalar("Loss/train", r["loss"], r["step"])
            w.add_scalar("Learning rate", r["lr"], r["step"])  # one word in ALIASES' spelling, with a space
            w.add_scalar("Gradient norm/train", r["grad_norm"], r["step"])
        for r in base.val:
            if grouped:
                w.add_scalars("Loss", {"test": r["loss"]}, r["step"])
            else:
                w.add_scalar("Loss/test", r["loss"], r["step"])
        w.close()

    csv_dir = tmp_path / "lightning"
    csv_dir.mkdir()
    lines = ["epoch,step,train_loss_step,train_loss_epoch,val_loss_step,val_loss_epoch,lr-AdamW,grad_2.0_norm_total"]
    for r in base.train:  # a training row, then the epoch's mean (a wrong curve, were it read)
        lines.append(f"0,{r['step']},{r['loss']!r},,,,{r['lr']!r},{r['grad_norm']!r}")
    for r in base.val:  # two batches of the evaluation, each far from its mean, then the mean
        lines += [f"0,{r['step']},,,{r['loss'] * 3!r},,,", f"0,{r['step']},,,{r['loss'] / 3!r},,,",
                  f"0,{r['step']},,,,{r['loss']!r},,", f"0,{r['step']},,{r['loss'] * 2!r},,,,"]
    (csv_dir / "metrics.csv").write_text("\n".join(lines) + "\n")

    for path in (tutorial, scalars, csv_dir / "metrics.csv"):
        got = read(path)
        for key, (steps, values) in want.items():
            s, v = got.col(*key)
            assert np.array_equal(s, steps) and np.allclose(v, values, rtol=1e-6), (path.name, key)
        assert [(f.id, f.severity) for f in diagnose(path).findings] == expect, path.name


def test_tensorboard_split_folders_with_one_tag_read_as_train_and_validation(tmp_path):
    """Two SummaryWriters, one in train/ and one in validation/, logging the same tag (the layout of Keras'
    TensorBoard callback, whose tags are epoch_loss and epoch_learning_rate): the folder is the split. The
    values are pt-char-cosine's real curves."""
    from torch.utils.tensorboard import SummaryWriter

    base = read(REPO / "tests" / "fixtures" / "doctor" / "corpus" / "pt-char-cosine" / "tb")
    train, val = SummaryWriter(str(tmp_path / "train")), SummaryWriter(str(tmp_path / "validation"))
    for r in base.train:
        train.add_scalar("epoch_loss", r["loss"], r["step"])
        train.add_scalar("epoch_learning_rate", r["lr"], r["step"])
    for r in base.val:
        val.add_scalar("epoch_loss", r["loss"], r["step"])
    train.close(), val.close()
    got = read(tmp_path)
    for key in [("loss",), ("loss", "val"), ("lr",)]:
        (s, v), (ws, wv) = got.col(*key), base.col(*key)
        assert np.array_equal(s, ws) and np.allclose(v, wv, rtol=1e-6), key


def test_a_tensorboard_folder_of_several_runs_is_read_at_its_newest(tmp_path):
    """Two runs under runs/ (the Trainer starts a runs/<date>/ folder each time, and add_scalars puts folders
    under its writer's): the newest run is read, with its own add_scalars folders, and a note says so; before,
    the curves of both were merged into one."""
    import os

    from torch.utils.tensorboard import SummaryWriter

    base = read(REPO / "tests" / "fixtures" / "doctor" / "corpus" / "pt-char-cosine" / "tb")
    for name, scale, when in (("old", 2.0, 1_000_000_000), ("new", 1.0, 1_100_000_000)):
        w = SummaryWriter(str(tmp_path / "runs" / name))
        for r in base.train:
            w.add_scalar("train/loss", r["loss"] * scale, r["step"])
        for r in base.val:
            w.add_scalars("Loss", {"val": r["loss"] * scale}, r["step"])
        w.close()
        for f in (tmp_path / "runs" / name).rglob("events.out.tfevents.*"):
            os.utime(f, (when, when))
    got = read(tmp_path)
    for key in [("loss",), ("loss", "val")]:
        (s, v), (ws, wv) = got.col(*key), base.col(*key)
        assert np.array_equal(s, ws) and np.allclose(v, wv, rtol=1e-6), key
    assert any("holds 2 TensorBoard runs; read the newest" in n for n in got.notes)


def test_epoch_means_are_the_training_curve_where_no_step_values_were_logged(tmp_path):
    """Lightning logs `train_loss_step` only every log_every_n_steps (50) batches: a run with fewer batches an epoch
    logs no step values at all, only `train_loss_epoch` beside `val_loss`. Those means are then the curve (as
    CSVLogger and TensorBoardLogger write them), so the doctor still sees training fall while validation rises.
    The values are pl-char-data-2.5k's real curves (an overfitting run), the training loss averaged per
    evaluation interval."""
    from torch.utils.tensorboard import SummaryWriter

    base = read(REPO / "tests" / "fixtures" / "doctor" / "corpus" / "pl-char-data-2.5k" / "metrics.csv")
    (tsteps, tloss), (vsteps, vloss) = base.col("loss"), base.col("loss", "val")
    means = [float(tloss[(tsteps > lo) & (tsteps <= hi)].mean()) for lo, hi in zip([0, *vsteps[:-1]], vsteps)]
    csv_dir, tb_dir = tmp_path / "csv", tmp_path / "tb"
    csv_dir.mkdir()
    lines = ["epoch,step,train_loss_epoch,val_loss"]
    writer = SummaryWriter(str(tb_dir))
    for epoch, (step, mean, val) in enumerate(zip(vsteps.tolist(), means, vloss.tolist())):
        lines += [f"{epoch},{step},,{val!r}", f"{epoch},{step},{mean!r},"]
        writer.add_scalar("train_loss_epoch", mean, step)
        writer.add_scalar("val_loss", val, step)
    writer.close()
    (csv_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
    for path in (csv_dir / "metrics.csv", tb_dir):
        s, v = read(path).col("loss")
        assert np.array_equal(s, vsteps) and np.allclose(v, means), path.name
        assert diagnose(path).findings[0].id == "overfitting", path.name
    # Keras' CSVLogger: one row an epoch, counted from 0, and no step column; read one step per epoch done
    keras = tmp_path / "training.log"
    keras.write_text("epoch,learning_rate,loss,val_loss\n" + "".join(
        f"{epoch},0.001,{mean!r},{val!r}\n" for epoch, (mean, val) in enumerate(zip(means, vloss.tolist()))))
    series = read(keras, "lightning")
    assert np.array_equal(series.col("loss")[0], np.arange(1, len(means) + 1))
    assert np.allclose(series.col("loss", "val")[1], vloss) and series.fact("peak_lr") == pytest.approx(0.001)
    diag = diagnose(keras, fmt="lightning")
    assert diag.findings[0].id == "overfitting" and any("its epochs are read as steps" in n for n in diag.notes)


def test_a_lightning_logs_folder_is_read_at_its_newest_version(tmp_path):
    """Lightning's CSVLogger writes lightning_logs/version_N/metrics.csv, one version per start: the folder (or
    the project folder above it) is read at the newest and says so; one version is read without a note."""
    import os

    src = REPO / "tests" / "fixtures" / "doctor" / "foreign" / "lightning"
    logs = tmp_path / "project" / "lightning_logs"
    for version, case, when in ((0, "lr_too_high", 1_000_000), (1, "healthy", 2_000_000)):
        (logs / f"version_{version}").mkdir(parents=True)
        shutil.copy(src / case / "metrics.csv", logs / f"version_{version}" / "metrics.csv")
        os.utime(logs / f"version_{version}" / "metrics.csv", (when, when))
    for path in (logs, tmp_path / "project"):
        assert detect(path) == "lightning"
        series = read(path)
        assert series.path == logs / "version_1" / "metrics.csv"
        assert any("holds 2 metrics.csv files" in n and "version_1" in n for n in series.notes)
    shutil.rmtree(logs / "version_1")
    series = read(logs)
    assert series.path == logs / "version_0" / "metrics.csv" and not any("metrics.csv files" in n for n in series.notes)
    assert diagnose(logs).findings[0].id == "lr_too_high"


def test_a_trainer_output_dir_of_checkpoints_is_read_at_its_newest(tmp_path):
    """With report_to="none" a Trainer's output_dir holds only checkpoint-N/ folders, each with the
    trainer_state.json of the run so far: the newest is read, and the report says so."""
    import os

    src = REPO / "tests" / "fixtures" / "doctor" / "foreign" / "hf"
    out = tmp_path / "output_dir"
    for step, case, when in ((100, "healthy", 1_000_000), (200, "nan", 2_000_000)):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        shutil.copy(src / case / "trainer_state.json", out / f"checkpoint-{step}" / "trainer_state.json")
        os.utime(out / f"checkpoint-{step}" / "trainer_state.json", (when, when))
    assert detect(out) == "hf_trainer"
    diag = diagnose(out)
    assert diag.series.path == out / "checkpoint-200" / "trainer_state.json"
    direct = diagnose(out / "checkpoint-200" / "trainer_state.json")
    assert [f.id for f in diag.findings] == [f.id for f in direct.findings] and diag.findings[0].severity == "high"
    assert any("holds 2 trainer_state.json files (one per Trainer checkpoint" in n for n in diag.notes)


def test_a_folder_holding_one_trainlab_run_reads_that_run(tmp_path):
    """`trainlab doctor runs` with one run in runs/: that run, read as trainlab (its tb/ events would otherwise
    make the folder read as TensorBoard), and a note naming it; with two, one exit-2 line asks for one."""
    src = REPO / "tests" / "fixtures" / "doctor" / "corpus" / "tl-char-cosine"
    project = tmp_path / "project"
    shutil.copytree(src, project / "runs" / "demo")
    (project / "runs" / "demo" / "tb").mkdir(exist_ok=True)
    (project / "runs" / "demo" / "tb" / "events.out.tfevents.1.host").write_bytes(b"")
    for path in (project, project / "runs"):
        assert detect(path) == "trainlab"
        diag = diagnose(path, check_data=False)
        assert diag.series.path == project / "runs" / "demo" and diag.series.source == "trainlab"
        assert f"'{path}' holds one trainlab run; read '{project / 'runs' / 'demo'}'" in diag.notes
        direct = diagnose(project / "runs" / "demo", check_data=False)
        assert [f.id for f in diag.findings] == [f.id for f in direct.findings]
    shutil.copytree(src, project / "runs" / "other")
    with pytest.raises(TrainlabError, match="holds 2 trainlab runs, not one"):
        detect(project)


def test_a_trainer_log_with_evaluations_only_still_shows_overfitting_and_why_no_training_loss(tmp_path):
    """A run shorter than the Trainer's logging_steps (500 by default) logs no training loss, only its
    evaluations and the end-of-run summary. The validation curve alone (pl-char-data-2.5k's, an overfitting run)
    gives a medium overfitting finding that says it cannot rule out instability, and a note names logging_steps."""
    base = read(REPO / "tests" / "fixtures" / "doctor" / "corpus" / "pl-char-data-2.5k" / "metrics.csv")
    vsteps, vloss = base.col("loss", "val")
    last = int(vsteps[-1])
    history = [{"eval_loss": float(v), "step": int(s), "epoch": round(s / last, 2)} for s, v in zip(vsteps, vloss)]
    history.append({"train_loss": 1.2, "train_runtime": 60.0, "step": last, "epoch": 1.0})
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": history, "global_step": last, "max_steps": last, "logging_steps": 500}))
    diag = diagnose(state)
    first = diag.findings[0]
    assert first.id == "overfitting" and first.severity == "medium" and "no training loss" in first.evidence
    assert any(f"logging_steps=500 is more than the run's {last} steps" in n for n in diag.notes)
    # a validation loss that kept falling is no finding
    history = [{"eval_loss": 3.0 - 0.1 * i, "step": 50 * (i + 1)} for i in range(8)]
    state.write_text(json.dumps({"log_history": history, "global_step": 400, "logging_steps": 500}))
    assert not [f for f in diagnose(state).findings if f.id == "overfitting"]


@pytest.mark.parametrize("fmt,header", [("lightning", "step,train_loss,val_loss"), ("wandb", "Step,train/loss,eval/loss")])
def test_ragged_csv_rows_are_read_not_a_traceback(tmp_path, fmt, header):
    """A row with cells beyond the header's (a hand-edited file, a log appended to by a second run) or short of
    it: the extra cells are ignored, a missing cell is a metric not logged on that row."""
    path = tmp_path / "log.csv"
    path.write_text(f"{header}\n1,3.2,3.1\n2,2.9,2.8,extra,7\n3,2.7\n4,2.5,2.6\n")
    series = read(path, fmt)
    assert series.col("loss")[1].tolist() == [3.2, 2.9, 2.7, 2.5]
    assert series.col("loss", "val")[1].tolist() == [3.1, 2.8, 2.6]


def test_damaged_steps_leave_their_rows_out_in_every_reader(tmp_path):
    """A hand-edited or truncated log: a step that is text, a list, inf or too large for an int, a tokens count
    that is not a number. Each such row is left out; the rest is read (these were tracebacks)."""
    src = REPO / "tests" / "fixtures" / "doctor"
    state = json.loads((src / "foreign" / "hf" / "healthy" / "trainer_state.json").read_text())
    n = sum(1 for e in state["log_history"] if "loss" in e and "step" in e)
    for entry, bad in zip([e for e in state["log_history"] if "loss" in e][:3], ("abc", [1], 1e308)):
        entry["step"] = bad
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "trainer_state.json").write_text(json.dumps(state))
    assert len(read(tmp_path / "hf").col("loss")[0]) == n - 3

    lines = (src / "foreign" / "lightning" / "healthy" / "metrics.csv").read_text().splitlines()
    (tmp_path / "pl").mkdir()
    (tmp_path / "pl" / "metrics.csv").write_text("\n".join([lines[0], *lines[1:3], "0,,1e999,2.0,"] + lines[3:]) + "\n")
    assert len(read(tmp_path / "pl").col("loss")[0]) == len(read(src / "foreign" / "lightning" / "healthy").col("loss")[0])

    run = tmp_path / "tl"
    shutil.copytree(src / "corpus" / "tl-char-cosine", run)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    first, second = json.loads(rows[0]), json.loads(rows[1])
    first["step"], second["tokens"] = {"a": 1}, {"a": 1}
    (run / "metrics.jsonl").write_text("\n".join([json.dumps(first), json.dumps(second), *rows[2:]]) + "\n")
    series = read(run)
    assert series.fact("tokens_seen") > 0 and diagnose(run, check_data=False).verdict


def test_a_console_line_with_an_absurd_step_is_left_out(tmp_path):
    """A garbled console line ('step 99999999999999999999') was an OverflowError building the curves."""
    log = _path("console/nanogpt", "healthy", "train.log").read_text().splitlines()
    garbled = tmp_path / "train.log"
    garbled.write_text("\n".join(log[:20] + ["iter 99999999999999999999: loss 2.0000, time 10.00ms"] + log[20:]) + "\n")
    assert len(read(garbled, "console").col("loss")[0]) == len(read(_path("console/nanogpt", "healthy", "train.log"),
                                                                      "console").col("loss")[0])
    assert diagnose(garbled, fmt="console").verdict
