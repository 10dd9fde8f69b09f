"""trainlab doctor --verify: the paired statistics (no training), a diverged seed, the reasons it does not
run, and one real verify of a small config that is interrupted, resumed and printed as one JSON document."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from trainlab.cli import main
from trainlab.doctor import Diagnosis, summary
from trainlab.doctor.readers import read
from trainlab.errors import TrainlabError
from trainlab.experiment import verify
from trainlab.findings import Finding

GOLDEN = REPO / "tests" / "fixtures" / "doctor" / "golden"
T_975_2 = 4.302652729749464  # the 97.5% quantile of Student's t with 2 degrees of freedom


def test_budget_parsing():
    assert verify.parse_budget(None) == verify.DEFAULT_BUDGET
    assert verify.parse_budget("tokens=100_000") == ("tokens", 100000)
    assert verify.parse_budget("steps=40") == ("steps", 40)
    assert verify.parse_budget("seconds=7.5") == ("seconds", 7.5)
    for bad in ("tokens=0", "steps=2.5", "minutes=3", "tokens", "tokens=-5"):
        with pytest.raises(TrainlabError, match="tokens=N, steps=N or seconds=N"):
            verify.parse_budget(bad)


def test_helped_comes_from_the_paired_interval():
    # seeds that differ a lot from each other, a change that lowers each by about 0.1: the paired interval
    # is narrow and below zero, though the two arms' own spreads overlap almost entirely
    r = verify.compare([3.0, 3.4, 2.6], [2.90, 3.29, 2.51], worst=None)
    diffs = [-0.10, -0.11, -0.09]
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert r["delta"] == pytest.approx(-0.10) and r["baseline_val_loss"] == pytest.approx(3.0)
    assert r["interval"] == pytest.approx([sum(diffs) / 3 - half, sum(diffs) / 3 + half])
    assert r["helped"] is True
    # every seed better, but the differences too spread out for three seeds: not shown
    r = verify.compare([3.0, 3.0, 3.0], [2.99, 2.5, 2.9], worst=None)
    assert r["delta"] < 0 and r["interval"][0] < 0 < r["interval"][1] and r["helped"] is False
    # one seed: no interval, never helped
    r = verify.compare([3.0], [2.0], worst=None)
    assert r["delta"] == pytest.approx(-1.0) and r["interval"] is None and r["helped"] is False
    # worse
    assert verify.compare([2.0, 2.1], [2.5, 2.7], worst=None)["helped"] is False


def test_a_diverged_seed_is_null_and_counts_against_its_arm():
    # the baseline's seed 1 diverged: it counts as the worst loss seen (4.4), so the fix helped
    r = verify.compare([3.0, None, 3.1], [2.9, 2.95, 3.0], worst=4.4)
    assert r["baseline_val_loss"] == pytest.approx((3.0 + 4.4 + 3.1) / 3)
    assert r["delta"] < 0
    # the fixed arm's seed diverged: counted against it, so no help shown
    r = verify.compare([3.0, 3.05, 3.1], [2.9, None, 3.0], worst=4.4)
    assert r["fixed_val_loss"] == pytest.approx((2.9 + 4.4 + 3.0) / 3) and r["helped"] is False
    # the baseline diverged on every seed and the fix on none: helped, even where the worst loss seen is the
    # fix's own (a short verify whose only finite losses are the fixed arm's)
    r = verify.compare([None, None], [4.10, 4.09], worst=4.10)
    assert r["helped"] is True and r["interval"][1] >= 0
    # nothing recorded to count a divergence as: no figures, not helped
    r = verify.compare([None, None], [2.9, 3.0], worst=None)
    assert r["delta"] is None and r["interval"] is None and r["helped"] is False


def test_a_run_that_diverged_keeps_a_result_and_is_not_trained_again(tmp_path, monkeypatch):
    where = tmp_path / "runs" / "fixed" / "seed-1"
    (where / "run").mkdir(parents=True)
    rows = [{"split": "val", "step": 0, "loss": 4.39}, {"split": "train", "step": 1, "loss": float("nan")},
            {"split": "event", "step": 3, "kind": "diverged", "detail": "loss is not finite"}]
    (where / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    calls = []

    def trained(sweep, name, k, where):  # what ablate's runner returns for a run whose trainer exited 1
        calls.append(name)
        done = where / "result.json"
        if done.exists():
            return json.loads(done.read_text())
        return {"variant": name, "seed": k, "failed": True, "returncode": 1, "log": str(where / "train.log")}

    monkeypatch.setattr(verify, "run_one", trained)
    first = verify._settle(None, "fixed", 1, where)
    assert first["diverged"] is True and first["val_loss"] is None
    assert verify._settle(None, "fixed", 1, where) == first  # read back from its result.json
    assert verify._val_losses(where / "run") == [4.39]
    (where / "result.json").unlink()
    (where / "run" / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")  # exit 1 without diverging
    with pytest.raises(verify.VerifyFailed, match="fixed seed 1 failed"):
        verify._settle(None, "fixed", 1, where)


def test_why_it_does_not_run():
    healthy = read(GOLDEN / "healthy")
    assert "no findings" in verify.verify_diagnosis(Diagnosis(healthy, []))["reason"]
    advice = Finding("overfitting", "medium", "val rises", "stop earlier")  # no overrides to try
    out = verify.verify_diagnosis(Diagnosis(healthy, [advice]))
    assert out == {"ran": False, "reason": out["reason"]} and "overfitting" in out["reason"]
    diag = Diagnosis(healthy, [advice])
    diag.verify = out
    assert summary(diag).splitlines()[-1].startswith("verify: not run: the first finding (overfitting)")
    # a speed finding ranked first is passed over for the first finding about training; with only speed
    # findings there is nothing a validation loss could verify
    speed = Finding("low_mfu", "medium", "fp32 on a bf16 CPU", "use bf16", {"train.precision": "bf16"})
    lr = Finding("lr_too_low", "high", "tiny updates", "raise it", {"optim.lr": 1e-3})
    assert verify.target(Diagnosis(healthy, [speed, lr])) is lr
    out = verify.verify_diagnosis(Diagnosis(healthy, [speed]))
    assert not out["ran"] and "speed or bookkeeping" in out["reason"]
    assert not (GOLDEN / "healthy" / "verify").exists()


def trainlab(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process (no interpreter to start): exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_verify_on_another_tools_log_is_one_line_and_exit_0(tmp_path, capsys):
    log = REPO / "tests" / "fixtures" / "doctor" / "foreign" / "hf" / "lr_too_high" / "trainer_state.json"
    code, out, _ = trainlab(capsys, "doctor", str(log), "--verify", "--json", "--out", str(tmp_path))
    doc = json.loads(out)
    assert code == 0 and doc["verify"]["ran"] is False and "another tool's log" in doc["verify"]["reason"]
    code, out, _ = trainlab(capsys, "doctor", str(log), "--verify", "--out", str(tmp_path))
    assert code == 0 and [x for x in out.splitlines() if x.startswith("verify:")] == [
        "verify: not run: " + doc["verify"]["reason"]]
    code, _, err = trainlab(capsys, "doctor", str(log), "--budget", "tokens=5", "--out", str(tmp_path))
    assert code == 2 and err.strip() == "error: --budget and --seeds go with --verify"
    code, _, err = trainlab(capsys, "doctor", str(log), "--verify", "--budget", "hours=2", "--out", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_the_default_budget_is_stated_in_help(capsys):
    kind, amount = verify.DEFAULT_BUDGET
    assert f"Default: {kind}={amount:g}" in " ".join(trainlab(capsys, "doctor", "--help")[1].split())


def small_lr_too_high_run(tmp_path: Path) -> Path:
    """The golden lr_too_high run's metrics (the doctor reads them) with its config shrunk, so that each
    verify run trains in about a second: same lr (0.09), 1 layer, d 16, 16-token windows."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text((GOLDEN / "lr_too_high" / "metrics.jsonl").read_text())
    cfg = yaml.safe_load((GOLDEN / "lr_too_high" / "config.yaml").read_text())
    cfg["model"].update(n_layer=1, n_head=2, d_model=16, seq_len=16)
    cfg["train"].update(batch_size=4, eval_batches=2, eval_interval=1000, sample_tokens=0, threads=1)
    cfg["checkpoint"].update(interval=2)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _shell_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_verify_runs_both_arms_resumes_when_interrupted_and_prints_one_json(tmp_path, capsys):
    run = small_lr_too_high_run(tmp_path)
    base = ["doctor", str(run), "--verify", "--budget", "steps=30", "--no-data-check", "--json"]
    runs = run / "verify" / "runs"
    # first a whole pair: seed 0 of both arms, the runs an interrupted verify must keep
    assert trainlab(capsys, *base, "--seeds", "1")[0] == 0
    diagnosed = (run / "diagnosis.json").read_bytes()
    # then two seeds, with Ctrl-C (the doctor and the runs it started) as soon as a seed-1 run has started; runs
    # already under way may finish (how many depends on the machine's load), those not started are not begun
    # the child starts with Ctrl-C as a shell leaves it (default, unblocked): in the whole suite, the test worker
    # that starts it had been left with SIGINT blocked or ignored, which a child inherits, and Ctrl-C did nothing
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", *base, "--seeds", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_shell_sigint)
    while not list(runs.glob("*/seed-1")) and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    finished = {p: p.read_bytes() for p in runs.glob("*/seed-*/result.json")}
    logs = {p: p.read_bytes() for p in runs.glob("*/seed-*/train.log") if p.parent / "result.json" in finished}
    assert sum(p.parent.name == "seed-0" for p in finished) == 2 and len(finished) >= 2
    assert (run / "diagnosis.json").read_bytes() == diagnosed  # nothing written for an unfinished verify
    args = [*base, "--seeds", "2"]

    code, out, err = trainlab(capsys, *args)
    doc = json.loads(out)  # stdout is exactly one JSON document; progress went to stderr
    assert code == 0 and f"({len(finished)} of 4 runs done already)" in err
    for path, before in finished.items():  # finished runs were not trained again
        assert path.read_bytes() == before
    for path, before in logs.items():
        assert path.read_bytes() == before
    v = doc["verify"]
    assert v["ran"] is True and v["finding"] == "lr_too_high" and v["overrides"] == {"optim.lr": 0.018}
    assert v["budget"] == {"steps": 30} and v["seeds"] == 2 and v["seed_values"] == [1337, 1338]
    results = {(r["variant"], r["seed"]): r for r in
               (json.loads(p.read_text()) for p in runs.glob("*/seed-*/result.json"))}
    assert {r["steps"] for r in results.values()} == {30} and len({r["tokens"] for r in results.values()}) == 1
    base = [results["baseline", k]["val_loss"] for k in range(2)]
    fixed = [results["fixed", k]["val_loss"] for k in range(2)]
    assert v["per_seed"] == {"baseline": base, "fixed": fixed}
    assert v["baseline_val_loss"] == pytest.approx(sum(base) / 2)
    assert v["delta"] == pytest.approx(sum(fixed) / 2 - sum(base) / 2)
    diffs = [f - b for b, f in zip(base, fixed)]
    half = 12.706204736174698 * abs(diffs[0] - diffs[1]) / math.sqrt(2) / math.sqrt(2)  # t(0.975, 1) x std / sqrt(2)
    assert v["interval"] == pytest.approx([v["delta"] - half, v["delta"] + half])
    assert v["helped"] is (v["interval"][1] < 0)
    assert json.loads((run / "diagnosis.json").read_text())["verify"] == v
    assert "<h2>Verify</h2>" in (run / "report.html").read_text()
    assert (run / "verify" / "results.md").exists()
