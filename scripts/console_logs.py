"""Make the doctor's console-log fixtures with real training scripts, their output kept as printed:

- nanoGPT's own train.py (a checkout of https://github.com/karpathy/nanoGPT, given as NANOGPT=path):
  its config/train_shakespeare_char.py on the bundled Shakespeare corpus (train.bin, val.bin and meta.pkl
  written as its data/shakespeare_char/prepare.py writes them), a small model on the CPU, with the
  overrides it prints;
- Keras 3 (`model.fit(verbose=2)`, the torch backend, a LearningRateScheduler so the rate is printed): a
  causal-convolution character model, epoch lines;
- Lightning's console (model summary and tqdm progress bars, `train_loss` and `val_loss` on the bar) for the
  same Llama and windows as the loop below;
- a plain PyTorch loop (a 2-layer transformers Llama on the same windows) printing one line per epoch under
  OneCycleLR as in seed 004's log (`epoch/`), and one printing `key=value` lines per step (`keyvalue/`).

Cases: healthy, the learning rate x30 (`lr_too_high`), x0.01 (`lr_too_low`), and driven to NaN (`nan`:
a huge lr without clipping) where the tool can make them. Outputs go to
tests/fixtures/doctor/foreign/console/<tool>/<case>/train.log.

    .venv/bin/pip install -r scripts/requirements-logs.txt
    NANOGPT=/path/to/nanoGPT .venv/bin/python scripts/console_logs.py [nanogpt|keras|loop|lightning ...] [--case=NAME ...]
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor" / "foreign" / "console"


def save(tool: str, case: str, text: str) -> None:
    dest = OUT / tool / case
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "train.log").write_text(text)
    print(f"{tool}/{case}: {len(text.splitlines())} lines", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# nanoGPT

# lr_x30: 30x its config's 1e-3, measurably worse (val 2.85 against 2.56) but a subtler case than x100
NANO_CASES = {"healthy": ["--learning_rate=1e-3"], "lr_too_high": ["--learning_rate=1e-1"], "lr_x30": ["--learning_rate=3e-2"],
              "lr_too_low": ["--learning_rate=1e-5"],
              "nan": ["--learning_rate=20.0", "--grad_clip=0.0", "--decay_lr=False"]}


def nanogpt() -> None:
    src = Path(os.environ.get("NANOGPT", ""))
    if not (src / "train.py").exists():
        raise SystemExit("set NANOGPT to a checkout of nanoGPT (its train.py, model.py, configurator.py, config/)")
    from trainlab.data.corpora import get_corpus

    work = Path(tempfile.mkdtemp(prefix="trainlab-nanogpt-"))
    for name in ("train.py", "model.py", "configurator.py", "config"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, work / name)
    text = get_corpus("shakespeare").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    cut = int(0.9 * len(text))
    np.array([stoi[c] for c in text[:cut]], dtype=np.uint16).tofile(data / "train.bin")
    np.array([stoi[c] for c in text[cut:]], dtype=np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as fh:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, fh)
    small = ["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=2", "--n_head=2", "--n_embd=64",
             "--block_size=64", "--batch_size=12", "--dropout=0.0", "--max_iters=400", "--lr_decay_iters=400",
             "--warmup_iters=40", "--eval_interval=50", "--eval_iters=10", "--log_interval=5",
             "--always_save_checkpoint=False"]
    for case, extra in NANO_CASES.items():
        if CHOSEN and case not in CHOSEN:
            continue
        proc = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", *small, *extra],
                              cwd=work, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        save("nanogpt", case, proc.stdout)
    shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Keras

# nan: plain SGD at lr 50 without clipping (Adam's normalised steps at such a rate grow huge but stay finite)
KERAS_CASES = {"healthy": (3e-3, 1.0), "lr_too_high": (9e-2, 1.0), "lr_too_low": (3e-5, 1.0), "nan": (50.0, None)}


def keras_logs() -> None:
    os.environ["KERAS_BACKEND"] = "torch"
    import contextlib
    import io

    import keras
    import torch

    from foreign_logs import windows

    torch.set_num_threads(1)

    train, val, vocab = windows()
    seq = 64

    def xy(ids, n, seed):
        starts = np.random.default_rng(seed).integers(0, len(ids) - seq - 1, n)
        x = np.stack([ids[s: s + seq] for s in starts])
        return x, np.stack([ids[s + 1: s + seq + 1] for s in starts])

    x, y = xy(train, 10 * 32 * 30, 0)
    vx, vy = xy(val, 256, 1)
    for case, (lr, clip) in KERAS_CASES.items():
        if CHOSEN and case not in CHOSEN:
            continue
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((seq,), dtype="int32"), keras.layers.Embedding(vocab, 64),
                                  keras.layers.Conv1D(128, 8, padding="causal", activation="relu"),
                                  keras.layers.Conv1D(128, 8, padding="causal", activation="relu"),
                                  keras.layers.Dense(vocab)])
        opt = keras.optimizers.SGD(learning_rate=lr) if case == "nan" else keras.optimizers.Adam(learning_rate=lr,
                                                                                                 clipnorm=clip)
        model.compile(optimizer=opt,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            # the scheduler callback (here holding the rate) is what makes Keras print `learning_rate`
            model.fit(x, y, batch_size=32, epochs=30, steps_per_epoch=10, validation_data=(vx, vy), verbose=2,
                      callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate)])
        save("keras", case, printed.getvalue())


# --------------------------------------------------------------------------------------------
# a plain PyTorch loop

# lr_far_no_clip: AdamW at lr 20 without clipping blows the loss up to 3e4, then it collapses to the unigram
# level (Adam's normalised steps stay finite); nan: plain SGD at lr 20 without clipping reaches NaN
LOOP_CASES = {"healthy": (3e-3, 1.0), "lr_too_high": (9e-2, 1.0), "lr_too_low": (3e-5, 1.0),
              "lr_far_no_clip": (20.0, 0.0), "nan": (20.0, 0.0)}


def loop_logs() -> None:
    """One run per case prints both logs: epoch lines (epoch/) and key=value step lines (keyvalue/)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from foreign_logs import SEQ, Windows, windows

    torch.set_num_threads(1)
    train, val, vocab = windows()
    epochs, per_epoch, batch = 30, 10, 16
    for case, (lr, clip) in LOOP_CASES.items():
        if CHOSEN and case not in CHOSEN:
            continue
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=192,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                             max_position_embeddings=SEQ, tie_word_embeddings=True))
        opt = (torch.optim.SGD(model.parameters(), lr=lr) if case == "nan"
               else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.1)
        data = torch.utils.data.DataLoader(Windows(train, epochs * per_epoch * batch, 0), batch_size=batch)
        held = next(iter(torch.utils.data.DataLoader(Windows(val, 64, 1), batch_size=64)))
        kv = [f"learning_rate = {lr}", f"max_grad_norm = {clip}", "scheduler = onecycle", f"seq_len = {SEQ}"]
        ep, it, losses, start = [], iter(data), [], time.time()
        for step in range(1, epochs * per_epoch + 1):
            b = next(it)
            loss = model(**b).loss
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else math.inf)
            opt.step()
            sched.step()
            losses.append(float(loss))
            if step % 5 == 0:
                kv.append(f"step={step} loss={float(loss):.4f} lr={sched.get_last_lr()[0]:.3e} grad_norm={float(norm):.3f}")
            if step % per_epoch:
                continue
            with torch.no_grad():
                vloss = float(model(**held).loss)
            if step % 50 == 0:
                kv.append(f"step={step} val_loss={vloss:.4f}")
            ep.append(f"Epoch {step // per_epoch}/{epochs} | train loss: {np.mean(losses[-per_epoch:]):.4f} | "
                      f"val loss: {vloss:.4f} | lr: {sched.get_last_lr()[0]:.6f} | time: {time.time() - start:.1f}s")
        save("epoch", case, "\n".join(ep) + "\n")
        save("keyvalue", case, "\n".join(kv) + "\n")


