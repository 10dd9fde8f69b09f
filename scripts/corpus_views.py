"""Add the doctor's corpus cases of the writers its readers gained: the same runs as the corpus's plain
PyTorch loop and Hugging Face Trainer cases, written again by other real tools from the scalars each run
logged (same metrics, values and steps; no new training).

- `mf-*` (from each `pt-*` case): MLflow's own client logs the run into a file store
  (`mlflow.log_metrics(..., step=)`), as a plain loop reporting to MLflow does: `train_loss`, `lr`,
  `grad_norm` and `val_loss`. The fixture keeps the store's meta.yaml files and metrics.
- `wb-*` (from each `pt-*` case): `wandb` offline (`wandb.init(mode="offline")`, `wandb.log({...}, step=)`)
  logs the run's `train/loss`, `train/lr`, `train/grad_norm` and `val/loss`; the fixture keeps the offline
  run directory's `run-<id>.wandb` (not its logs and metadata files, which the doctor does not read).
- `hc-*` (from each `hf-*` case): the Trainer's own console printing: transformers' `ProgressCallback`
  (on_train_begin, then on_log for each entry of the run's `log_history`), stdout and stderr captured
  together as a user's `train.log` holds them (its progress bar included).
- `pc-*` (from each `pt-*` case): the plain loop's print lines. This is the plain loop's print format,
  replayed from its logged scalars (the loop itself wrote TensorBoard); a script that prints its metrics
  would print them so:

      step 40 | loss 2.3100 | lr 1.000e-02 | grad_norm 0.8400     (every logged step; PLAIN_TRAIN)
      step 40 | val_loss 2.4000                                    (every evaluation; PLAIN_VAL)

Each new case's label.json is its source case's label (labels come from the run's outcomes, which are
the same), with case, writer, read and note updated, and the split of the source case: the fixed rule
(scripts/doctor_eval.py split_of) applied to the source's name, so that the same run is never in both
halves (fitting on one copy would be fitting on the other). The runs come from scripts/doctor_corpus.py's cache
(~/.cache/trainlab/doctor-corpus/runs/<run_key>/); a case whose run is not cached is skipped.

    .venv/bin/pip install -r scripts/requirements-logs.txt
    nice -n 10 .venv/bin/python scripts/corpus_views.py [--only CASE ...] [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doctor_corpus import OUT, SEEDS, WORK, cases, run_key  # noqa: E402
from doctor_eval import split_of  # noqa: E402

PLAIN_TRAIN = "step {step} | loss {loss:.4f} | lr {lr:.3e} | grad_norm {grad_norm:.4f}"
PLAIN_VAL = "step {step} | val_loss {val_loss:.4f}"
# the Trainer logs these first, in this order, and the epoch last
FIRST_KEYS = {"loss": 0, "grad_norm": 1, "learning_rate": 2, "eval_loss": 0}
# prefix of the new case -> (source writer, what the case is, how the doctor is pointed at it)
VIEWS = {"mf": ("plain", "mlflow", "mlruns"), "wb": ("plain", "wandb", "wandb"),
         "pc": ("plain", "plain_console", "train.log"), "hc": ("hf", "hf_console", "train.log")}
TOOL = {"mlflow": "MLflow's client (file store, log_metrics with the step)",
        "wandb": "wandb offline (wandb.log with the step)",
        "plain_console": "the plain loop's print lines (format in scripts/corpus_views.py)",
        "hf_console": "transformers' ProgressCallback printing each log_history entry"}


def tb_scalars(tb: Path) -> dict[int, dict[str, float]]:
    """The plain loop's TensorBoard scalars: {step: {tag: value}} in step order."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    rows: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            # TensorBoard keeps float32: each value as the shortest decimal of that float32
            shortest = repr(np.float32(ev.value)).removeprefix("np.float32(").rstrip(")")
            rows.setdefault(int(ev.step), {})[tag] = float(shortest)
    return dict(sorted(rows.items()))


def write_mlflow(rows: dict, dest: Path, name: str) -> None:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlruns"
        mlflow.set_tracking_uri(store.as_uri())
        mlflow.set_experiment("corpus")
        names = {"train/loss": "train_loss", "train/lr": "lr", "train/grad_norm": "grad_norm", "val/loss": "val_loss"}
        with mlflow.start_run(run_name=name):
            for step, row in rows.items():
                mlflow.log_metrics({names[k]: v for k, v in row.items()}, step=step, synchronous=True)
        (run,) = [m.parent for m in store.glob("*/*/meta.yaml") if (m.parent / "metrics").is_dir()]
        target = dest / "mlruns" / run.parent.name / run.name
        shutil.copytree(run / "metrics", target / "metrics")
        shutil.copy(run.parent / "meta.yaml", target.parent / "meta.yaml")
        shutil.copy(run / "meta.yaml", target / "meta.yaml")
        for meta in (target.parent / "meta.yaml", target / "meta.yaml"):  # this machine's temporary path
            meta.write_text(meta.read_text().replace(store.as_uri(), "file:///mlruns").replace(str(store), "/mlruns"))


