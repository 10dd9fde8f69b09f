"""ablate and tune: real (tiny) runs through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import cli

SWEEP = {
    "base": {"preset": "tiny", "set": {"train.eval_interval": 10, "train.sample_tokens": 0}},
    "budget": {"tokens": 3840},  # 30 steps of 4 x 32 tokens, 15 of 8 x 32
    "seeds": 2,
    "baseline": "baseline",
    "variants": {"baseline": {}, "big_batch": {"train.batch_size": 8, "optim.lr": 0.03}},
}


def test_ablate_equal_tokens_statistics_and_skip_on_rerun(tmp_path):
    sweep, out = tmp_path / "sweep.yaml", tmp_path / "out"
    sweep.write_text(yaml.safe_dump(SWEEP))
    first = cli("ablate", str(sweep), "--out", str(out), "--workers", "2").stdout
    summary = json.loads((out / "results.json").read_text())
    runs = summary["runs"]
    assert len(runs) == 4 and not any(r.get("failed") for r in runs)
    assert {r["tokens"] for r in runs} == {3840}  # equal data exposure
    assert {r["steps"] for r in runs if r["variant"] == "big_batch"} == {15}
    assert sorted({r["seed_value"] for r in runs}) == [1337, 1338]
    from scipy import stats

    rows = {v["variant"]: v for v in summary["variants"]}
    base = rows["baseline"]["val_loss"]["values"]
    high = rows["big_batch"]["val_loss"]["values"]
    assert base[0] != base[1]  # two seeds, two results
    expected = stats.ttest_ind(high, base, equal_var=False).pvalue
    assert rows["big_batch"]["vs_baseline"]["p"] == pytest.approx(expected)
    assert rows["big_batch"]["vs_baseline"]["diff"] == pytest.approx(sum(high) / 2 - sum(base) / 2)
    md = (out / "results.md").read_text()
    assert "| baseline |" in md and "All runs saw the same number of tokens." in md
    assert "| variant | val loss (mean ± std) | 95% interval |" in first
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4 and "big_batch" in html
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = cli("ablate", str(sweep), "--out", str(out)).stdout
    assert "(4 done already)" in again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps


def test_a_sweep_across_tokenizers_or_data_says_its_losses_are_not_like_for_like(tmp_path):
    from trainlab.experiment.ablate import aggregate, load_sweep, results_markdown

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": {"preset": "tiny"}, "variants": {
        "char": {}, "bpe": {"data.tokenizer": "bpe", "data.bpe_vocab_size": 512}}}, sort_keys=False))
    [note] = load_sweep(sweep).notes
    assert note.startswith("the variants use different tokenizers (char: char, bpe: bpe 512)") and "bits_per_char" in note
    assert f"Note: {note}." in results_markdown(aggregate(load_sweep(sweep), []))
    sweep.write_text(yaml.safe_dump({"base": {"preset": "tiny"}, "variants": {
        "shakespeare": {}, "news": {"data.source": "people-daily"}}}, sort_keys=False))
    assert load_sweep(sweep).notes == ["the variants read different data (shakespeare: shakespeare, news: people-daily): "
                                       "each is scored on its own validation text"]
    sweep.write_text(yaml.safe_dump(SWEEP))
    assert load_sweep(sweep).notes == []  # batch and lr variants compare like for like


SPACE = {"params": {"optim.lr": {"low": 1e-3, "high": 3e-2, "log": True}},
         "budget": {"steps": 12}, "pruner": "median", "set": {"train.eval_interval": 4, "train.sample_tokens": 0}}


def test_two_tune_processes_share_one_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    space, out = tmp_path / "space.yaml", tmp_path / "out"
    space.write_text(yaml.safe_dump(SPACE))
    cmd = [sys.executable, "-m", "trainlab", "tune", str(space), "--preset", "tiny", "--trials", "6", "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outputs):
        assert p.returncode == 0, e
    study = optuna.load_study(study_name="space", storage=JournalStorage(JournalFileBackend(str(out / "journal.log"))))
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # the cap is checked after each trial, so each process may start one more before it sees the total
    assert 6 <= len(finished) <= 7
    assert len({t.user_attrs["pid"] for t in finished}) == 2  # both processes contributed
    assert all(1e-3 <= t.params["optim.lr"] <= 3e-2 for t in finished)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(study.best_trial.params["optim.lr"])
    assert any("best: trial" in o for o, _ in outputs)
    # one line a trial, not each trial's progress lines interleaved across processes
    assert not any(line.startswith("step ") for o, _ in outputs for line in o.splitlines())


def test_a_tune_space_is_refused_only_for_a_value_no_combination_makes_valid(tmp_path):
    """model.n_head 3 is valid beside model.d_model 48 and not beside 64: the space may give it (a trial that
    draws 64 with 3 is pruned and says why); n_head 5 divides neither width, so the space is refused."""
    from trainlab.errors import ConfigError
    from trainlab.experiment.tune import check_space, load_space
    from trainlab.presets import resolve

    base = resolve("tiny").to_dict()
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": {"model.d_model": {"choices": [48, 64]},
                                               "model.n_head": {"choices": [3, 4]}}}))
    check_space(base, load_space(path), path)
    path.write_text(yaml.safe_dump({"params": {"model.d_model": {"choices": [48, 64]},
                                               "model.n_head": {"choices": [4, 5]}}}))
    with pytest.raises(ConfigError, match="'model.n_head': the value 5 makes an invalid config"):
        check_space(base, load_space(path), path)


def _wait_for(metrics, needle: str = '"split": "train"', deadline_s: float = 120.0) -> None:
    """Until metrics.jsonl holds `needle` (by default a training row)."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if metrics.exists() and needle in metrics.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{metrics} never held {needle}")


