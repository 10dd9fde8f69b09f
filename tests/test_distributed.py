"""DDP through torchrun on CPU (gloo): two processes with half the batch each train the same weights as
one process with the whole batch; rank 0 alone writes; a resumed DDP run ends where an unbroken one does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import read_rows

STEPS = ["--preset", "tiny", "--set", "train.max_steps=6", "--set", "train.eval_interval=3",
         "--set", "checkpoint.interval=3", "--set", "train.sample_tokens=0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def trainlab(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "trainlab", "train", *args], capture_output=True, text=True,
                          timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def weights(run) -> dict:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_two_processes_with_half_the_batch_match_one_with_all(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # AdamW: Muon's bf16 orthogonalisation turns rounding-level gradient differences into update
    # differences of a bf16 ulp, far above the fp32 tolerance this comparison of gradients needs
    adamw = ["--set", "optim.name=adamw"]
    trainlab(*STEPS, *adamw, "--set", "train.batch_size=8", "--run-dir", str(one))
    out = trainlab(*STEPS, *adamw, "--set", "train.batch_size=4", "--run-dir", str(two), nproc=2)
    assert out.stdout.count("done: budget at step 6") == 1  # rank 0 alone reports
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for k in a:  # fp32; the two reduce the same gradients in a different order
        assert (a[k] - b[k]).abs().max() < 1e-5, k
    rows_a, rows_b = read_rows(one / "metrics.jsonl"), read_rows(two / "metrics.jsonl")
    train_a = [r for r in rows_a if r["split"] == "train"]
    train_b = [r for r in rows_b if r["split"] == "train"]
    assert len(train_b) == len(train_a) == 6  # written once, by rank 0
    assert [r["tokens"] for r in train_a] == [r["tokens"] for r in train_b]
    for ra, rb in zip(train_a, train_b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-4)
    val_a = [r["loss"] for r in rows_a if r["split"] == "val"]
    val_b = [r["loss"] for r in rows_b if r["split"] == "val"]
    assert val_b == pytest.approx(val_a, rel=1e-5)  # each process scores half; sums are added up


def test_ddp_resume_ends_where_an_unbroken_run_does(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    args = [*STEPS, "--set", "train.batch_size=4"]
    trainlab(*args, "--run-dir", str(whole), nproc=2)
    trainlab(*args, "--run-dir", str(broken), nproc=2)
    ck = broken / "checkpoints"
    shutil.rmtree(ck / "step-00000006")  # as if killed between step 3's checkpoint and the end
    for link in ("last", "best"):
        if (ck / link).is_symlink() and not (ck / link).exists():
            (ck / link).unlink()
    trainlab("--run-dir", str(broken), "--resume", nproc=2)
    a, b = weights(whole), weights(broken)
    for k in a:
        assert (a[k] == b[k]).all(), k
    rows = read_rows(broken / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert any(r.get("kind") == "resume" for r in rows)
