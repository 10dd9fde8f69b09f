"""Guards: non-finite steps are skipped, spikes and repeated NaNs roll back with a lower lr."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import read_rows, snapshot
from trainlab.presets import resolve
from trainlab.train import run as run_mod
from trainlab.tasks.causal_lm import CausalLM
from trainlab.train.trainer import Trainer

OVERRIDES = ["model.d_model=64", "model.seq_len=64", "train.batch_size=8", "train.max_steps=150",
             "checkpoint.interval=25", "train.eval_interval=50", "train.sample_tokens=0", "train.log_interval=1"]


ORIGINAL_STEP, ORIGINAL_LOSS = Trainer.train_step, CausalLM.loss


def train_with_faults(tmp_path, monkeypatch, name, nan_steps=(), spike_steps=(), extra=(), watch=None, crash_at=None,
                      resume=False):
    """Train tiny; the loss of the listed step indices turns NaN or 20x (once each, not on replays). `watch`
    (a dict) collects the weights and optimizer state before and after each step in the fault lists;
    `crash_at` raises Crash when the trainer starts that step (as a process killed there)."""
    original_step, original_loss = ORIGINAL_STEP, ORIGINAL_LOSS  # not an earlier call's wrappers
    fired, now = set(), {}

    def step_and_remember(self, lr=None):
        now["step"] = step = self.progress.step
        if step == crash_at:
            raise Crash(step)
        if watch is None or step not in {*nan_steps, *spike_steps, *(s - 1 for s in nan_steps)}:
            return original_step(self, lr)
        before = snapshot(self)
        out = original_step(self, lr)
        watch.setdefault(step, (before, snapshot(self), out))
        return out

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
    result = run_mod.train(cfg, tmp_path / name, resume=resume, log=lambda s: None)
    return result, read_rows(tmp_path / name / "metrics.jsonl")


class Crash(Exception):
    pass


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def events(rows, kind=None):
    return [r for r in rows if r["split"] == "event" and (kind is None or r["kind"] == kind)]


def test_isolated_nan_steps_are_skipped_and_logged(tmp_path, monkeypatch):
    watch: dict = {}
    result, rows = train_with_faults(tmp_path, monkeypatch, "nan", nan_steps=(30, 70), watch=watch)
    assert result["step"] == 150 and result["stop_reason"] == "budget"
    skips = events(rows, "nonfinite_skip")
    assert [e["step"] for e in skips] == [31, 71]  # the step counter after the skipped step
    assert not events(rows, "rollback")
    # a skipped step leaves the weights and the optimizer's moments and step counts exactly as they were
    for step in (30, 70):
        before, after, out = watch[step]
        assert not out["finite"] and same(before, after), step
    # while the normal step before each one does move them
    for step in (29, 69):
        before, after, out = watch[step]
        assert out["finite"] and not same(before, after), step
    train = [r for r in rows if r["split"] == "train"]
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in train if r["step"] not in (31, 71))


def test_with_skip_nonfinite_off_a_nan_step_is_applied_and_logged_as_applied(tmp_path, monkeypatch):
    watch: dict = {}
    result, rows = train_with_faults(tmp_path, monkeypatch, "applied", nan_steps=(30,), watch=watch,
                                     extra=["guard.skip_nonfinite=false", "train.max_steps=40"])
    before, after, out = watch[30]
    assert not out["finite"] and not out["skipped"] and not same(before, after)  # the NaN step did reach the weights
    assert not events(rows, "nonfinite_skip")
    applied = events(rows, "nonfinite_step")
    # the NaN weights make the next steps non-finite too, until guard.max_nonfinite (3) rolls the run back
    assert [e["step"] for e in applied] == [31, 32, 33]
    assert all("step applied (guard.skip_nonfinite is off)" in e["detail"] and "skipped" not in e["detail"]
               for e in applied)
    [back] = events(rows, "rollback")
    assert "rolled back to step 25" in back["detail"]
    assert result["step"] == 40 and math.isfinite(result["val"]["loss"])


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


def test_guard_state_survives_a_kill_and_resume(tmp_path, monkeypatch):
    """A spike at step 80 rolls back to step 75 at half the lr; the run dies at step 105 and is resumed from
    its step-100 checkpoint: the guards' state there (lr factor, rollbacks, the loss window of the spike test)
    comes back, and the resumed steps keep following the lowered, recovering lr."""
    import dataclasses

    from trainlab.train.schedules import lr_multiplier

    saved, resumed = {}, {}
    save, resume = Trainer.save_checkpoint, Trainer.resume

    def remembering_save(self, val_loss=None):
        saved[self.progress.step] = dataclasses.asdict(self.progress)
        return save(self, val_loss)

    def remembering_resume(self):
        ok = resume(self)
        resumed.update(dataclasses.asdict(self.progress))
        return ok

    monkeypatch.setattr(Trainer, "save_checkpoint", remembering_save)
    monkeypatch.setattr(Trainer, "resume", remembering_resume)
    extra = ["train.max_steps=120"]
    with pytest.raises(Crash):
        train_with_faults(tmp_path, monkeypatch, "r", spike_steps=(80,), extra=extra, crash_at=105)
    [rollback] = events(read_rows(tmp_path / "r" / "metrics.jsonl"), "rollback")
    assert "loss spike at step 81: rolled back to step 75; lr x0.5" in rollback["detail"]
    assert saved[100]["lr_scale"] == 0.5 and saved[100]["rollbacks"] == 1 and saved[100]["rollback_step"] == 75
    assert len(saved[100]["recent_losses"]) == 50

    result, rows = train_with_faults(tmp_path, monkeypatch, "r", extra=extra, resume=True)
    assert result["step"] == 120 and resumed["step"] == 100
    assert resumed == saved[100]
    # the lr of each resumed step: the schedule's, times the guards' factor recovering from 0.5 at step 75
    cfg = resolve("tiny", overrides=[*OVERRIDES, *extra])
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 121))  # none lost or doubled
    train = {r["step"]: r for r in rows if r["split"] == "train"}
    for step in range(101, 121):  # a row's step counts the step it reports, whose lr was set at step - 1
        scale = 0.5 + 0.5 * (step - 1 - 75) / cfg.guard.lr_recovery_steps
        expected = cfg.optim.lr * scale * lr_multiplier(cfg.schedule, step - 1, 120)
        assert train[step]["lr"] == pytest.approx(expected, rel=1e-9), step


def test_too_many_rollbacks_stop_with_intact_checkpoints(tmp_path, monkeypatch):
    from trainlab.train.trainer import Diverged

    with pytest.raises(Diverged, match="guard.max_rollbacks"):
        train_with_faults(tmp_path, monkeypatch, "d", spike_steps=(40, 60, 80),
                          extra=["guard.max_rollbacks=2"])
    from trainlab.train.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path / "d" / "checkpoints")
    assert manager.latest_good() is not None


def test_spike_test_handles_losses_that_go_negative():
    """A series tokenizer's total loss is negative once its entropy reward wins; drifting around a negative
    median is not a spike, a jump far above it is."""
    from trainlab.train import guards
    from trainlab.train.trainer import Progress

    g = resolve("tiny").guard
    p = Progress(recent_losses=[-0.3 + 0.01 * (i % 5) for i in range(50)])
    assert not guards.spikes(p, -0.2, g) and not guards.spikes(p, -0.29, g)
    assert guards.spikes(p, 1.5, g)
    p.recent_losses = [2.0 + 0.01 * (i % 5) for i in range(50)]  # positive: spike_factor x the median
    assert not guards.spikes(p, 5.9, g) and guards.spikes(p, 6.2, g)


def test_a_run_with_its_guards_off_that_goes_nan_finishes_and_generate_says_so(tmp_path):
    """lr 1e6 with the non-finite guard off: the weights go NaN. The run still finishes (no sample is written
    from a model whose outputs are not finite), `generate` exits 2 with one line, and the doctor names the lr."""
    import json

    from conftest import cli

    run = tmp_path / "div"
    cli("train", "--preset", "tiny", "--run-dir", str(run), "--set", "train.max_steps=10", "--set", "optim.lr=1e6",
        "--set", "optim.name=adamw", "--set", "guard.skip_nonfinite=false", "--set", "train.eval_interval=5")
    vals = [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "val"]
    assert vals and not all(isinstance(r["loss"], float) and math.isfinite(r["loss"]) for r in vals)
    assert (run / "checkpoints").is_dir()
    proc = cli("generate", str(run), "--max-new-tokens", "5", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not finite" in proc.stderr
    doc = json.loads(cli("doctor", str(run), "--json").stdout)
    assert doc["findings"][0]["id"] == "lr_too_high"
