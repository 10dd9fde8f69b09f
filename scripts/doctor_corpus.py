"""Make the doctor's labelled corpus: real runs of four writers, each labelled by what happened to it.

Writers: trainlab itself (metrics.jsonl), the Hugging Face Trainer (trainer_state.json, or its TensorBoard
events), Lightning (CSVLogger's metrics.csv, or TensorBoardLogger's events) and a plain PyTorch loop
writing TensorBoard through SummaryWriter. Models: a character LM and a BPE LM (trainlab's GPT, or a
small Llama from transformers), trainlab's masked LM, and an MLP regressor on the hourly BTC candles.
Data: the bundled Shakespeare corpus and btc-1h, through trainlab's data layer.

Labels come from outcomes, not from how a run was set up. Every run is trained on two seeds, and each
case names the alternatives that would fix it ("probes"): the same run with a lower lr, a higher lr, a
warmup, more steps, another activation. A probe's id is *expected* when the alternative reached a lower
final validation loss on each seed by more than the seeds' spread (the larger of the two runs' seed
gaps), and *must_not* when it did not do better on both seeds. Two labels are read off the run itself:
`diverged` (the loss went non-finite and the run never came back, on both seeds) and `overfitting` (on
both seeds, the last validation loss above the best by more than 1% and more than the spread, while the
training loss kept falling). `expected` lists the confirmed ids by the improvement their alternative
gave, largest first: the first is the cause, the change that would have helped most. A case with no
confirmed id is healthy. Each case's label.json holds the figures.

Split rule (fixed before any threshold was changed): a case belongs to the fit half when the first
byte of sha256(case name) is even, else to the measure half. Rules are fitted on the fit half only.
Once the measure half had been measured and reported, a second held-out set (`holdout_cases`, the
`holdout` split) was made and labelled before any rule changed again; from then on both first halves
are for fitting and the holdout set is the one measured.

    .venv/bin/pip install -r scripts/requirements-logs.txt
    nice -n 10 .venv/bin/python scripts/doctor_corpus.py [--only CASE ...] [--writer W] [--list] [--force]

Runs are cached under ~/.cache/trainlab/doctor-corpus (a run already made is not made again), so the
script can be stopped and run again in pieces. Outputs: tests/fixtures/doctor/corpus/<case>/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from doctor_eval import split_of  # the split rule, stated once (scripts/doctor_eval.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "doctor" / "corpus"
WORK = Path(os.environ.get("TRAINLAB_CORPUS_WORK", Path.home() / ".cache" / "trainlab" / "doctor-corpus"))
SEEDS = (0, 1)
# the lr each model trains well at (adamw, 240 steps); the probes measure whether it is right
BASE_LR = {"char": 2e-2, "bpe": 1e-2, "mlm": 1e-2, "reg": 3e-3}
DEFAULTS = dict(lr_x=1.0, warmup=20, sched="cosine", clip=1.0, steps=240, batch=16, data=None, wd=0.1,
                act="relu", depth=2, view="")
OVERFIT_RISE = 0.01  # a rise of the validation loss above its best by this share counts (and by the spread)




# --------------------------------------------------------------------------------------------
# the cases


def _case(name, writer, model, probes, **spec):
    full = dict(DEFAULTS, writer=writer, model=model, **spec)
    return name, full, probes


LR_DOWN = ("lr_too_high", {"lr_f": 1 / 3})
LR_UP = ("lr_too_low", {"lr_f": 3.0})
LONGER = ("undertrained", {"steps_f": 4})
HEALTHY_PROBES = [LR_DOWN, LR_UP]


def cases() -> list[tuple[str, dict, list]]:
    out = []
    views = {"trainlab": [""], "hf": ["state", "tb"], "lightning": ["csv", "tb"], "plain": ["tb"]}
    for writer in ("trainlab", "hf", "lightning", "plain"):
        w = {"trainlab": "tl", "hf": "hf", "lightning": "pl", "plain": "pt"}[writer]
        v = views[writer]

        # a case is named by how its run was made; what it shows is its label's business
        def c(name, model, probes, i=0, **spec):
            out.append(_case(f"{w}-{model}-{name}", writer, model, probes, view=v[i % len(v)], **spec))

        c("cosine", "char", HEALTHY_PROBES, 0)
        c("lr-2.5x", "char", [("lr_too_high", {"lr_f": 0.4})], 1, lr_x=2.5)
        c("lr-10x", "char", [("lr_too_high", {"lr_f": 0.25})], 0, lr_x=10)
        c("lr-10x-noclip-nowarm", "char", [("lr_too_high", {"lr_f": 0.1}), ("no_warmup_instability", {"warmup": 20})],
          1, lr_x=10, clip=0.0, warmup=0, sched="constant")
        c("lr-3x-nowarm", "char", [("lr_too_high", {"lr_f": 1 / 3}), ("no_warmup_instability", {"warmup": 20})],
          0, lr_x=3, warmup=0, sched="constant")
        c("lr-0.3x", "char", [("lr_too_low", {"lr_f": 1 / 0.3})], 1, lr_x=0.3)
        c("lr-0.01x", "char", [("lr_too_low", {"lr_f": 10})], 0, lr_x=0.01)
        c("lr-500x-noclip-nowarm", "char", [("lr_too_high", {"lr_f": 1 / 500})], 1, lr_x=500, clip=0.0, warmup=0, sched="constant")
        if writer != "trainlab":  # NaN from the second step (trainlab's guards skip such steps instead)
            c("lr-5000x-noclip-nowarm", "char", [("lr_too_high", {"lr_f": 1 / 5000})], 0, lr_x=5000, clip=0.0,
              warmup=0, sched="constant")
        c("data-2.5k", "char", [], 0, data=2_500, steps=400)
        c("data-8k", "char", [], 1, data=8_000, steps=400)
        c("40-steps", "char", [LONGER], 0, steps=40, warmup=4)
        c("constant", "char", HEALTHY_PROBES, 1, sched="constant")
        c("wsd", "char", HEALTHY_PROBES, 0, sched="wsd")
        c("onecycle", "char", HEALTHY_PROBES, 1, sched="onecycle", warmup=0)
        if writer in ("trainlab", "hf", "lightning"):
            c("cosine", "bpe", HEALTHY_PROBES, 1)
            c("lr-3x", "bpe", [LR_DOWN], 0, lr_x=3)
            c("lr-0.3x", "bpe", [("lr_too_low", {"lr_f": 1 / 0.3})], 1, lr_x=0.3)
        if writer in ("trainlab", "plain"):
            c("batch-2", "char", HEALTHY_PROBES, 0, batch=2, lr_x=0.3)
            c("clip-0.05", "char", HEALTHY_PROBES + [("clip_too_strict", {"clip": 1.0})], 1, clip=0.05)
        if writer == "trainlab":
            c("cosine", "mlm", HEALTHY_PROBES)
            c("lr-3x", "mlm", [LR_DOWN], lr_x=3)
            c("lr-0.1x", "mlm", [LR_UP], lr_x=0.1)
            c("constant-600-steps", "char", [("plateau", {"sched": "cosine"})], sched="constant", steps=600,
              lr_x=2.5)
        if writer == "plain":
            c("cosine", "reg", HEALTHY_PROBES, depth=3)
            c("sigmoid-10-layers", "reg", [("vanishing_gradients", {"act": "relu"})], depth=10, act="sigmoid")
            c("tanh-16-layers", "reg", [("vanishing_gradients", {"act": "relu"})], depth=16, act="tanh_small")
            c("lr-10x", "reg", [("lr_too_high", {"lr_f": 0.1})], depth=3, lr_x=10)
            c("lr-0.03x", "reg", [("lr_too_low", {"lr_f": 10})], depth=3, lr_x=0.03)
            c("data-400", "reg", [], depth=3, data=400, steps=600)
            c("constant-600-steps", "reg", [("plateau", {"sched": "cosine", "lr_f": 3.0})], depth=3,
              sched="constant", steps=600)
    return out + holdout_cases()


def holdout_cases() -> list[tuple[str, dict, list]]:
    """A second held-out set (names `tl2-...`, `pt2-...`: split_of puts them in `holdout`), made and labelled
    after the measure half had been measured and before any rule was changed again: other multiples of the
    lr, other run lengths, batches, schedules and depths than the first set's."""
    out = []
    warm = ("no_warmup_instability", {"warmup": 20})
    for writer, w in (("trainlab", "tl2"), ("plain", "pt2")):
        def c(name, model, probes, **spec):
            out.append(_case(f"{w}-{model}-{name}", writer, model, probes, view="" if writer == "trainlab" else "tb",
                             **spec))

        c("lr-4x", "char", [("lr_too_high", {"lr_f": 0.25})], lr_x=4)
        c("lr-2x", "char", [("lr_too_high", {"lr_f": 0.5})], lr_x=2)
        c("lr-0.4x", "char", [("lr_too_low", {"lr_f": 2.5})], lr_x=0.4)
        c("lr-6x-nowarm", "char", [("lr_too_high", {"lr_f": 1 / 6}), warm], lr_x=6, warmup=0, sched="constant")
        c("lr-20x", "char", [("lr_too_high", {"lr_f": 0.1})], lr_x=20)
        c("lr-1.5x-noclip-nowarm", "char", [LR_DOWN, warm], lr_x=1.5, warmup=0, clip=0.0)
        c("lr-0.05x", "char", [("lr_too_low", {"lr_f": 10})], lr_x=0.05)
        c("lr-0.15x", "char", [("lr_too_low", {"lr_f": 5})], lr_x=0.15)
        c("lr-100x-noclip-nowarm", "char", [("lr_too_high", {"lr_f": 0.01})], lr_x=100, clip=0.0, warmup=0,
          sched="constant")
        c("80-steps", "char", [LONGER], steps=80, warmup=8)
        c("wsd-lr-2x", "char", HEALTHY_PROBES, sched="wsd", lr_x=2)
        c("onecycle-lr-3x", "char", [LR_DOWN], sched="onecycle", warmup=0, lr_x=3)
        c("batch-4", "char", HEALTHY_PROBES, batch=4)
        c("data-4k", "char", [], data=4_000, steps=400)
        c("constant-400-steps", "char", [("plateau", {"sched": "cosine"})], sched="constant", steps=400)
        c("cosine-wd-0", "char", HEALTHY_PROBES, wd=0.0)
        if writer == "trainlab":
            c("lr-10x", "bpe", [("lr_too_high", {"lr_f": 0.1})], lr_x=10)
            c("lr-0.1x", "bpe", [("lr_too_low", {"lr_f": 10})], lr_x=0.1)
            c("lr-10x", "mlm", [("lr_too_high", {"lr_f": 0.1})], lr_x=10)
            c("wsd", "mlm", HEALTHY_PROBES, sched="wsd")
        else:
            c("lr-3x", "reg", [LR_DOWN], depth=3, lr_x=3)
            c("lr-0.1x", "reg", [("lr_too_low", {"lr_f": 10})], depth=3, lr_x=0.1)
            c("tanh-10-layers", "reg", [("vanishing_gradients", {"act": "relu"})], depth=10, act="tanh_small")
            c("wsd", "reg", HEALTHY_PROBES, depth=3, sched="wsd")
    return out


