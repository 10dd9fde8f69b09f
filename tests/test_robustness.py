"""Survival (the kill loop is tests/test_kill_loop.py): damaged checkpoints, a full disk, pickles, locks, parallel runs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, read_rows
from test_resume import ARGS
from trainlab.presets import resolve
from trainlab.errors import CheckpointError
from trainlab.train import run as run_mod
from trainlab.train.checkpoint import CheckpointManager

LONG = [a.replace("max_steps=60", "max_steps=100") for a in ARGS]


def max_step(metrics: Path) -> int:
    if not metrics.exists():
        return -1
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=-1)


@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "run"
    cli("train", "--preset", "tiny", "--set", "train.max_steps=30", "--set", "checkpoint.keep_last=3",
        "--run-dir", str(run))
    return run


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(finished_run, damage):
    newest = finished_run / "checkpoints" / "step-00000030"
    target = newest / ("model.safetensors" if damage == "truncate" else "state.pt")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    proc = cli("train", "--preset", "tiny", "--run-dir", str(finished_run), "--resume", "--set", "train.max_steps=40")
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step-00000030" in warnings[0] and "using an earlier one" in warnings[0]
    assert [e["detail"] for e in read_rows(finished_run / "metrics.jsonl") if e["split"] == "event"] == \
        ["resumed from step 20"]
    manager = CheckpointManager(finished_run / "checkpoints")
    assert manager.latest_good() == 40 and manager.verify(30) is None  # step 30 was written again, intact


def test_full_disk_gives_one_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    from trainlab.train import checkpoint

    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_until_full(tensors, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", save_until_full)
    cfg = resolve("tiny", overrides=["train.max_steps=30"])
    with pytest.raises(CheckpointError) as err:
        run_mod.train(cfg, tmp_path / "r", log=lambda s: None)
    message = str(err.value)
    assert "No space left on device" in message and "earlier checkpoints are intact" in message and "\n" not in message
    manager = CheckpointManager(tmp_path / "r" / "checkpoints")
    assert manager.all_steps() == [10] and manager.verify(10) is None
    assert not [p for p in (tmp_path / "r" / "checkpoints").iterdir() if p.name.startswith(".")]


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(finished_run, tmp_path):
    import hashlib

    import torch

    marker = tmp_path / "payload-ran"
    folder = finished_run / "checkpoints" / "step-00000030"
    torch.save({"optimizer": Payload(str(marker))}, folder / "state.pt")
    meta = json.loads((folder / "meta.json").read_text())  # even with a matching checksum
    meta["files"]["state.pt"] = hashlib.sha256((folder / "state.pt").read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))
    proc = cli("train", "--preset", "tiny", "--run-dir", str(finished_run), "--resume",
               "--set", "train.max_steps=40", check=False)
    assert proc.returncode == 2 and "refusing to load it" in proc.stderr and proc.stderr.count("\n") == 1
    assert not marker.exists()


def test_second_trainer_on_one_run_directory_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *LONG, "--set", "train.max_steps=100000",
                              "--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and max_step(run / "metrics.jsonl") < 1:
            time.sleep(0.01)
        for flag in ("--resume", "--fresh"):
            second = cli("train", *LONG, "--run-dir", str(run), flag, check=False)
            assert second.returncode == 2, second.stderr
            assert f"in use by process {first.pid}" in second.stderr and second.stderr.count("\n") == 1
        assert first.poll() is None and (run / "metrics.jsonl").exists()  # --fresh removed nothing
    finally:
        first.kill()
        first.wait()
    assert (run / ".lock").read_text().strip() == str(first.pid)  # the dead owner's lock file remains
    cli("train", *LONG, "--run-dir", str(run), "--resume", "--set", "train.max_steps=30")


def test_four_trainings_at_once_share_one_fresh_cache(tmp_path):
    cache = tmp_path / "cache"
    (cache / "corpora").mkdir(parents=True)
    shared = Path(os.environ["TRAINLAB_CACHE"]) / "corpora"
    for name in ("shakespeare.txt", "shakespeare.json"):
        shutil.copy(shared / name, cache / "corpora" / name)
    env = {**os.environ, "TRAINLAB_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-m", "trainlab", "train", "--preset", "tiny",
                               "--set", f"train.seed={i}", "--set", "train.max_steps=40",
                               "--run-dir", str(tmp_path / f"run{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    finals = []
    for i in range(4):
        manager = CheckpointManager(tmp_path / f"run{i}" / "checkpoints")
        assert manager.latest_good() == 40
        finals.append(read_rows(tmp_path / f"run{i}" / "metrics.jsonl")[-1])
    shards = [p for p in (cache / "shards").iterdir()]
    assert len(shards) == 1 and not shards[0].name.startswith(".")  # one cache entry, no leftovers
    assert len({round(r["loss"], 6) for r in finals}) == 4  # four different seeds really ran
