"""Make the doctor's fixtures of experiment trackers and of a printed log with the real tools: the Hugging
Face `transformers.Trainer` reporting to MLflow and to Weights & Biases (offline), and its printed log
dicts (`disable_tqdm=True` prints each log as a dict). Each case is one Trainer run on the same small
Llama and Shakespeare windows as scripts/foreign_logs.py: healthy, the learning rate x30, x0.01, and driven
to NaN (lr 20, no clipping).

Outputs, trimmed to what the doctor reads:
    tests/fixtures/doctor/foreign/mlflow/<case>/mlruns/...     the file store (metrics, params, meta.yaml)
    tests/fixtures/doctor/foreign/mlflow/<case>/mlflow.db      the same run copied by the mlflow client into
                                                              the SQLite store (tables the doctor reads)
    tests/fixtures/doctor/foreign/wandb/<case>/wandb/offline-run-*/run-<id>.wandb
    tests/fixtures/doctor/foreign/wandb/<case>/history.csv    its history as the web page exports it
    tests/fixtures/doctor/foreign/console/hf_trainer/<case>/train.log

    .venv/bin/pip install -r scripts/requirements-logs.txt
    .venv/bin/python scripts/tracker_logs.py [case ...]
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foreign_logs import BATCH, LR, WARMUP, Windows, llama, windows  # noqa: E402

from trainlab.doctor.readers.common import SETTINGS, classify  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor" / "foreign"
STEPS = 200
CASES = {"healthy": (LR, WARMUP, "cosine", 1.0), "lr_too_high": (LR * 30, WARMUP, "cosine", 1.0),
         "lr_too_low": (LR * 0.01, WARMUP, "cosine", 1.0), "nan": (20.0, 0, "constant", 0.0)}
# the SQLite store's tables the doctor reads; the others (traces, models, ...) are dropped from the fixture
KEEP = {"runs", "metrics", "params", "experiments", "alembic_version"}


def trainer_run(name: str, case: tuple, work: Path) -> None:
    from transformers import Trainer, TrainingArguments

    lr, warmup, schedule, clip = case
    train, val, vocab = windows()
    run = work / name
    os.environ.update(MLFLOW_TRACKING_URI=(run / "mlruns").as_uri(), MLFLOW_ALLOW_FILE_STORE="true",
                      MLFLOW_EXPERIMENT_NAME="doctor", WANDB_MODE="offline", WANDB_DIR=str(run),
                      WANDB_PROJECT="doctor", WANDB_SILENT="true")
    args = TrainingArguments(output_dir=str(run / "out"), max_steps=STEPS, per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=BATCH, learning_rate=lr, warmup_steps=warmup,
                             lr_scheduler_type=schedule, weight_decay=0.1, max_grad_norm=clip, logging_steps=5,
                             eval_strategy="steps", eval_steps=25, save_strategy="no", report_to=["mlflow", "wandb"],
                             run_name=name, seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=llama(vocab), args=args, train_dataset=Windows(train, STEPS * BATCH, 0),
                      eval_dataset=Windows(val, 8 * BATCH, 1))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train()
    import wandb

    wandb.finish()  # the run's last records reach its .wandb file
    keep_console(name, printed.getvalue())
    keep_mlflow(name, run / "mlruns")
    keep_wandb(name, run)


def keep_console(name: str, text: str) -> None:
    dest = OUT / "console" / "hf_trainer" / name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.log").write_text(text)


def keep_mlflow(name: str, store: Path) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    dest = OUT / "mlflow" / name
    shutil.rmtree(dest, ignore_errors=True)
    runs = [m.parent for m in store.glob("*/*/meta.yaml") if (m.parent / "metrics").is_dir()]
    (run,) = runs
    target = dest / "mlruns" / run.parent.name / run.name
    for metric in (run / "metrics").rglob("*"):  # the metrics the doctor reads (not runtimes, flos, epochs)
        if metric.is_file() and classify(metric.relative_to(run / "metrics").as_posix()):
            (target / "metrics" / metric.relative_to(run / "metrics")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(metric, target / "metrics" / metric.relative_to(run / "metrics"))
    (target / "params").mkdir()
    for param in (run / "params").iterdir():  # the Trainer logs ~150; the fixture keeps the settings read
        if param.name in SETTINGS:
            shutil.copy(param, target / "params" / param.name)
    shutil.copy(run / "meta.yaml", target / "meta.yaml")
    shutil.copy(run.parent / "meta.yaml", target.parent / "meta.yaml")
    # the same run, written into a SQLite store by the client
    src = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    got = src.get_run(run.name)
    db = dest / "mlflow.db"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    new = client.create_run(client.create_experiment("doctor"), run_name=name).info.run_id
    client.log_batch(new, params=[Param(k, v) for k, v in got.data.params.items() if k in SETTINGS])
    for key in filter(classify, got.data.metrics):
        history = src.get_metric_history(run.name, key)
        for i in range(0, len(history), 500):
            client.log_batch(new, metrics=[Metric(m.key, m.value, m.timestamp, m.step) for m in history[i: i + 500]])
    client.set_terminated(new)
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            if table not in KEEP:
                con.execute(f'drop table "{table}"')
    con = sqlite3.connect(db)
    con.execute("pragma page_size = 1024")
    con.execute("vacuum")
    con.close()


def keep_wandb(name: str, root: Path) -> None:
    dest = OUT / "wandb" / name
    shutil.rmtree(dest, ignore_errors=True)
    (run,) = sorted((root / "wandb").glob("offline-run-*"))
    (wfile,) = run.glob("run-*.wandb")
    (dest / "wandb" / run.name).mkdir(parents=True)
    shutil.copy(wfile, dest / "wandb" / run.name / wfile.name)
    # the web page's export of a run's history: one row per step, `_step` and the logged keys
    from trainlab.doctor.readers.wandb_run import _decode, _records

    rows: dict[int, dict] = {}
    for record in _records(wfile):
        kind, body = _decode(record)
        if kind == "history":
            step, items = body
            step = int(items.get("_step", step or 0))
            rows.setdefault(step, {}).update({k: v for k, v in items.items() if not isinstance(v, dict)})
    keys = sorted({k for r in rows.values() for k in r} - {"_step"})
    with open(dest / "history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["_step", *keys])
        for step in sorted(rows):
            w.writerow([step, *(rows[step].get(k, "") for k in keys)])


def main() -> None:
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="trainlab-trackers-"))
    for name in sys.argv[1:] or list(CASES):
        trainer_run(name, CASES[name], work)
        print(f"{name}: done", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