def alt_spec(spec: dict, change: dict) -> dict:
    """The alternative a probe names: `lr_f` multiplies the case's lr, `steps_f` its steps; other keys replace."""
    alt = {k: v for k, v in spec.items() if k != "view"}
    for k, v in change.items():
        if k == "lr_f":
            alt["lr_x"] = float(f"{spec['lr_x'] * v:.6g}")
        elif k == "steps_f":
            alt["steps"] = spec["steps"] * v
        else:
            alt[k] = v
    return alt


# --------------------------------------------------------------------------------------------
# data, models and schedules shared by the writers other than trainlab

SEQ, EVAL_EVERY, EVAL_BATCHES, LOG_EVERY = 64, 20, 4, 2
_DATA: dict[str, Any] = {}


def lm_ids(model: str):
    """(train ids, val ids, vocab size) of Shakespeare, by trainlab's own tokenizers (char, or a 300-token BPE)."""
    if model not in _DATA:
        from trainlab.presets import base
        from trainlab.data.prepare import prepare

        data_cfg = base().data.model_copy(update=dict(source="shakespeare", tokenizer="char" if model == "char" else "bpe",
                                                      bpe_vocab_size=300))
        p = prepare(data_cfg, SEQ, log=lambda s: None)
        _DATA[model] = (p.train.astype("int64"), p.val.astype("int64"), p.tokenizer.vocab_size)
    return _DATA[model]


