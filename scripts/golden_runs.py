"""Make the doctor's golden cases: short real runs with deliberately broken configs, plus a healthy one.

Each run trains on the bundled Shakespeare corpus; the metrics, config and samples it wrote are copied to
tests/fixtures/doctor/golden/<case>/ and the tests check the doctor's top finding on each. Run it again
after changing the trainer's metrics:

    .venv/bin/python scripts/golden_runs.py [--only CASE ...] [--keep DIR]

It takes about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from trainlab.config import RunConfig
from trainlab.data.corpora import get_corpus
from trainlab.presets import shakespeare_char

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "doctor" / "golden"
KEPT = ("config.yaml", "metrics.jsonl", "samples.jsonl", "env.json")


def base() -> RunConfig:
    """A shakespeare-char model scaled to about a minute: 4 layers, d 128, 64-token windows."""
    cfg = shakespeare_char()
    cfg.model = cfg.model.model_copy(update=dict(n_layer=4, n_head=4, d_model=128, seq_len=64))
    cfg.schedule = cfg.schedule.model_copy(update=dict(warmup_steps=30))
    cfg.train = cfg.train.model_copy(update=dict(batch_size=16, max_seconds=None, max_steps=400, eval_interval=25,
                                                 eval_batches=8, log_interval=2, sample_tokens=120,
                                                 compile=False, precision="fp32"))
    cfg.checkpoint = cfg.checkpoint.model_copy(update=dict(interval=1000, keep_last=1))
    return cfg


def case(name: str, work: Path) -> RunConfig:
    cfg = base()
    lr = cfg.optim.lr
    if name == "lr_too_low":  # x0.01
        cfg.optim = cfg.optim.model_copy(update=dict(lr=lr * 0.01))
    elif name == "lr_too_high":  # x30
        cfg.optim = cfg.optim.model_copy(update=dict(lr=lr * 30))
    elif name == "no_warmup_instability":  # no warmup, a high rate, no clipping
        cfg.optim = cfg.optim.model_copy(update=dict(lr=lr * 5, grad_clip=0.0))
        cfg.schedule = cfg.schedule.model_copy(update=dict(warmup_steps=0))
    elif name == "overfitting":  # a tiny training set: the first 30,000 characters
        text = get_corpus("shakespeare").read_text(encoding="utf-8")[:30_000]
        path = work / "tiny-shakespeare.txt"
        path.write_text(text, encoding="utf-8")
        cfg.data = cfg.data.model_copy(update=dict(source=str(path), val_fraction=0.2))
        cfg.train = cfg.train.model_copy(update=dict(max_steps=600))
    elif name == "undertrained":  # far too few steps
        cfg.schedule = cfg.schedule.model_copy(update=dict(warmup_steps=3))
        cfg.train = cfg.train.model_copy(update=dict(max_steps=30, eval_interval=5, log_interval=1))
    elif name != "healthy":
        raise SystemExit(f"unknown case {name}")
    return cfg


CASES = ("healthy", "lr_too_low", "lr_too_high", "no_warmup_instability", "overfitting", "undertrained")


def main() -> None:
    from trainlab.train import run as run_mod
    from trainlab.train.trainer import Diverged

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=list(CASES))
    parser.add_argument("--keep", type=Path, help="keep the whole run directories here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainlab-golden-"))
    for name in args.only:
        cfg = case(name, work)
        run_dir = (args.keep or work) / name
        try:
            result = run_mod.train(cfg, run_dir, fresh=True, log=lambda s: None)
            print(f"{name}: {result['stop_reason']} at step {result['step']}, val {result.get('val', {}).get('loss')}")
        except Diverged as err:
            print(f"{name}: diverged ({err})")
        out = FIXTURES / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in KEPT:
            if (run_dir / f).exists():
                shutil.copy(run_dir / f, out / f)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
