"""Process-wide settings the trainer makes on a CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A demo-sized step (d_model 128, 128 positions, batch 32) in a fresh process: page faults per step after
# three warm-up steps, with glibc's defaults ("default") or with what the trainer sets ("keep").
STEP_FAULTS = """
import resource, sys
from trainlab.presets import resolve
from trainlab.tasks import prepared
from trainlab import hardware
from trainlab.train.trainer import Trainer

if sys.argv[1] == "default":
    hardware.keep_freed_memory = lambda: False
cfg = resolve("tiny", overrides=["model.d_model=128", "model.n_head=4", "model.seq_len=128", "train.batch_size=32"])
cfg, data = prepared(cfg, log=lambda s: None)
trainer = Trainer(cfg, data, run_dir=sys.argv[2], log=lambda s: None)
for _ in range(3):
    trainer.train_step()
windows = []  # faults a step over three windows of 5 steps; the quietest one (a stray page-in is not the rule)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        trainer.train_step()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
print(min(windows))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in_again(tmp_path):
    """With glibc's defaults each step's activations land on fresh pages the kernel faults in and zeroes
    (8-20k faults a step at this shape, measured); the trainer has glibc keep freed memory for reuse."""
    from trainlab.hardware import keep_freed_memory

    faults = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode, str(tmp_path / mode)], capture_output=True,
                              text=True, check=True)
        faults[mode] = float(proc.stdout.split()[-1])
    assert keep_freed_memory()  # glibc: the settings apply
    assert faults["keep"] * 5 < faults["default"], faults