def reg_data():
    """Hourly BTC candles: predict an hour's log(high/low) range (standardised) from the 32 before it.
    Volatility persists, so a working model explains part of it; one that predicts the mean scores 1.0."""
    if "reg" not in _DATA:
        import csv

        import numpy as np

        from trainlab.data.corpora import get_corpus

        with open(get_corpus("btc-1h"), newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        rng = np.array([math.log(float(r["high"]) / float(r["low"]) + 1e-6) for r in rows])
        rng = (rng - rng.mean()) / rng.std()
        x = np.stack([rng[i - 32: i] for i in range(32, len(rng))]).astype("float32")
        y = rng[32:].astype("float32")
        cut = int(0.8 * len(y))
        _DATA["reg"] = (x[:cut], y[:cut], x[cut:], y[cut:])
    return _DATA["reg"]


def lr_lambda(spec: dict, steps: int):
    """The multiplier of the peak lr at each step: linear warmup, then cosine to 10%, constant, or WSD
    (hold, then linear to zero over the last 20%). OneCycle is torch's own (see make_optim)."""
    warm, sched = spec["warmup"], spec["sched"]

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        if sched == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if sched == "wsd":
            return 1.0 if step < 0.8 * steps else max(0.0, (steps - step) / (0.2 * steps))
        return 1.0
    return f


def peak_lr(spec: dict) -> float:
    return BASE_LR[spec["model"]] * spec["lr_x"]


def make_optim(params, spec: dict):
    import torch

    opt = torch.optim.AdamW(params, lr=peak_lr(spec), weight_decay=spec["wd"], betas=(0.9, 0.95))
    if spec["sched"] == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr(spec), total_steps=spec["steps"] + 1,
                                                    pct_start=0.3, anneal_strategy="cos", cycle_momentum=False)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, spec["steps"]))
    return opt, sched


