"""fp16 with a gradient scaler. A CPU is refused fp16 (`trainlab.hardware.resolve_precision`); these tests let
it through, since torch's CPU autocast runs float16 and its GradScaler works on a CPU, to check the trainer's
scaler path: a step runs in fp16, the scale is checkpointed, and an overflowing step is skipped with the
scale halved."""

from __future__ import annotations

import math

import pytest
import torch

from trainlab import hardware
from trainlab.errors import ConfigError
from trainlab.presets import resolve
from trainlab.tasks import prepared
from trainlab.train.trainer import Trainer
from conftest import snapshot


def fp16_cfg(*overrides):
    return prepared(resolve("tiny", overrides=["train.precision=fp16", *overrides]), log=lambda s: None)


def fp16_trainer(tmp_path, monkeypatch, *overrides) -> Trainer:
    resolve_precision = hardware.resolve_precision
    monkeypatch.setattr(hardware, "resolve_precision",
                        lambda name, device: "fp16" if name == "fp16" else resolve_precision(name, device))
    cfg, data = fp16_cfg(*overrides)
    return Trainer(cfg, data, tmp_path, log=lambda s: None)


def test_fp16_is_refused_on_a_cpu(tmp_path):
    cfg, data = fp16_cfg()
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        Trainer(cfg, data, tmp_path, log=lambda s: None)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])  # AdamW is torch's fused one, which the scaler drives itself
def test_scaler_steps_checkpoints_its_scale_and_skips_an_overflow(tmp_path, monkeypatch, optimizer):
    t = fp16_trainer(tmp_path / "a", monkeypatch, f"optim.name={optimizer}", "guard.skip_nonfinite=false")
    assert t.precision == "fp16" and t.scaler.is_enabled()
    dtypes = []
    hook = t.model.lm_head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    start = snapshot(t)
    out = t.train_step()
    hook.remove()
    assert dtypes == [torch.float16]  # the step's matmuls ran in fp16
    assert out["finite"] and math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])
    moved = snapshot(t)
    assert any(not torch.equal(start[k], moved[k]) for k in start if k.startswith("w:"))
    assert t.scaler.get_scale() == 2.0 ** 16  # torch's initial scale, kept after a good step
    state = t.state_dict()["scaler"]
    assert state["scale"] == 2.0 ** 16 and state["_growth_tracker"] == 1

    # a scale so large that the fp16 gradients overflow: the scaler, not the guards (skip_nonfinite is off),
    # must leave the step out, and halve its scale; the guards see no divergence (no streak, no rollback)
    t.scaler.update(2.0 ** 100)
    out = t.train_step()
    assert math.isfinite(out["loss"]) and not math.isfinite(out["grad_norm"])  # the loss is fine; its gradients are not
    assert out["overflow"] and out["finite"] and not out["spike"]
    assert t.progress.nonfinite_streak == 0 and t.progress.skipped_steps == 1 and t.progress.rollbacks == 0
    after = snapshot(t)
    assert after.keys() == moved.keys() and all(torch.equal(moved[k], after[k]) for k in moved)
    assert t.scaler.get_scale() == 2.0 ** 99
    state = t.state_dict()["scaler"]
    assert state["scale"] == 2.0 ** 99 and state["_growth_tracker"] == 0

    # the scale is part of the trainer's checkpointed state: a new trainer resumes with it
    t2 = fp16_trainer(tmp_path / "b", monkeypatch, f"optim.name={optimizer}", "guard.skip_nonfinite=false")
    assert t2.scaler.get_scale() == 2.0 ** 16
    t2.load_state_dict(t.state_dict())
    assert t2.scaler.get_scale() == 2.0 ** 99 and t2.state_dict()["scaler"] == state
