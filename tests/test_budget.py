"""The time budget (train.max_seconds): where a run stops, and how its lr schedule is paced on the number of
steps the time allows."""

from __future__ import annotations

import time
import types

import pytest

from conftest import read_rows
from trainlab.presets import resolve
from trainlab.train import run as run_mod
from trainlab.train import trainer as trainer_mod
from trainlab.train.budget import Pace
from trainlab.train.schedules import lr_multiplier

TIME_BUDGET = ["train.max_steps=null", "train.sample_tokens=0", "train.peak_flops=1e12"]


def test_pace_estimates_the_total_from_whichever_budget_binds():
    time_only = Pace(total_steps=None, max_seconds=10.0)
    assert time_only.schedule_total(0, 0.0) == 1e12  # nothing known yet: the schedule has not started
    assert time_only.schedule_total(5, 2.5) == pytest.approx(20.0)  # a quarter of the time for 5 steps
    assert time_only.schedule_total(5, 0.001) == pytest.approx(50_000.0)
    assert time_only.fraction_done(5, 2.5) == pytest.approx(0.25) and not time_only.done(19, 9.99)
    assert time_only.done(20, 10.0)
    both = Pace(total_steps=100, max_seconds=10.0)
    assert both.schedule_total(10, 5.0) == pytest.approx(20.0)  # time binds: half the time for a tenth of the steps
    assert both.schedule_total(50, 1.0) == 100.0  # steps bind
    assert both.done(100, 1.0) and both.done(30, 10.0) and not both.done(99, 9.9)
    assert not Pace(None, None).done(10**9, 1e9)


def test_max_seconds_stops_on_time_with_the_schedule_paced_to_end_there(tmp_path, monkeypatch):
    """A fake clock that moves 0.5 s during each training step (and not otherwise): a 10-second budget is 20
    steps, and the lr follows the schedule a 20-step run has, down to its end, without knowing that in advance."""
    clock = [0.0]
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=lambda: clock[0], time=time.time))
    step = trainer_mod.Trainer.train_step

    def half_a_second(self, lr=None):
        out = step(self, lr)
        clock[0] += 0.5
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", half_a_second)
    cfg = resolve("tiny", overrides=[*TIME_BUDGET, "train.max_seconds=10"])
    result = run_mod.train(cfg, tmp_path / "t", log=lambda s: None)
    assert result["stop_reason"] == "budget" and result["step"] == 20 and result["elapsed_s"] == 10.0
    train = [r for r in read_rows(tmp_path / "t" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert [r["elapsed_s"] for r in train] == [0.5 * r["step"] for r in train]
    peak = cfg.optim.lr
    for r in train:  # a row's lr was set when step - 1 steps were done
        assert r["lr"] == pytest.approx(peak * lr_multiplier(cfg.schedule, r["step"] - 1, 20), rel=1e-9), r["step"]
    assert train[-1]["lr"] < 0.06 * peak  # cosine to 5%: the end of the schedule is reached at the budget's end
    val = [r for r in read_rows(tmp_path / "t" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20]


def test_max_seconds_on_the_real_clock(tmp_path):
    cfg = resolve("tiny", overrides=[*TIME_BUDGET, "train.max_seconds=1.5", "train.eval_interval=1000000"])
    result = run_mod.train(cfg, tmp_path / "t", log=lambda s: None)
    assert result["stop_reason"] == "budget" and result["elapsed_s"] >= 1.5
    train = [r for r in read_rows(tmp_path / "t" / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == result["step"] >= 5
    assert train[-1]["elapsed_s"] >= 1.5 > train[-2]["elapsed_s"]  # it stopped at the first step past the budget
    assert train[-1]["lr"] < 0.2 * cfg.optim.lr  # and its schedule had (nearly) run its course by then
    assert max(r["lr"] for r in train) > 0.8 * cfg.optim.lr