def llama(vocab: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                                        tie_word_embeddings=True))


def mlp(spec: dict, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh_small": nn.Tanh}[spec["act"]]
    layers, width = [], 32
    for _ in range(spec["depth"]):
        lin = nn.Linear(width, 64)
        if spec["act"] == "tanh_small":  # a small init: each tanh layer shrinks the signal and its gradient
            nn.init.normal_(lin.weight, std=0.05)
        layers += [lin, act()]
        width = 64
    return nn.Sequential(*layers, nn.Linear(width, 1))


class Windows:
    """Random windows of token ids (a seed's own order), or the fixed validation windows."""

    def __init__(self, ids, n: int, seed: int, limit: Optional[int] = None):
        import numpy as np

        self.ids = ids if limit is None else ids[:limit]
        self.starts = np.random.default_rng(seed).integers(0, len(self.ids) - SEQ - 1, n)

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, i):
        import torch

        x = torch.from_numpy(self.ids[self.starts[i]: self.starts[i] + SEQ].copy())
        return {"input_ids": x, "labels": x.clone()}


def lm_sets(spec: dict, seed: int):
    train, val, vocab = lm_ids(spec["model"])
    return (Windows(train, spec["steps"] * spec["batch"], 100 + seed, spec["data"]),
            Windows(val, EVAL_BATCHES * 16, 7), vocab)


# --------------------------------------------------------------------------------------------
# the writers: each trains one run in this process and leaves what the doctor reads in `fix`

PERF_KEYS = ("elapsed_s", "tokens_per_s", "mfu", "peak_memory_mb", "data_wait_frac")  # this host's speed, not the run


def _round(row: dict) -> dict:
    return {k: (float(f"{v:.5g}") if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in row.items() if k not in PERF_KEYS}


def run_trainlab(spec: dict, seed: int, work: Path, fix: Path) -> dict:
    from trainlab.presets import micro_bert, shakespeare_char
    from trainlab.train import run as run_mod
    from trainlab.train.trainer import Diverged

    cfg = micro_bert() if spec["model"] == "mlm" else shakespeare_char()
    if spec["model"] == "mlm":
        cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=2, d_model=32, seq_len=32))
        cfg.data = cfg.data.model_copy(update=dict(bpe_vocab_size=300))
    else:
        cfg.model = cfg.model.model_copy(update=dict(n_layer=2, n_head=4, d_model=48, seq_len=SEQ, qk_norm=False))
        if spec["model"] == "bpe":
            cfg.data = cfg.data.model_copy(update=dict(tokenizer="bpe", bpe_vocab_size=300))
    if spec["data"]:
        text = Path(_corpus_text()).read_text(encoding="utf-8")[: int(spec["data"] / 0.8)]
        path = WORK / "data" / f"shakespeare-{spec['data']}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        cfg.data = cfg.data.model_copy(update=dict(source=str(path), val_fraction=0.2))
    sched = dict(name=spec["sched"], warmup_steps=spec["warmup"], min_lr_ratio=0.1)
    if spec["sched"] == "wsd":
        sched.update(decay_fraction=0.2, min_lr_ratio=0.0)
    cfg.optim = cfg.optim.model_copy(update=dict(name="adamw", lr=peak_lr(spec), weight_decay=spec["wd"],
                                                 betas=(0.9, 0.95), grad_clip=spec["clip"]))
    cfg.schedule = cfg.schedule.model_copy(update=sched)
    cfg.train = cfg.train.model_copy(update=dict(
        batch_size=spec["batch"] * (2 if spec["model"] == "mlm" else 1), max_seconds=None, max_steps=spec["steps"],
        eval_interval=EVAL_EVERY, eval_batches=EVAL_BATCHES, log_interval=LOG_EVERY, sample_tokens=0, compile=False,
        precision="fp32", threads=1, seed=seed))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=10**6, keep_last=1, save_top_k=0))
    run_dir = work / "run"
    gave_up = False
    try:
        run_mod.train(cfg, run_dir, fresh=True, log=lambda s: None)
    except Diverged:
        gave_up = True
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fix.mkdir(parents=True, exist_ok=True)
    (fix / "metrics.jsonl").write_text("".join(json.dumps(_round(r)) + "\n" for r in rows))
    for name in ("config.yaml", "env.json"):
        shutil.copy(run_dir / name, fix / name)
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val"]
    train = [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]
    return _result(val, train, spec["steps"], gave_up)