def write_wandb(rows: dict, dest: Path, name: str) -> None:
    import wandb

    with tempfile.TemporaryDirectory() as tmp:
        run = wandb.init(mode="offline", dir=tmp, project="corpus", name=name, reinit="finish_previous",
                         settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True, console="off",
                                                 silent=True, save_code=False))
        for step, row in rows.items():
            wandb.log(row, step=step)
        run.finish()
        wandb.teardown()  # finish() can return before wandb's service has written the file's last blocks
        (offline,) = sorted((Path(tmp) / "wandb").glob("offline-run-*"))
        (wfile,) = offline.glob("run-*.wandb")
        from trainlab.doctor.readers.wandb_run import _decode, _records

        kept = sum(_decode(r)[0] == "history" for r in _records(wfile))
        assert kept == len(rows), f"{name}: the .wandb file holds {kept} of {len(rows)} history rows"
        (dest / "wandb" / offline.name).mkdir(parents=True)
        shutil.copy(wfile, dest / "wandb" / offline.name / wfile.name)


def write_plain_console(rows: dict, dest: Path) -> None:
    lines = []
    for step, row in rows.items():
        if "train/loss" in row:
            lines.append(PLAIN_TRAIN.format(step=step, loss=row["train/loss"], lr=row["train/lr"],
                                            grad_norm=row["train/grad_norm"]))
        if "val/loss" in row:
            lines.append(PLAIN_VAL.format(step=step, val_loss=row["val/loss"]))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.log").write_text("\n".join(lines) + "\n")


def write_hf_console(state: dict, dest: Path) -> None:
    """What the Trainer's ProgressCallback prints to stdout for the run's log_history (its progress bar goes
    to stderr, which `python train.py > train.log` leaves on the terminal): each entry as the logs dict it
    was, in the Trainer's key order (trainer_state.json sorts the keys, and adds `step`)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import ProgressCallback

    args = TrainingArguments(output_dir=str(dest / "out"), max_steps=state["max_steps"], use_cpu=True,
                             report_to=[], logging_steps=state.get("logging_steps", 2))
    st = TrainerState(max_steps=state["max_steps"], logging_steps=state.get("logging_steps", 2),
                      eval_steps=state.get("eval_steps"))
    control, cb, out = TrainerControl(), ProgressCallback(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        cb.on_train_begin(args, st, control)
        for entry in state["log_history"]:
            logs = {k: entry[k] for k in sorted(entry, key=lambda k: (k == "epoch", FIRST_KEYS.get(k, 9)))
                    if k != "step"}
            st.global_step = entry["step"]
            cb.on_step_end(args, st, control)
            cb.on_log(args, st, control, logs=logs)
        cb.on_train_end(args, st, control)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.log").write_text(out.getvalue())


def make(src_name: str, spec: dict, prefix: str, force: bool) -> str | None:
    writer_src, writer, read = VIEWS[prefix]
    name = f"{prefix}-{src_name.split('-', 1)[1]}"
    if (OUT / name / "label.json").exists() and not force:
        return None
    home = WORK / "runs" / run_key(spec, SEEDS[0])
    src_label = OUT / src_name / "label.json"
    if not (home / "result.json").exists() or not src_label.exists():
        print(f"{name}: source run not cached; skipped")
        return None
    tmp = OUT / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if writer_src == "plain":
        rows = tb_scalars(home / "tb")
        {"mlflow": lambda: write_mlflow(rows, tmp, name), "wandb": lambda: write_wandb(rows, tmp, name),
         "plain_console": lambda: write_plain_console(rows, tmp)}[writer]()
    else:
        state = json.loads((home / "trainer_state.json").read_text())
        write_hf_console(state, tmp)
        shutil.rmtree(tmp / "out", ignore_errors=True)
    lab = json.loads(src_label.read_text())
    lab.update(case=name, split=split_of(src_name), writer=writer, read=read, source_case=src_name,
               note=f"The run of case {src_name} (seed {SEEDS[0]}), written by {TOOL[writer]}, replayed from the "
                    f"same run's logged scalars; its label is {src_name}'s. " + lab["note"])
    (tmp / "label.json").write_text(json.dumps(lab, indent=1) + "\n")
    shutil.rmtree(OUT / name, ignore_errors=True)
    tmp.rename(OUT / name)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="new case names (default: all)")
    parser.add_argument("--force", action="store_true", help="rewrite case directories that exist")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    made = 0
    for src_name, spec, _ in cases():
        for prefix, (writer_src, _, _) in VIEWS.items():
            name = f"{prefix}-{src_name.split('-', 1)[1]}"
            if spec["writer"] != writer_src or (args.only and name not in args.only):
                continue
            if make(src_name, spec, prefix, args.force):
                made += 1
                print(f"{name} <- {src_name}", flush=True)
    print(f"{made} cases written")


if __name__ == "__main__":
    main()