LIGHTNING_CASES = {"healthy": 3e-3, "lr_too_high": 9e-2, "lr_too_low": 3e-5}


def lightning_logs() -> None:
    """Lightning's own console: its model summary and tqdm progress bars (carriage returns kept), with
    `train_loss` and `val_loss` logged to the bar, stdout and stderr together as `2>&1 | tee` keeps them."""
    import contextlib
    import io

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import TQDMProgressBar
    from transformers import LlamaConfig, LlamaForCausalLM, get_scheduler

    from foreign_logs import SEQ, Windows, windows

    torch.set_num_threads(1)
    train, val, vocab = windows()
    epochs, per_epoch, batch = 15, 20, 16
    for case, lr in LIGHTNING_CASES.items():
        if CHOSEN and case not in CHOSEN:
            continue

        class LM(L.LightningModule):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.model = LlamaForCausalLM(LlamaConfig(
                    vocab_size=vocab, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                    tie_word_embeddings=True))

            def training_step(self, b, _):
                loss = self.model(**b).loss
                self.log("train_loss", loss, prog_bar=True)
                return loss

            def validation_step(self, b, _):
                self.log("val_loss", self.model(**b).loss, prog_bar=True)

            def configure_optimizers(self):
                opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.1)
                sched = get_scheduler("cosine", opt, num_warmup_steps=30, num_training_steps=epochs * per_epoch)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        L.seed_everything(0)
        printed = io.StringIO()
        dl = torch.utils.data.DataLoader
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            # the tqdm bar (Lightning's default without `rich`; with it, a log file keeps only the last frame)
            trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, log_every_n_steps=5,
                                limit_train_batches=per_epoch, limit_val_batches=4, gradient_clip_val=1.0, enable_checkpointing=False,
                                callbacks=[TQDMProgressBar()])
            trainer.fit(LM(), dl(Windows(train, epochs * per_epoch * batch, 0), batch_size=batch),
                        dl(Windows(val, 4 * batch, 1), batch_size=batch))
        save("lightning", case, printed.getvalue())


CHOSEN = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--case=")]  # default: every case


def main() -> None:
    tools = {"nanogpt": nanogpt, "keras": keras_logs, "loop": loop_logs,  # loop: epoch/ and keyvalue/
             "lightning": lightning_logs}
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(tools)
    for name in dict.fromkeys("loop" if n in ("epoch", "keyvalue") else n for n in names):
        tools[name]()


if __name__ == "__main__":
    main()
