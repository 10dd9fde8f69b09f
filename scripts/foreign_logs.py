"""Make the doctor's foreign-log fixtures with the real libraries: Hugging Face `transformers.Trainer`
(trainer_state.json and TensorBoard events) and Lightning (CSVLogger metrics.csv), each run healthy,
with the learning rate x30 and with it x0.01; and two the doctor once misjudged: a constant learning
rate 50x the usual top of the range with no warmup (`lr_far_no_warmup`: the lr is the cause, not the
missing warmup), and a run driven to NaN without clipping (`nan`: the Trainer's default
logging_nan_inf_filter logs an all-NaN window's loss as 0.0).

The model is a small Llama (transformers' LlamaForCausalLM) on character windows of the bundled
Shakespeare corpus. Needs the tools it drives beside the dev environment:

    .venv/bin/pip install -r scripts/requirements-logs.txt
    .venv/bin/python scripts/foreign_logs.py

Outputs go to tests/fixtures/doctor/foreign/{hf,lightning,tensorboard}/<case>/ (a few minutes on 2 cores);
`finetune` (hf/finetune/) is a healthy fine-tune of the healthy case's pretrained model at the Trainer's
default lr.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from trainlab.data.corpora import get_corpus

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor" / "foreign"
LR = 3e-3
SEQ, BATCH, STEPS, WARMUP = 64, 16, 300, 30
# name: (peak lr, warmup steps, schedule, max grad norm)
CASES = {"healthy": (LR, WARMUP, "cosine", 1.0), "lr_too_high": (LR * 30, WARMUP, "cosine", 1.0),
         "lr_too_low": (LR * 0.01, WARMUP, "cosine", 1.0), "lr_far_no_warmup": (0.5, 0, "constant", 1.0),
         "nan": (20.0, 0, "constant", 0.0)}


def windows():
    text = get_corpus("shakespeare").read_text(encoding="utf-8")
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(0.9 * len(ids))
    return ids[:cut], ids[cut:], len(vocab)


class Windows(torch.utils.data.Dataset):
    def __init__(self, ids: np.ndarray, n: int, seed: int):
        self.ids = ids
        self.starts = np.random.default_rng(seed).integers(0, len(ids) - SEQ - 1, n)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        x = torch.from_numpy(self.ids[self.starts[i]: self.starts[i] + SEQ].copy())
        return {"input_ids": x, "labels": x.clone()}


def llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def hf_run(name: str, case: tuple, train, val, vocab: int, work: Path) -> None:
    from transformers import Trainer, TrainingArguments

    lr, warmup, schedule, clip = case
    out = work / f"hf-{name}"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tb")
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=BATCH, learning_rate=lr, warmup_steps=warmup,
                             lr_scheduler_type=schedule, weight_decay=0.1, max_grad_norm=clip, logging_steps=5,
                             eval_strategy="steps", eval_steps=25, save_strategy="no", report_to=["tensorboard"],
                             seed=0, use_cpu=True, dataloader_num_workers=0,
                             disable_tqdm=True)
    trainer = Trainer(model=llama(vocab), args=args, train_dataset=Windows(train, STEPS * BATCH, 0),
                      eval_dataset=Windows(val, 8 * BATCH, 1))
    trainer.train()
    trainer.save_state()
    dest = OUT / "hf" / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "trainer_state.json", dest / "trainer_state.json")
    (dest / "training_args.json").write_text(args.to_json_string())  # the arguments as JSON (never the pickle)
    tb = OUT / "tensorboard" / name
    shutil.rmtree(tb, ignore_errors=True)
    shutil.copytree(out / "tb", tb)


def lightning_lm(make_model, lr: float, warmup: int, schedule: str, steps: int, weight_decay: float):
    """A LightningModule around a transformers causal LM: AdamW, one of the Trainer's schedulers stepped per
    optimizer step, `train_loss` and `val_loss` logged."""
    import lightning as L
    from transformers import get_scheduler

    class LM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make_model()

        def training_step(self, batch, _):
            loss = self.model(**batch).loss
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val_loss", self.model(**batch).loss)

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
            sched = get_scheduler(schedule, opt, num_warmup_steps=warmup, num_training_steps=steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return LM()


def lightning_run(name: str, case: tuple, train, val, vocab: int, work: Path) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    lr, warmup, schedule, clip = case

    L.seed_everything(0)
    logger = CSVLogger(str(work / "lightning"), name=name)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=5,
                        val_check_interval=25, check_val_every_n_epoch=None, limit_val_batches=8,
                        gradient_clip_val=clip or None, callbacks=[LearningRateMonitor("step")], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dl = torch.utils.data.DataLoader
    trainer.fit(lightning_lm(lambda: llama(vocab), lr, warmup, schedule, STEPS, 0.1),
                dl(Windows(train, STEPS * BATCH, 0), batch_size=BATCH),
                dl(Windows(val, 8 * BATCH, 1), batch_size=BATCH))
    dest = OUT / "lightning" / name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(logger.log_dir) / "metrics.csv", dest / "metrics.csv")


def finetune_run(train, val, vocab: int, work: Path) -> None:
    """A healthy fine-tune, as most Trainer runs are: the healthy case's pretraining, saved, then 100 steps at
    the Trainer's default lr (5e-5) on other windows. Its loss starts far below ln(vocab) and falls little, as
    a fine-tune's does; the model's config.json is kept beside trainer_state.json, as a checkpoint holds it."""
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    common = dict(per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, weight_decay=0.1,
                  logging_steps=5, eval_strategy="steps", eval_steps=25, save_strategy="no", report_to=[],
                  seed=0, use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    base = work / "pretrained"
    pre = Trainer(model=llama(vocab), args=TrainingArguments(output_dir=str(base), max_steps=STEPS, learning_rate=LR,
                                                             warmup_steps=WARMUP, lr_scheduler_type="cosine",
                                                             **common),
                  train_dataset=Windows(train, STEPS * BATCH, 0), eval_dataset=Windows(val, 8 * BATCH, 1))
    pre.train()
    pre.save_model(str(base))
    out = work / "finetune"
    args = TrainingArguments(output_dir=str(out), max_steps=100, learning_rate=5e-5, warmup_steps=10,
                             lr_scheduler_type="linear", **common)
    tuned = Trainer(model=LlamaForCausalLM.from_pretrained(str(base)), args=args,
                    train_dataset=Windows(train, 100 * BATCH, 7), eval_dataset=Windows(val, 8 * BATCH, 1))
    tuned.train()
    tuned.save_state()
    tuned.save_model(str(out))
    dest = OUT / "hf" / "finetune"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("trainer_state.json", "config.json"):
        shutil.copy(out / name, dest / name)
    (dest / "training_args.json").write_text(args.to_json_string())


def main() -> None:
    import sys

    torch.set_num_threads(2)
    train, val, vocab = windows()
    work = Path(tempfile.mkdtemp(prefix="trainlab-foreign-"))
    for name in sys.argv[1:] or [*CASES, "finetune"]:  # the cases to (re)make; default all
        if name == "finetune":
            finetune_run(train, val, vocab, work)
            continue
        hf_run(name, CASES[name], train, val, vocab, work)
        lightning_run(name, CASES[name], train, val, vocab, work)
        print(f"{name}: done")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
