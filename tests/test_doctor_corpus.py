"""The doctor on its labelled corpus (tests/fixtures/doctor/corpus, made by scripts/doctor_corpus.py and
measured by scripts/doctor_eval.py): the corpus is as varied as its description says, and on the fit
half the doctor keeps what it was measured to do. The measure half is reported by doctor_eval, not
asserted here (it is not tuned on)."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("doctor_eval", REPO / "scripts" / "doctor_eval.py")
doctor_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(doctor_eval)

LABELS = doctor_eval.labels()
FIT = [lab for lab in LABELS if lab["split"] == "fit"]

# measured on the fit half (scripts/doctor_eval.py --half fit): the cases whose first finding is the
# labelled cause, and the healthy cases with no high finding; a change that loses one of these fails
FIRST_RIGHT = {
    "hf-char-lr-5000x-noclip-nowarm", "pl-char-lr-3x-nowarm", "pl-char-lr-5000x-noclip-nowarm", "pt-char-data-8k",
    "pt-char-lr-0.01x", "pt-char-lr-10x-noclip-nowarm", "pt-reg-data-400", "tl-char-lr-10x",
    "tl-char-lr-10x-noclip-nowarm", "tl-char-lr-2.5x", "tl-char-lr-3x-nowarm", "tl-mlm-lr-0.1x"}
HEALTHY_CLEAN = {
    "hf-bpe-cosine", "hf-char-constant", "hf-char-data-8k", "hf-char-lr-0.3x", "pl-bpe-lr-3x", "pl-char-wsd",
    "pt-char-clip-0.05", "pt-char-constant", "pt-char-lr-10x", "pt-char-lr-2.5x", "pt-reg-constant-600-steps",
    "pt-reg-tanh-16-layers", "tl-bpe-lr-0.3x", "tl-bpe-lr-3x", "tl-char-batch-2", "tl-char-data-8k",
    "tl-char-onecycle", "tl-mlm-cosine", "tl-mlm-lr-3x"}


def test_the_corpus_is_as_described():
    assert len(LABELS) >= 60
    writers = Counter(lab["writer"] for lab in LABELS)
    assert set(writers) == {"trainlab", "hf", "lightning", "plain"} and min(writers.values()) >= 10, writers
    assert {"char", "bpe", "mlm", "reg"} <= {lab["model"] for lab in LABELS}
    assert sum(lab["borderline"] for lab in LABELS) * 3 >= len(LABELS)
    assert sum(lab["healthy"] for lab in LABELS) >= 10
    for lab in LABELS:  # the split is the stated rule, and every label carries what confirmed it
        assert lab["split"] == doctor_eval.split_of(lab["case"])
        assert not set(lab["expected"]) & set(lab["must_not"]) and lab["note"]
        assert lab["healthy"] == (not lab["expected"])


@pytest.fixture(scope="module")
def fit_rows():
    return {lab["case"]: doctor_eval.judge(lab) for lab in FIT}


def test_the_floors_name_fit_cases_of_the_right_kind():
    fit = {lab["case"]: lab for lab in FIT}
    assert FIRST_RIGHT <= set(fit) and HEALTHY_CLEAN <= set(fit)
    assert not any(fit[c]["healthy"] for c in FIRST_RIGHT) and all(fit[c]["healthy"] for c in HEALTHY_CLEAN)


def test_first_finding_is_the_cause_where_it_was(fit_rows):
    lost = sorted(c for c in FIRST_RIGHT if not fit_rows[c]["first_ok"])
    assert not lost, {c: fit_rows[c]["found"] for c in lost}


def test_no_high_finding_on_healthy_fit_cases(fit_rows):
    high = {c: r["high_on_healthy"] for c, r in fit_rows.items() if c in HEALTHY_CLEAN and r["high_on_healthy"]}
    assert not high
