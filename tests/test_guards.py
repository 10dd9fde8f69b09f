"""Guards: non-finite steps are skipped, spikes and repeated NaNs roll back with a lower lr."""

from __future__ import annotations

import pytest

from conftest import read_rows
from trainlab.config import resolve
from trainlab.train import run as run_mod
from trainlab.tasks.causal_lm import CausalLM
from trainlab.train.trainer import Trainer

OVERRIDES = ["model.d_model=64", "model.seq_len=64", "train.batch_size=8", "train.max_steps=150",
             "checkpoint.interval=25", "train.eval_interval=50", "train.sample_tokens=0", "train.log_interval=1"]


def train_with_faults(tmp_path, monkeypatch, name, nan_steps=(), spike_steps=(), extra=()):
    """Train tiny; the loss of the listed step indices turns NaN or 20x (once each, not on replays)."""
    original_step, original_loss = Trainer.train_step, CausalLM.loss
    fired, now = set(), {}

    def step_and_remember(self, lr=None):
        now["step"] = self.progress.step
        return original_step(self, lr)

    def faulty(self, forward, batch):
        loss, parts = original_loss(self, forward, batch)
        step = now["step"]
        if step in nan_steps and ("nan", step) not in fired:
            fired.add(("nan", step))
            return loss * float("nan"), parts
        if step in spike_steps and ("spike", step) not in fired:
            fired.add(("spike", step))
            return loss * 20, parts
        return loss, parts

    monkeypatch.setattr(Trainer, "train_step", step_and_remember)
    monkeypatch.setattr(CausalLM, "loss", faulty)
    cfg = resolve("tiny", overrides=[*OVERRIDES, *extra])
    result = run_mod.train(cfg, tmp_path / name, log=lambda s: None)
    return result, read_rows(tmp_path / name / "metrics.jsonl")


def events(rows, kind=None):
    return [r for r in rows if r["split"] == "event" and (kind is None or r["kind"] == kind)]


def test_isolated_nan_steps_are_skipped_and_logged(tmp_path, monkeypatch):
    result, rows = train_with_faults(tmp_path, monkeypatch, "nan", nan_steps=(30, 70))
    assert result["step"] == 150 and result["stop_reason"] == "budget"
    skips = events(rows, "nonfinite_skip")
    assert [e["step"] for e in skips] == [31, 71]  # the step counter after the skipped step
    assert not events(rows, "rollback")
    # the skipped steps left the weights untouched: training went on normally
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["loss"] is not None for r in train if r["step"] not in (31, 71))


def test_spike_and_repeated_nans_roll_back_and_the_run_recovers(tmp_path, monkeypatch):
    longer = ["train.max_steps=300"]
    clean, clean_rows = train_with_faults(tmp_path, monkeypatch, "clean", extra=longer)
    result, rows = train_with_faults(tmp_path, monkeypatch, "faulty", nan_steps=(60, 61, 62), spike_steps=(110,),
                                     extra=longer)
    assert result["step"] == 300
    rollbacks = events(rows, "rollback")
    assert len(rollbacks) == 2
    assert "rolled back to step 50" in rollbacks[0]["detail"] and "lr x0.5" in rollbacks[0]["detail"]
    assert "loss spike at step 111: rolled back to step 100" in rollbacks[1]["detail"]
    # the spike is seen at step 111, when the first lowering (0.5 at step 50) had recovered to
    # 0.5 + 0.5 * 61/100 = 0.805, so the second rollback sets 0.805 x 0.5
    assert "lr x0.4025" in rollbacks[1]["detail"]
    assert len(events(rows, "nonfinite_skip")) == 3 and len(events(rows, "spike_skip")) == 1
    # no duplicated or missing train steps despite the replays
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == list(range(1, 301))
    final, clean_final = result["val"]["loss"], clean["val"]["loss"]
    assert abs(final - clean_final) / clean_final < 0.05, (final, clean_final)


def test_lr_scale_survives_resume(tmp_path, monkeypatch):
    result, _ = train_with_faults(tmp_path, monkeypatch, "r", spike_steps=(80,))
    from trainlab.train.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "r" / "checkpoints")
    _, state, _ = manager.load(manager.latest_good())
    assert state["lr_scale"] == 0.5 and state["rollbacks"] == 1


def test_too_many_rollbacks_stop_with_intact_checkpoints(tmp_path, monkeypatch):
    from trainlab.train.trainer import Diverged

    with pytest.raises(Diverged, match="guard.max_rollbacks"):
        train_with_faults(tmp_path, monkeypatch, "d", spike_steps=(40, 60, 80),
                          extra=["guard.max_rollbacks=2"])
    from trainlab.train.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "d" / "checkpoints")
    assert manager.latest_good() is not None


def test_spike_test_handles_losses_that_go_negative(tmp_path):
    """A series tokenizer's total loss is negative once its entropy reward wins; drifting around a negative
    median is not a spike, a jump far above it is."""
    from trainlab.config import resolve
    from trainlab.tasks import prepared

    cfg, data = prepared(resolve("tiny"), log=lambda s: None)
    t = Trainer(cfg, data, tmp_path, log=lambda s: None)
    t.progress.recent_losses = [-0.3 + 0.01 * (i % 5) for i in range(50)]
    assert not t._is_spike(-0.2) and not t._is_spike(-0.29)
    assert t._is_spike(1.5)
    t.progress.recent_losses = [2.0 + 0.01 * (i % 5) for i in range(50)]  # positive: spike_factor x the median
    assert not t._is_spike(5.9) and t._is_spike(6.2)
