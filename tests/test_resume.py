"""Exact resume: a run killed with SIGKILL and resumed ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from safetensors.torch import load_file

from conftest import cli, read_rows
from trainlab.monitor.sinks import WALL_CLOCK_KEYS

ARGS = ["--preset", "tiny", "--set", "model.d_model=64", "--set", "model.seq_len=64", "--set", "model.dropout=0.1",
        "--set", "train.batch_size=16", "--set", "train.max_steps=60", "--set", "checkpoint.interval=10",
        "--set", "train.eval_interval=10"]


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in rows if r["split"] != "event"]


def last_weights(run):
    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    cli("train", *ARGS, "--run-dir", str(straight))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *ARGS, "--run-dir", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= 25 for line in metrics.read_text().splitlines()
                                    if line.endswith("}")):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert max(r["step"] for r in read_rows(metrics)) < 60

    resumed = cli("train", *ARGS, "--run-dir", str(killed), "--resume")
    assert "Traceback" not in resumed.stderr
    a, b = last_weights(straight), last_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key  # bitwise
    rows_a, rows_b = read_rows(straight / "metrics.jsonl"), read_rows(killed / "metrics.jsonl")
    assert comparable(rows_a) == comparable(rows_b)
    assert [r["kind"] for r in rows_b if r["split"] == "event"] == ["resume"]
    assert read_rows(straight / "samples.jsonl") == read_rows(killed / "samples.jsonl")


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    args = [a.replace("max_steps=60", "max_steps=400") for a in ARGS]
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
    assert steps and 0 < max(steps) < 400
    events = [r for r in read_rows(metrics) if r["split"] == "event"]
    assert events[-1]["kind"] == "interrupted"
    cli("train", *args, "--run-dir", str(run), "--resume")
    assert os.readlink(run / "checkpoints" / "last") == "step-00000400"
