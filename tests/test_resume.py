"""Resume after SIGTERM: the run writes a checkpoint on its way out and finishes when resumed. (SIGKILL at
seeded moments, resumed to a bitwise-equal end, is tests/test_kill_loop.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import cli, read_rows

ARGS = ["--preset", "tiny", "--set", "model.d_model=64", "--set", "model.seq_len=64", "--set", "model.dropout=0.1",
        "--set", "train.batch_size=16", "--set", "train.max_steps=60", "--set", "checkpoint.interval=10",
        "--set", "train.eval_interval=10"]


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    args = [a.replace("max_steps=60", "max_steps=150") for a in ARGS]
    args = [a.replace("checkpoint.interval=10", "checkpoint.interval=1000") for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *args, "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 2000):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in out
    steps = [int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert steps and 0 < max(steps) < 150
    events = [r for r in read_rows(metrics) if r["split"] == "event"]
    assert events[-1]["kind"] == "interrupted"
    cli("train", *args, "--run-dir", str(run), "--resume")
    assert os.readlink(run / "checkpoints" / "last") == "step-00000150"


def test_resuming_a_finished_run_writes_nothing_and_a_larger_budget_trains_on(tmp_path):
    """--resume on a run whose budget is spent says so and leaves its files as they were (it had evaluated
    again, appending a second validation row at the last step); with a larger budget it trains on."""
    from conftest import cli, read_rows

    def files(run):  # env.json says where and how the last command ran: rewritten on every start, by design
        return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
                if p.is_file() and p.name not in ("env.json", ".lock")}

    run = tmp_path / "run"
    cli("train", "--preset", "tiny", "--set", "train.max_steps=5", "--run-dir", str(run))
    before = files(run)
    proc = cli("train", "--preset", "tiny", "--set", "train.max_steps=5", "--run-dir", str(run), "--resume")
    assert "already finished at step 5" in proc.stdout + proc.stderr
    assert files(run) == before
    cli("train", "--preset", "tiny", "--set", "train.max_steps=8", "--run-dir", str(run), "--resume")
    vals = [r["step"] for r in read_rows(run / "metrics.jsonl") if r["split"] == "val"]
    assert vals[-2:] == [5, 8] and len(vals) == len(set(vals))
