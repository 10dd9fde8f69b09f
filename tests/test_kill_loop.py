"""The kill loop: one run, started with `--resume` and killed with SIGKILL five times at seeded random
moments (the first before its first checkpoint), then let finish, ends bitwise equal to the same run
left alone: its weights, its train and validation rows (less wall-clock fields) and its samples.

Kill moments are points of progress seen in the run directory (the folder appearing, config.yaml or
tokenizer.json appearing, a train row or a validation row past a step, a checkpoint folder appearing mid-write), chosen
with random.Random(SEED) among points the run has not reached yet, so the kills land where they were
meant to whatever the machine's speed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from conftest import cli, read_rows
from trainlab.monitor.sinks import WALL_CLOCK_KEYS
from user_paths import complete_rows

SEED = int(os.environ.get("TRAINLAB_KILL_SEED", "2024"))
STEPS, INTERVAL = 40, 5
ARGS = ["--preset", "tiny", "--set", "model.d_model=64", "--set", "model.seq_len=64", "--set", "model.dropout=0.1",
        "--set", "train.batch_size=16", "--set", f"train.max_steps={STEPS}", "--set", f"checkpoint.interval={INTERVAL}",
        "--set", "train.log_interval=1", "--set", "train.eval_interval=10"]
LAST_TARGET = STEPS - 6  # never aim a kill closer to the end than this: the run must still be going


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in rows if r["split"] != "event"]


def intact_steps(run: Path) -> list[int]:
    """Checkpoints whose meta.json (written last, after every file is fsynced) exists."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if p.name.startswith("step-") and not p.is_symlink() and (p / "meta.json").exists())


def checkpoint_folders(run: Path) -> list[int]:
    """Steps of every checkpoint folder, finished or still being written (`.step-N.xxxx`)."""
    root = run / "checkpoints"
    try:
        names = [p.name for p in root.iterdir()]
    except FileNotFoundError:
        return []
    steps = []
    for name in names:
        core = name.lstrip(".")
        if core.startswith("step-"):
            try:
                steps.append(int(core[5:13]))
            except ValueError:
                pass
    return steps


def max_step(run: Path, split: str) -> int:
    return max((r.get("step", 0) for r in complete_rows(run / "metrics.jsonl") if r.get("split") == split), default=-1)


def reached(run: Path, kind: str, target: int) -> bool:
    if kind == "dir":
        return run.is_dir()
    if kind in ("config", "tokenizer"):
        return (run / f"{kind}.yaml" if kind == "config" else run / "tokenizer.json").exists()
    if kind == "train_row":
        return max_step(run, "train") >= target
    if kind == "val_row":
        return max_step(run, "val") >= target
    if kind == "checkpoint":
        return any(s >= target for s in checkpoint_folders(run))
    raise ValueError(kind)


def plan_kill(rng: random.Random, first: bool, seen: int, kills_left: int) -> tuple[str, int]:
    """(kind, step) of the next kill. The first lands before the first checkpoint; the others past every step
    seen so far (so only the new process's progress can trigger them), with room left for the kills after."""
    if first:
        kind = rng.choice(["dir", "config", "tokenizer", "train_row", "train_row"])
        return kind, (rng.randint(1, INTERVAL - 2) if kind == "train_row" else 0)
    low = seen + 1
    high = max(low, LAST_TARGET - 4 * (kills_left - 1))
    kind = rng.choice(["train_row", "train_row", "val_row", "checkpoint"])
    if kind == "val_row":
        target = -(-rng.randint(low, high) // 10) * 10  # evaluations come every 10 steps
        return ("val_row", target) if target <= LAST_TARGET else ("train_row", rng.randint(low, high))
    if kind == "checkpoint":
        target = -(-rng.randint(low, high) // INTERVAL) * INTERVAL
        return ("checkpoint", target) if target <= LAST_TARGET else ("train_row", rng.randint(low, high))
    return kind, rng.randint(low, high)


def start(run: Path, logs: Path, n: int) -> subprocess.Popen:
    with open(logs / f"{n}.out", "w") as out, open(logs / f"{n}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "trainlab", "train", *ARGS, "--run-dir", str(run), "--resume"],
                                stdout=out, stderr=err)


def test_five_kills_at_random_moments_then_finish_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    cli("train", *ARGS, "--run-dir", str(straight))

    rng = random.Random(SEED)
    run, logs = tmp_path / "killed", tmp_path / "logs"
    logs.mkdir()
    restarts_with_checkpoint, kills = [], []
    for n in range(5):
        seen = max(max_step(run, "train"), max(checkpoint_folders(run), default=-1))
        kind, target = plan_kill(rng, first=n == 0, seen=seen, kills_left=5 - n)
        if n:
            restarts_with_checkpoint.append(max(intact_steps(run), default=None))
        proc = start(run, logs, n)
        deadline = time.time() + 120
        while not reached(run, kind, target):
            assert proc.poll() is None, f"kill {n + 1} ({kind} {target}): the run exited {proc.returncode} first"
            assert time.time() < deadline, f"kill {n + 1} ({kind} {target}): not reached in time"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills.append((kind, target, max_step(run, "train")))
        if n == 0:
            assert not intact_steps(run), f"the first kill ({kind} {target}) came after the first checkpoint"

    restarts_with_checkpoint.append(max(intact_steps(run), default=None))
    final = cli("train", *ARGS, "--run-dir", str(run), "--resume")
    for n in range(5):
        text = (logs / f"{n}.out").read_text() + (logs / f"{n}.err").read_text()
        assert "Traceback" not in text, text
    assert "Traceback" not in final.stdout + final.stderr

    a, b = load_file(straight / "checkpoints" / "last" / "model.safetensors"), \
        load_file(run / "checkpoints" / "last" / "model.safetensors")
    assert os.readlink(run / "checkpoints" / "last") == f"step-{STEPS:08d}"
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), (key, kills)  # bitwise
    rows_a, rows_b = read_rows(straight / "metrics.jsonl"), read_rows(run / "metrics.jsonl")
    assert comparable(rows_a) == comparable(rows_b), kills
    events = [r for r in rows_b if r["split"] == "event"]
    assert {e["kind"] for e in events} <= {"resume"}, events
    # a restart that found a checkpoint logs where it resumed from; one that found none started over and
    # cleared the metrics, so the resumes logged are those after the last start from scratch
    resumed = restarts_with_checkpoint[max((i for i, s in enumerate(restarts_with_checkpoint) if s is None),
                                           default=-1) + 1:]
    assert [e["detail"] for e in events] == [f"resumed from step {s}" for s in resumed], (events, kills)
    assert read_rows(straight / "samples.jsonl") == read_rows(run / "samples.jsonl")
    assert not list((run / "checkpoints").glob(".step-*"))  # no half-written checkpoint left behind
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "samples.jsonl"):  # as readable as before
        assert (run / name).stat().st_mode == (straight / name).stat().st_mode, name