def _corpus_text() -> Path:
    from trainlab.data.corpora import get_corpus

    return get_corpus("shakespeare", quiet=True)


def run_hf(spec: dict, seed: int, work: Path, fix: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    train_set, val_set, vocab = lm_sets(spec, seed)
    model = llama(vocab, seed)
    opt, sched = make_optim(model.parameters(), spec)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(work / "tb")
    args = TrainingArguments(output_dir=str(work / "out"), max_steps=spec["steps"],
                             per_device_train_batch_size=spec["batch"], per_device_eval_batch_size=16,
                             learning_rate=peak_lr(spec), warmup_steps=spec["warmup"], weight_decay=spec["wd"],
                             max_grad_norm=spec["clip"], logging_steps=LOG_EVERY, eval_strategy="steps",
                             eval_steps=EVAL_EVERY, save_strategy="no", report_to=["tensorboard"], seed=seed,
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set, optimizers=(opt, sched))
    trainer.train()
    trainer.save_state()
    state = json.loads((work / "out" / "trainer_state.json").read_text())
    fix.mkdir(parents=True, exist_ok=True)
    state["log_history"] = [_round(e) for e in state["log_history"]]
    (fix / "trainer_state.json").write_text(json.dumps(state, indent=1, allow_nan=True))
    (fix / "training_args.json").write_text(args.to_json_string())
    shutil.copytree(work / "tb", fix / "tb")
    hist = state["log_history"]
    val = [(e["step"], e["eval_loss"]) for e in hist if "eval_loss" in e]
    train = [e["loss"] for e in hist if "loss" in e]
    return _result(val, train, spec["steps"], False)


def run_lightning(spec: dict, seed: int, work: Path, fix: Path) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    train_set, val_set, vocab = lm_sets(spec, seed)

    class LM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = llama(vocab, seed)

        def training_step(self, batch, _):
            loss = self.model(**batch).loss
            self.log("train_loss", loss)
            return loss

        def on_before_optimizer_step(self, optimizer):  # before Lightning clips
            norms = [p.grad.norm() for p in self.parameters() if p.grad is not None]
            self.log("grad_norm", torch.norm(torch.stack(norms)))

        def validation_step(self, batch, _):
            self.log("val_loss", self.model(**batch).loss)

        def configure_optimizers(self):
            opt, sched = make_optim(self.parameters(), spec)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    L.seed_everything(seed, verbose=False)
    csv_logger = CSVLogger(str(work), name="csv")
    tb_logger = TensorBoardLogger(str(work), name="tb")
    trainer = L.Trainer(max_steps=spec["steps"], accelerator="cpu", devices=1, logger=[csv_logger, tb_logger],
                        log_every_n_steps=LOG_EVERY, val_check_interval=EVAL_EVERY, check_val_every_n_epoch=None,
                        limit_val_batches=EVAL_BATCHES, gradient_clip_val=spec["clip"] or None,
                        callbacks=[LearningRateMonitor("step")], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    dl = torch.utils.data.DataLoader
    trainer.fit(LM(), dl(train_set, batch_size=spec["batch"]), dl(val_set, batch_size=16))
    fix.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(csv_logger.log_dir) / "metrics.csv", fix / "metrics.csv")
    shutil.copytree(Path(tb_logger.log_dir), fix / "tb", ignore=shutil.ignore_patterns("*.yaml"))
    import csv

    with open(fix / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    train = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    return _result(val, train, spec["steps"], False)


def run_plain(spec: dict, seed: int, work: Path, fix: Path) -> dict:
    import torch
    from torch.utils.tensorboard import SummaryWriter

    if spec["model"] == "reg":
        xt, yt, xv, yv = reg_data()
        if spec["data"]:
            xt, yt = xt[: spec["data"]], yt[: spec["data"]]
        xt, yt, xv, yv = (torch.from_numpy(a) for a in (xt, yt, xv, yv))
        model = mlp(spec, seed)
        gen = torch.Generator().manual_seed(100 + seed)

        def batch():
            i = torch.randint(0, len(yt), (spec["batch"] * 4,), generator=gen)
            return torch.nn.functional.mse_loss(model(xt[i]).squeeze(-1), yt[i])

        def evaluate():
            with torch.no_grad():
                return float(torch.nn.functional.mse_loss(model(xv).squeeze(-1), yv))
    else:
        train_set, val_set, vocab = lm_sets(spec, 1000 + seed)  # its own data order, not Lightning's
        model = llama(vocab, seed)
        it = iter(torch.utils.data.DataLoader(train_set, batch_size=spec["batch"]))
        val_batches = list(torch.utils.data.DataLoader(val_set, batch_size=16))

        def batch():
            return model(**next(it)).loss

        def evaluate():
            with torch.no_grad():
                return sum(float(model(**b).loss) for b in val_batches) / len(val_batches)
    opt, sched = make_optim(model.parameters(), spec)
    writer = SummaryWriter(str(fix / "tb"))
    val, train = [], []
    for step in range(1, spec["steps"] + 1):
        model.train()
        loss = batch()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = spec["clip"] if spec["clip"] > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        train.append(float(loss.detach()))
        if step % LOG_EVERY == 0:
            writer.add_scalar("train/loss", float(loss), step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", norm, step)
        if step % EVAL_EVERY == 0 or step == spec["steps"]:
            model.eval()
            v = evaluate()
            writer.add_scalar("val/loss", v, step)
            val.append((step, v))
    writer.close()
    return _result(val, train, spec["steps"], False)


WRITERS = {"trainlab": run_trainlab, "hf": run_hf, "lightning": run_lightning, "plain": run_plain}


def _result(val: list, train: list, steps: int, gave_up: bool) -> dict:
    finite = [v for _, v in val if math.isfinite(v)]
    # Lightning logs the last evaluation at step steps - 1
    last_ok = bool(val) and math.isfinite(val[-1][1]) and val[-1][0] >= steps - 1 and not gave_up
    tail = train[-max(1, len(train) // 10):]
    return {"val": [[int(s), float(v) if math.isfinite(v) else None] for s, v in val],
            "final": float(val[-1][1]) if last_ok else None, "best": min(finite) if finite else None,
            "gave_up": gave_up, "train_nonfinite": sum(1 for x in train if not math.isfinite(x)),
            "train_tail_nonfinite": any(not math.isfinite(x) for x in tail)}


# --------------------------------------------------------------------------------------------
# runs (cached), labels, cases


def run_key(spec: dict, seed: int) -> str:
    body = {k: v for k, v in spec.items() if k != "view"} | {"seed": seed}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def ensure_run(spec: dict, seed: int, make: bool = True) -> Optional[dict]:
    """The run's result (final and best validation loss, ...), trained now unless cached."""
    home = WORK / "runs" / run_key(spec, seed)
    if (home / "result.json").exists():
        return json.loads((home / "result.json").read_text())
    if not make:
        return None
    tmp = Path(tempfile.mkdtemp(prefix="corpus-run-"))
    t0 = time.time()
    try:
        result = WRITERS[spec["writer"]](spec, seed, tmp, tmp / "fixture")
        result["seconds"] = round(time.time() - t0, 1)
        result["spec"], result["seed"] = {k: v for k, v in spec.items() if k != "view"}, seed
        home.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "fixture" / "result.json").write_text(json.dumps(result, indent=1))
        if home.exists() and not (home / "result.json").exists():
            shutil.rmtree(home, ignore_errors=True)  # a run cut short
        try:
            os.rename(tmp / "fixture", home)
        except OSError:  # another process made the same run meanwhile: keep its copy
            if not (home / "result.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"  run {spec['writer']}/{spec['model']} lr x{spec['lr_x']:g} {spec['sched']} warm {spec['warmup']} "
          f"clip {spec['clip']} steps {spec['steps']} seed {seed}: final {result['final']} ({result['seconds']} s)",
          flush=True)
    return result


def _val(r: dict) -> float:
    return r["final"] if r["final"] is not None else math.inf


def _spread(pair: list[dict]) -> float:
    a, b = _val(pair[0]), _val(pair[1])
    return abs(a - b) if math.isfinite(a) and math.isfinite(b) else 0.0


def measurably_better(alt: list[dict], case: list[dict]) -> tuple[bool, float, float]:
    """(alt better on each seed by more than the spread, mean improvement, spread)."""
    spread = max(_spread(alt), _spread(case))
    gains = [_val(c) - _val(a) for a, c in zip(alt, case)]
    finite = [g for g in gains if math.isfinite(g)]
    mean = sum(finite) / len(finite) if finite else 0.0
    if any(math.isinf(g) and g > 0 for g in gains):
        mean = math.inf
    return all(g > spread for g in gains), mean, spread


def _train_tail(spec: dict, seed: int) -> float:
    """The median training loss over the last tenth of a run's logged steps (NaN when it is not finite):
    a run whose validation loss ends above chance diverged only if its training loss did too (a model
    that memorised a tiny training set can reach such a validation loss while its training loss is low)."""
    import numpy as np

    from trainlab.doctor.readers import read

    home = WORK / "runs" / run_key(spec, seed)
    path = {"trainlab": home, "hf": home / "trainer_state.json", "lightning": home / "metrics.csv",
            "plain": home / "tb"}[spec["writer"]]
    _, loss = read(path).col("loss", finite=False)
    tail = loss[-max(1, len(loss) // 10):]
    return float(np.median(tail)) if len(tail) and np.isfinite(tail).all() else float("nan")


def _guard_events(spec: dict) -> int:
    """Non-finite steps trainlab's guards skipped or rolled back (its losses stay finite in the log)."""
    if spec["writer"] != "trainlab":
        return 0
    path = WORK / "runs" / run_key(spec, SEEDS[0]) / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if '"split": "event"' in line)


def _overfit(r: dict) -> tuple[float, int]:
    """(rise of the last validation loss above the best, as a share of the best; the best's step)."""
    pts = [(s, v) for s, v in r["val"] if v is not None]
    if r["final"] is None or not pts:
        return 0.0, 0
    step, best = min(pts, key=lambda p: p[1])
    return (r["final"] - best) / best, step


def label(name: str, spec: dict, probes: list, make: bool = True) -> Optional[dict]:
    runs = [ensure_run(spec, s, make) for s in SEEDS]
    if None in runs:
        return None
    confirmed, must_not, figures = [], [], {}
    for pid, change in probes:
        alt = [ensure_run(alt_spec(spec, change), s, make) for s in SEEDS]
        if None in alt:
            return None
        ok, gain, spread = measurably_better(alt, runs)
        figures[pid] = {"alternative": change, "case_final": [_val(r) for r in runs],
                        "alternative_final": [_val(r) for r in alt], "spread": spread, "mean_gain": gain,
                        "confirmed": ok}
        if ok:
            confirmed.append((gain, pid))
        elif all(_val(a) >= _val(c) - _spread(runs) for a, c in zip(alt, runs)) or not any(
                _val(c) - _val(a) > 0 for a, c in zip(alt, runs)):
            must_not.append(pid)  # the alternative did no better: the advice would not help
    expected = [pid for _, pid in sorted(confirmed, key=lambda g: -g[0])]
    first = expected[:1]
    # diverged: the run ended non-finite, or above the loss of a constant prediction (ln V for a language
    # model, the target's variance, 1, for the standardised regression), on both seeds
    chance = 1.0 if spec["model"] == "reg" else math.log(lm_ids("bpe" if spec["model"] == "mlm" else spec["model"])[2])
    tails = [_train_tail(spec, seed) for seed in SEEDS]
    diverged = all(r["final"] is None or (r["final"] > chance and not tail < 0.9 * chance)
                   for r, tail in zip(runs, tails))
    figures["diverged"] = {"final_nonfinite": [r["final"] is None for r in runs], "chance_loss": chance,
                           "train_tail": tails,
                           "train_nonfinite_steps": [r["train_nonfinite"] for r in runs]}
    if diverged:
        expected.append("diverged")
        first = first + ["diverged"] if first else ["diverged"]
    elif all(r["train_nonfinite"] == 0 and r["final"] is not None and r["final"] < 0.9 * chance for r in runs) \
            and not _guard_events(spec):
        must_not.append("diverged")
    rises = [_overfit(r) for r in runs]
    spread = _spread(runs)
    over = [rise > OVERFIT_RISE and rise * r["best"] > spread for (rise, _), r in zip(rises, runs) if r["best"]]
    figures["overfitting"] = {"rise_share": [round(x, 4) for x, _ in rises], "best_step": [s for _, s in rises],
                              "final": [_val(r) for r in runs], "spread": spread}
    if len(over) == 2 and all(over):
        expected.append("overfitting")
        if not first:
            first = ["overfitting"]
    elif all(x <= 0 for x, _ in rises):
        must_not.append("overfitting")
    healthy = not expected
    # borderline: the lr 2-3x off rather than 10-100x (by its setup, or by a confirmed lr probe whose
    # alternative lr is within 3.5x), a mild overfit, or a label confirmed by a narrow margin
    near = [f for f in figures.values() if f.get("confirmed") and (
        f["mean_gain"] < 2 * f["spread"] + 0.02 or 1 / 3.5 <= f["alternative"].get("lr_f", 0) <= 3.5)]
    borderline = (0.3 <= spec["lr_x"] <= 0.5 or 2 <= spec["lr_x"] <= 3.5 or bool(near)
                  or ("overfitting" in expected and max(x for x, _ in rises) < 0.05))
    return {"case": name, "split": split_of(name), "writer": spec["writer"], "model": spec["model"],
            "read": READ[spec["writer"], spec["view"] or "metrics"], "expected": expected, "first": first,
            "must_not": sorted(set(must_not) - set(expected)), "healthy": healthy, "borderline": borderline,
            "spec": {k: v for k, v in spec.items() if k != "view"} | {"peak_lr": peak_lr(spec)},
            "note": _note(spec, probes, figures), "figures": figures}


# what the doctor is pointed at in each case directory
READ = {("trainlab", "metrics"): ".", ("hf", "state"): "trainer_state.json", ("hf", "tb"): "tb",
        ("lightning", "csv"): "metrics.csv", ("lightning", "tb"): "tb", ("plain", "tb"): "tb"}


def _note(spec: dict, probes: list, figures: dict) -> str:
    made = (f"{spec['writer']} {spec['model']} model, peak lr {peak_lr(spec):.3g} ({spec['lr_x']:g}x the base), "
            f"{spec['sched']} schedule, warmup {spec['warmup']}, clip {spec['clip'] or 'none'}, {spec['steps']} steps "
            f"of batch {spec['batch'] * {'reg': 4, 'mlm': 2}.get(spec['model'], 1)}" + (f", training data cut to {spec['data']:,}" if spec["data"] else "")
            + (f", {spec['depth']} layers of {spec['act']}" if spec["model"] == "reg" else "") + "; seeds 0 and 1.")
    parts = [made]
    for pid, f in figures.items():
        if "alternative" in f:
            parts.append(f"{pid}: {f['alternative']} gave final val {_fmt(f['alternative_final'])} against "
                         f"{_fmt(f['case_final'])} (spread {f['spread']:.4f}): "
                         + ("confirmed" if f["confirmed"] else "not better"))
    o = figures["overfitting"]
    parts.append(f"overfitting: last val above best by {o['rise_share']} (best at steps {o['best_step']})")
    return " ".join(parts)


def _fmt(xs: list) -> str:
    return "/".join(f"{x:.4f}" if math.isfinite(x) else "non-finite" for x in xs)


def write_case(name: str, spec: dict, lab: dict) -> None:
    src = WORK / "runs" / run_key(spec, SEEDS[0])
    dest = OUT / name
    tmp = OUT / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    read = lab["read"]
    if spec["writer"] == "trainlab":
        for f in ("metrics.jsonl", "config.yaml", "env.json"):
            shutil.copy(src / f, tmp / f)
    elif read == "tb":
        shutil.copytree(src / "tb", tmp / "tb")
    else:
        shutil.copy(src / read, tmp / read)
        if read == "trainer_state.json":
            shutil.copy(src / "training_args.json", tmp / "training_args.json")
    (tmp / "label.json").write_text(json.dumps(lab, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--writer", choices=list(WRITERS))
    parser.add_argument("--list", action="store_true", help="list the cases, their half and whether they are made")
    parser.add_argument("--force", action="store_true", help="rewrite case directories that exist")
    parser.add_argument("--no-train", action="store_true", help="only label cases whose runs are all cached")
    parser.add_argument("--reverse", action="store_true", help="take the cases last first (for a second process)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    all_cases = cases()
    names = [c[0] for c in all_cases]
    assert len(set(names)) == len(names), "case names must be unique"
    chosen = [c for c in all_cases if (not args.only or c[0] in args.only)
              and (not args.writer or c[1]["writer"] == args.writer)]
    if args.reverse:
        chosen.reverse()
    if args.list:
        for name, spec, probes in chosen:
            made = (OUT / name / "label.json").exists()
            print(f"{name:36s} {split_of(name):8s} {'made' if made else '-'}")
        print(f"{len(chosen)} cases")
        return
    for name, spec, probes in chosen:
        if (OUT / name / "label.json").exists() and not args.force:
            continue
        lock = OUT / f".{name}.lock"
        try:  # several processes can share the work: each case is made by one of them
            OUT.mkdir(parents=True, exist_ok=True)
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        print(f"{name}:", flush=True)
        try:
            lab = label(name, spec, probes, make=not args.no_train)
        except Exception as err:  # one broken case must not stop the others; it is reported and left unmade
            print(f"  FAILED: {type(err).__name__}: {err}", flush=True)
            lock.unlink(missing_ok=True)
            continue
        if lab is None:
            print("  (runs not cached; skipped)")
            lock.unlink(missing_ok=True)
            continue
        write_case(name, spec, lab)
        lock.unlink(missing_ok=True)
        print(f"  -> expected {lab['expected']} must_not {lab['must_not']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
