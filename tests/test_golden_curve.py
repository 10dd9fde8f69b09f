"""The trainer's golden loss curve: short tiny-preset runs (30 steps, fp32, eager, one thread; Muon, AdamW,
and Muon over two accumulated micro-batches) still give the train losses at steps 1, 2, 3, 5, 10, 20, 30
and the validation losses at steps 10, 20, 30 recorded in tests/fixtures/golden_curve.json, which
scripts/golden_curve.py makes.

RTOL comes from measurements on a 2-core AVX-512 CPU with torch 2.13 (largest relative difference over
all recorded losses of all three runs):
  - the same run repeated, in one process and in separate ones: 0 (bitwise equal)
  - train.threads=1 against train.threads=2: 0 (bitwise equal at these shapes)
  - other vector kernels (ATEN_CPU_CAPABILITY=default or avx2, MKL and oneDNN held to AVX2 or less),
    the nearest stand-in here for another CPU: up to 2.7e-5
What the test is there to catch moves them by far more:
  - lr x1.1: 1.3e-2 to 1.6e-2; lr x1.01: 1.3e-3 to 1.6e-3
  - warmup 3 steps instead of 2: 8.7e-3 to 1.1e-2
  - the schedule a step ahead: 1.2e-2 to 1.5e-2; the schedule spanning one step more: 3.5e-3 to 4.8e-3
  - no gradient clipping: 7.5e-4 to 1.6e-3 (13 to 18 of the 30 steps clip at 1.0)
  - min_lr_ratio 0.06 instead of 0.05: 1.0e-3 to 1.4e-3
  - not zeroing gradients between steps: 7.7e-3 to 1.3e-2
  - accumulation keeping the last micro-batch's gradient only: 1.7e-2; summing micro-batch losses
    instead of averaging them: 1.0 (the accumulating run only; the others run one micro-batch)
RTOL = 1e-4 is about 4x the largest kernel-order difference and 7x below the smallest of these changes.
Out of its reach: weight decay x1.1 (2e-5). A different torch version or CPU may reorder float sums
further; if nothing in the loop changed, rerun the script there and commit the fixture with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "golden_curve.json"
RTOL = 1e-4


def _script():
    spec = importlib.util.spec_from_file_location("golden_curve", REPO / "scripts" / "golden_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_curve = _script()
RECORDED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("variant", list(RECORDED["runs"]))
def test_training_reproduces_the_golden_curve(variant):
    assert RECORDED["max_steps"] == golden_curve.MAX_STEPS and variant in golden_curve.VARIANTS
    want = RECORDED["runs"][variant]
    got = golden_curve.run(golden_curve.config(variant, threads=1))
    assert got["train"].keys() == want["train"].keys() and got["val"].keys() == want["val"].keys()
    off = [f"{kind} loss at step {step}: {got[kind][step]:.6f}, recorded {value:.6f}"
           for kind in ("train", "val") for step, value in want[kind].items()
           if not math.isclose(got[kind][step], value, rel_tol=RTOL)]
    assert not off, (f"the {variant} run left its golden curve (rtol {RTOL}; clipped steps {got['clipped_steps']}, "
                     f"recorded {want['clipped_steps']}):\n  " + "\n  ".join(off) +
                     "\nIf the change to the loop is meant, rerun scripts/golden_curve.py and say why in the commit.")