def test_an_interrupted_tune_stops_and_a_killed_ones_trial_is_marked_failed(tmp_path):
    """Ctrl-C (SIGINT) during a trial: the trial is marked failed, not counted at its partial loss, and the
    study stops with exit 130. A process killed outright leaves its trial RUNNING; the next tune on this host
    marks it failed."""
    import os
    import signal

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from trainlab.experiment.tune import fail_dead_trials

    space, out = tmp_path / "space.yaml", tmp_path / "out"
    space.write_text(yaml.safe_dump({**SPACE, "budget": {"steps": 100_000}}))
    cmd = [sys.executable, "-m", "trainlab", "tune", str(space), "--preset", "tiny", "--trials", "3", "--out", str(out)]
    for number, sig in ((0, signal.SIGINT), (1, signal.SIGKILL)):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(out / "trials" / f"trial-{number:04d}" / "metrics.jsonl")
        os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), stderr
        if sig == signal.SIGINT:
            assert f"trial {number}: " in stdout and "interrupted at step" in stdout and "Traceback" not in stderr
    store = JournalStorage(JournalFileBackend(str(out / "journal.log")))
    study = optuna.load_study(study_name="space", storage=store)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
    assert study.trials[0].user_attrs["interrupted_at"] > 0
    said: list[str] = []
    fail_dead_trials(study, store, said.append)
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.FAIL] * 2
    assert said == [f"trial 1: left running by a process that is gone ({study.trials[1].user_attrs['pid']}); "
                    f"marked failed"]


def test_ctrl_c_stops_an_ablate_and_the_next_run_of_the_sweep_resumes(tmp_path):
    """Ctrl-C reaches ablate and its running child alike: the child writes its checkpoint and exits 130, no
    further run starts, ablate exits 130 saying so; the same command again resumes the run from its checkpoint."""
    import os
    import signal

    sweep, out = tmp_path / "sweep.yaml", tmp_path / "out"
    sweep.write_text(yaml.safe_dump({**SWEEP, "budget": {"steps": 100_000}, "seeds": 1}, sort_keys=False))
    cmd = [sys.executable, "-m", "trainlab", "ablate", str(sweep), "--out", str(out)]
    metrics = out / "runs" / "baseline" / "seed-0" / "run" / "metrics.jsonl"
    for attempt in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if attempt == 0:
            _wait_for(metrics)
        else:  # the second start resumes the first run where its checkpoint left it
            _wait_for(metrics, '"kind": "resume"')
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert "baseline seed 0: interrupted; its checkpoint is kept" in stdout and "FAILED" not in stdout
        assert not (out / "runs" / "big_batch").exists()  # nothing started after the interruption
        assert not (out / "runs" / "baseline" / "seed-0" / "result.json").exists()
