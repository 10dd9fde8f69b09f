"""A held-out set of other tools' logs the doctor's rules were never developed on: a GPT-2
(transformers' GPT2LMHeadModel, learned positions, GELU) on the UTF-8 bytes of the bundled People's Daily
corpus (Chinese; 256 symbols), trained by the Hugging Face Trainer (trainer_state.json, and its TensorBoard
events) and by Lightning (CSVLogger metrics.csv), with one pathology induced per case. The corpus's runs
(scripts/doctor_corpus.py) are char and BPE Llama-style models on Shakespeare, a regressor and a masked LM.

    .venv/bin/pip install -r scripts/requirements-logs.txt
    .venv/bin/python scripts/peer_holdout.py make [CASE ...]   # about 15 minutes on 2 cores
    .venv/bin/python scripts/peer_holdout.py measure           # the doctor on every log, against its label

Labels are what was induced (`first`: the ids the first finding may be; `healthy`: no high finding), and
each case keeps its final validation loss, so that an induced pathology that did not harm is visible.
Made once, labelled before the doctor saw them, and measured: the rules are not fitted to them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor" / "peer_holdout"
SEQ, BATCH, STEPS, WARMUP, LR = 64, 16, 300, 30, 1e-3
# name: (peak lr, warmup, schedule, max grad norm, steps, training windows or None for fresh ones, first, healthy)
CASES = {
    "healthy-linear": (LR, WARMUP, "linear", 1.0, STEPS, None, (), True),
    "healthy-constant": (LR, WARMUP, "constant_with_warmup", 1.0, STEPS, None, (), True),
    "healthy-cosine-noclip": (LR, WARMUP, "cosine", 0.0, STEPS, None, (), True),
    "lr-30x": (LR * 30, WARMUP, "linear", 1.0, STEPS, None, ("lr_too_high", "diverged"), False),
    "lr-300x-nowarm": (LR * 300, 0, "constant", 1.0, STEPS, None, ("lr_too_high", "diverged"), False),
    "lr-0.01x": (LR * 0.01, WARMUP, "linear", 1.0, STEPS, None, ("lr_too_low",), False),
    "nan-noclip": (50.0, 0, "constant", 0.0, STEPS, None, ("diverged", "lr_too_high"), False),
    "overfit-64-windows": (LR, WARMUP, "constant_with_warmup", 1.0, 600, 64, ("overfitting",), False),
    "short-40-steps": (LR, 4, "linear", 1.0, 40, None, ("undertrained",), False),
}


def byte_windows():
    from trainlab.data.corpora import get_corpus

    ids = np.frombuffer(get_corpus("people-daily").read_text(encoding="utf-8").encode("utf-8"), dtype=np.uint8)
    ids = ids.astype(np.int64)
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:]


class Windows(torch.utils.data.Dataset):
    def __init__(self, ids: np.ndarray, n: int, seed: int, pool: int | None = None):
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(ids) - SEQ - 1, pool or n)
        self.ids, self.starts = ids, np.resize(starts, n)  # a small pool repeats: the run sees it again and again

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        x = torch.from_numpy(self.ids[self.starts[i]: self.starts[i] + SEQ].copy())
        return {"input_ids": x, "labels": x.clone()}


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=SEQ, n_embd=96, n_layer=3, n_head=4,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def hf_run(name: str, case: tuple, train, val, work: Path) -> float:
    from transformers import Trainer, TrainingArguments

    lr, warmup, schedule, clip, steps, pool = case[:6]
    out = work / f"hf-{name}"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=BATCH, learning_rate=lr, warmup_steps=warmup,
                             lr_scheduler_type=schedule, weight_decay=0.01, max_grad_norm=clip, logging_steps=5,
                             eval_strategy="steps", eval_steps=steps // 12 if steps >= 120 else 20,
                             save_strategy="no", report_to=["tensorboard"], seed=0, use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=gpt2(), args=args, train_dataset=Windows(train, steps * BATCH, 0, pool),
                      eval_dataset=Windows(val, 8 * BATCH, 1))
    trainer.train()
    trainer.save_state()
    dest = OUT / "hf" / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "trainer_state.json", dest / "trainer_state.json")
    tb = OUT / "tensorboard" / name
    shutil.rmtree(tb, ignore_errors=True)
    shutil.copytree(out / "tb", tb)
    evals = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    return float(evals[-1]) if evals else float("nan")


def lightning_run(name: str, case: tuple, train, val, work: Path) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    from foreign_logs import lightning_lm  # this folder: the script's own

    lr, warmup, schedule, clip, steps, pool = case[:6]

    L.seed_everything(0)
    logger = CSVLogger(str(work / "lightning"), name=name)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=5,
                        val_check_interval=steps // 12 if steps >= 120 else 20, check_val_every_n_epoch=None,
                        limit_val_batches=8, gradient_clip_val=clip or None, callbacks=[LearningRateMonitor("step")],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    dl = torch.utils.data.DataLoader
    trainer.fit(lightning_lm(gpt2, lr, warmup, schedule, steps, 0.01),
                dl(Windows(train, steps * BATCH, 0, pool), batch_size=BATCH),
                dl(Windows(val, 8 * BATCH, 1), batch_size=BATCH))
    dest = OUT / "lightning" / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(logger.log_dir) / "metrics.csv", dest / "metrics.csv")
    return float(trainer.callback_metrics.get("val_loss", torch.tensor(float("nan"))))


def make(names: list[str]) -> None:
    torch.set_num_threads(2)
    train, val = byte_windows()
    work = Path(tempfile.mkdtemp(prefix="trainlab-peer-"))
    labels_path = OUT / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.is_file() else {}
    for name in names or list(CASES):
        case = CASES[name]
        finals = {"hf": hf_run(name, case, train, val, work), "lightning": lightning_run(name, case, train, val, work)}
        lr, warmup, schedule, clip, steps, pool, first, healthy = case
        labels[name] = {"first": list(first), "healthy": healthy, "final_val_loss": finals,
                        "setup": {"peak_lr": lr, "warmup_steps": warmup, "schedule": schedule, "max_grad_norm": clip,
                                  "steps": steps, "train_windows": pool, "batch": BATCH, "seq": SEQ}}
        labels_path.write_text(json.dumps(labels, indent=1, sort_keys=True))
        print(f"{name}: final val loss {finals}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


def measure() -> int:
    """The doctor on every log against its label; prints one line per log and the totals."""
    from trainlab.doctor import diagnose

    labels = json.loads((OUT / "labels.json").read_text())
    right = first_right = sick = high_healthy = healthy_n = 0
    for name, lab in sorted(labels.items()):
        for tool, rel in (("hf", "trainer_state.json"), ("tensorboard", ""), ("lightning", "metrics.csv")):
            path = OUT / tool / name / rel
            if not path.exists():
                continue
            found = [(f.id, f.severity) for f in diagnose(path, check_data=False).findings]
            high = [i for i, sev in found if sev == "high"]
            if lab["healthy"]:
                ok = not high
                healthy_n += 1
                high_healthy += bool(high)
            else:
                ok = bool(found) and found[0][0] in lab["first"]
                sick += 1
                first_right += ok
            right += ok
            said = ", ".join(f"{i}({sev[0]})" for i, sev in found) or "nothing"
            print(f"{'ok ' if ok else 'MISS'} {tool:11} {name:22} expected {'healthy' if lab['healthy'] else '/'.join(lab['first']):24} said {said}")
    print(f"peer holdout: {right} right; first finding the induced cause on {first_right} of {sick}; "
          f"a high finding on {high_healthy} of {healthy_n} healthy logs")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["make"]:
        make(sys.argv[2:])
    elif sys.argv[1:2] == ["measure"]:
        sys.exit(measure())
    else:
        sys.exit(__doc__)
