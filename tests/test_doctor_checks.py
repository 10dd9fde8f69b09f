"""The doctor's checks list and the seeds' checks: vanishing_gradients, plateau, schedule_mismatch,
grad_norm_rising, no_weight_decay, loss_spikes.

Each check is shown on the real golden healthy run (tests/fixtures/doctor/golden/healthy, made by
scripts/golden_runs.py) with one controlled change to its logged metrics or its config, and the same run
unchanged shows that the check stays silent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, cli, read_rows
from trainlab.doctor import diagnose, diagnose_series
from trainlab.doctor.checks import NEEDS, NEW
from trainlab.doctor.detectors import DETECTORS
from trainlab.doctor.readers import read

GOLDEN = REPO / "tests" / "fixtures" / "doctor" / "golden"
ALL_IDS = [d.__name__ for d in DETECTORS + NEW]


def _copy(tmp_path: Path, case: str = "healthy") -> Path:
    run = tmp_path / case
    shutil.copytree(GOLDEN / case, run)
    return run


def _edit_rows(run: Path, change) -> None:
    """Rewrite metrics.jsonl with `change(row, i)` applied to each training row (i counts them)."""
    rows = read_rows(run / "metrics.jsonl")
    i = 0
    for row in rows:
        if row.get("split") == "train":
            change(row, i)
            i += 1
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _edit_config(run: Path, section: str, **values) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg[section].update(values)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _ids(run: Path) -> dict:
    return {f.id: f for f in diagnose(run, check_data=False).findings}


def test_every_detector_states_what_it_needs():
    assert all(hasattr(d, "need") or d.__name__ in NEEDS for d in DETECTORS + NEW)
    assert set(NEEDS) <= {d.__name__ for d in DETECTORS}


def test_checks_list_what_ran_and_why_not(tmp_path):
    run = _copy(tmp_path)
    doc = json.loads(cli("doctor", str(run), "--json", "--no-data-check").stdout)
    checks = {c["id"]: c for c in doc["checks"]}
    assert [c["id"] for c in doc["checks"]][: len(ALL_IDS)] == ALL_IDS
    assert all(set(c) == {"id", "ran", "reason"} for c in doc["checks"])
    for ran in ("overfitting", "lr_too_high", "loss_spikes", "grad_norm_rising", "schedule_mismatch", "no_weight_decay"):
        assert checks[ran] == {"id": ran, "ran": True, "reason": None}
    assert checks["expert_imbalance"]["ran"] is False and "mixture of experts" in checks["expert_imbalance"]["reason"]
    page = (run / "report.html").read_text()
    assert "<h2>Checks</h2>" in page and "expected load" not in page and "mixture of experts" in page
    # the same run without its validation rows: no overfitting or undertrained check, and it says why
    series = read(run)
    series.val = []
    diag = diagnose_series(series, check_data=False)
    checks = {c["id"]: c for c in diag.checks}
    assert checks["overfitting"] == {"id": "overfitting", "ran": False, "reason": "no validation loss"}
    assert checks["undertrained"]["ran"] is False
    assert diag.to_json()["checks"] == diag.checks


def test_checks_say_what_a_foreign_log_lacks():
    """A Lightning CSV has no gradient norm and no config: those checks did not run, with the reason."""
    diag = diagnose(REPO / "tests" / "fixtures" / "doctor" / "foreign" / "lightning" / "healthy" / "metrics.csv")
    checks = {c["id"]: c for c in diag.checks}
    assert checks["vanishing_gradients"]["reason"] == "no gradient norm logged"
    assert checks["schedule_mismatch"]["reason"].startswith("needs the configured schedule")
    assert checks["no_weight_decay"]["reason"] == "the weight decay is not known"
    assert checks["plateau"]["ran"] and checks["loss_spikes"]["ran"]


def test_schedule_mismatch(tmp_path):
    run = _copy(tmp_path)
    assert "schedule_mismatch" not in _ids(run)  # the logged lr follows the configured cosine exactly
    _edit_config(run, "schedule", name="constant")  # the config now says constant; the log decays
    f = _ids(run)["schedule_mismatch"]
    assert f.severity == "medium" and "constant schedule" in f.evidence and "%" in f.evidence


def test_no_weight_decay(tmp_path):
    run = _copy(tmp_path)
    assert "no_weight_decay" not in _ids(run)
    _edit_config(run, "optim", weight_decay=0.0)
    f = _ids(run)["no_weight_decay"]
    assert f.severity == "low" and f.suggested_overrides == {"optim.weight_decay": 0.1}


def test_loss_spikes(tmp_path):
    run = _copy(tmp_path)
    assert "loss_spikes" not in _ids(run)
    spiked = {60, 100, 140, 180}  # training rows (every 2nd step) whose loss doubles: a few, not lr_too_high's many
    _edit_rows(run, lambda r, i: r.update(loss=r["loss"] * 2) if i in spiked else None)
    f = _ids(run)["loss_spikes"]
    assert f.data["spike_steps"] == [2 * (i + 1) for i in sorted(spiked)]
    assert "4 training-loss spikes" in f.evidence and f.severity == "medium" and f.suggested_overrides["optim.lr"] == pytest.approx(1.5e-3)


def test_frequent_spikes_are_high_only_when_the_validation_loss_paid_for_them(tmp_path):
    """One training row in ten doubles its loss (a 10% spike rate): hard batches, which leave the weights as they
    were, are medium; the same spikes with the validation loss jumping at the evaluation after one are high."""
    run = _copy(tmp_path)
    _edit_rows(run, lambda r, i: r.update(loss=r["loss"] * 2) if i % 10 == 5 and i > 20 else None)
    f = _ids(run)["loss_spikes"]
    assert f.severity == "medium" and "rose no more after them" in f.evidence
    rows = read_rows(run / "metrics.jsonl")
    for r in rows:  # the evaluation after the spike at step 112 (row 55) comes out 20% worse
        if r["split"] == "val" and r["step"] == 125:
            r["loss"] *= 1.2
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = _ids(run)["loss_spikes"]
    assert f.severity == "high" and "at the evaluation after the spike at step 112" in f.evidence


def test_grad_norm_rising(tmp_path):
    run = _copy(tmp_path)
    assert "grad_norm_rising" not in _ids(run)
    _edit_rows(run, lambda r, i: r.update(grad_norm=r["grad_norm"] * np.exp(i / 40)))  # x150 over the run
    f = _ids(run)["grad_norm_rising"]
    assert f.severity == "high" and "kept rising" in f.evidence


def test_vanishing_gradients(tmp_path):
    run = _copy(tmp_path)
    assert "vanishing_gradients" not in _ids(run)
    rows = [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "train"]
    held = rows[40]["loss"]

    def vanish(r, i):  # from row 40 on: gradients 1e-4 of their size, and the loss stuck where it was
        if i >= 40:
            r.update(grad_norm=r["grad_norm"] * 1e-4, loss=held + 0.01 * np.sin(i))

    _edit_rows(run, vanish)
    found = _ids(run)
    f = found["vanishing_gradients"]
    assert f.severity == "high" and "fell from" in f.evidence and list(found)[0] == "vanishing_gradients"


def test_plateau_at_a_large_lr(tmp_path):
    run = _copy(tmp_path)
    assert "plateau" not in _ids(run)
    rows = [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "train"]
    n = len(rows)
    tail = [r["loss"] for r in rows[int(0.45 * n): int(0.55 * n)]]  # real noise around one level

    def flat(r, i):
        if i >= int(0.55 * n):
            r["loss"] = tail[i % len(tail)]
        if r["step"] > 30:
            r["lr"] = 3e-3

    _edit_rows(run, flat)
    _edit_config(run, "schedule", name="constant")
    rows = read_rows(run / "metrics.jsonl")
    held = next(r["loss"] for r in rows if r["split"] == "val" and r["step"] == 200)
    for r in rows:  # the validation loss stops improving too
        if r["split"] == "val" and r["step"] > 200:
            r["loss"] = held + 0.01 * (r["step"] % 3)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    f = _ids(run)["plateau"]
    assert f.severity == "medium" and f.suggested_overrides == {"schedule.name": "wsd", "schedule.min_lr_ratio": 0.1}
    assert "100% of its peak" in f.evidence


def test_spikes_of_a_far_too_high_lr_are_folded_into_it():
    diag = diagnose(GOLDEN / "lr_too_high", check_data=False)
    assert diag.findings[0].id == "lr_too_high" and "loss_spikes" in diag.findings[0].explains
    assert "loss_spikes" not in [f.id for f in diag.findings]


def test_schedule_mismatch_against_the_settings_a_tool_logged(tmp_path):
    """A Trainer run logged to MLflow states its schedule in its params: the logged lr follows the cosine
    it states, and departs from it once the params claim a linear decay."""
    store = tmp_path / "mlruns"
    shutil.copytree(REPO / "tests" / "fixtures" / "doctor" / "foreign" / "mlflow" / "healthy" / "mlruns", store)
    assert "schedule_mismatch" not in {f.id for f in diagnose(store).findings}
    (param,) = store.glob("*/*/params/lr_scheduler_type")
    param.write_text("linear")
    f = next(f for f in diagnose(store).findings if f.id == "schedule_mismatch")
    assert "configured linear schedule" in f.evidence and f.severity == "medium"


def test_a_plateau_advice_in_the_trainers_names():
    from trainlab.doctor.series import RunSeries
    from trainlab.doctor.vocabulary import localize
    from trainlab.findings import Finding

    f = Finding("plateau", "medium", "e", "r", {"schedule.name": "wsd", "schedule.min_lr_ratio": 0.1})
    localize([f], RunSeries("hf_trainer", Path("/nonexistent/trainer_state.json")))
    assert f.suggested_overrides == {} and f.suggested_changes["lr_scheduler_type"] == "warmup_stable_decay"


def test_a_jump_while_the_lr_warms_up_blames_the_peak_lr(tmp_path):
    """The golden healthy run warms up over 30 steps. One training loss within that warmup (step 10) made 2x its
    lowest so far is lr_too_high, with the step, the lr there and the ratio; the same jump after the warmup is
    a single spike, which lr_too_high does not take for a cause; and a jump 1.3x stays silent."""
    def jump(step: int, factor: float):
        run = _copy(tmp_path / f"{step}-{factor}")
        _edit_rows(run, lambda row, i: row.update(loss=row["loss"] * factor) if row["step"] == step else None)
        return _ids(run)

    found = jump(10, 2.0)["lr_too_high"]
    assert "while the lr was still warming up" in found.evidence and "at step 10" in found.evidence
    assert found.severity == "medium"  # the run trained on past it: the symptom, not lasting harm
    assert found.suggested_overrides["optim.lr"] < 0.01
    assert "lr_too_high" not in jump(100, 2.0)
    assert "lr_too_high" not in jump(10, 1.3)
    assert "lr_too_high" not in _ids(_copy(tmp_path / "unchanged"))
