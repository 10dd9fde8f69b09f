"""trainlab doctor: readers of real logs, detectors on golden runs, the JSON contract, the report page.

Fixtures: tests/fixtures/doctor/golden/ (real trainlab runs with induced pathologies, made by
scripts/golden_runs.py) and tests/fixtures/doctor/foreign/ (real transformers.Trainer and Lightning
runs, made by scripts/foreign_logs.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from conftest import REPO, cli
from trainlab.doctor import diagnose
from trainlab.doctor.readers import classify, read
from trainlab.doctor.repetition import text_stats

FIX = REPO / "tests" / "fixtures" / "doctor"
GOLDEN = sorted(p.name for p in (FIX / "golden").iterdir())
FOREIGN = {"hf": "trainer_state.json", "lightning": "metrics.csv", "tensorboard": ""}


@pytest.mark.parametrize("name,expected", [
    ("val_loss", ("val", "loss")), ("eval_loss", ("val", "loss")), ("eval/loss", ("val", "loss")),
    ("train/loss", ("train", "loss")), ("train_loss_step", ("train", "loss")), ("train_loss_epoch", None),
    ("loss", ("train", "loss")), ("lr-AdamW", ("train", "lr")), ("train/learning_rate", ("train", "lr")),
    ("grad_norm", ("train", "grad_norm")), ("val_acc", ("val", "acc")), ("epoch", None), ("train/epoch", None),
    ("Loss/train", ("train", "loss")), ("Loss/test", ("val", "loss")), ("training loss", ("train", "loss")),
    ("Accuracy/validation", ("val", "acc")), ("val_loss_step", None), ("val_loss_epoch", ("val", "loss")),
    ("grad_2.0_norm_total", ("train", "grad_norm")), ("grad_2.0_norm/layer.weight", None), ("lr/group_0", ("train", "lr")),
])
def test_metric_names_map_to_ours(name, expected):
    assert classify(name) == expected


def test_golden_cases_exist():
    assert set(GOLDEN) == {"healthy", "lr_too_low", "lr_too_high", "no_warmup_instability", "overfitting",
                           "undertrained"}


@pytest.mark.parametrize("case", GOLDEN)
def test_golden_top_finding(case, tmp_path):
    run = tmp_path / case
    shutil.copytree(FIX / "golden" / case, run)
    diag = diagnose(run, check_data=False)
    ids = [f.id for f in diag.findings]
    if case == "healthy":
        assert not [f for f in diag.findings if f.severity == "high"], ids
        assert diag.verdict != "failing"
    else:
        assert diag.findings and diag.findings[0].id == case, ids
        assert diag.findings[0].severity == "high"
        assert diag.verdict == "failing"
    for f in diag.findings:  # evidence carries numbers from the run; overrides are real config keys
        assert any(ch.isdigit() for ch in f.evidence)
        from trainlab.presets import config_class

        assert set(f.suggested_overrides) <= set(config_class().keys()), f.suggested_overrides


def test_overfitting_names_the_early_stopping_step():
    diag = diagnose(FIX / "golden" / "overfitting", check_data=False)
    f = next(f for f in diag.findings if f.id == "overfitting")
    rows = [json.loads(x) for x in (FIX / "golden" / "overfitting" / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["loss"]) for r in rows if r["split"] == "val"]
    best_step = min(val, key=lambda v: v[1])[0]
    assert f.data["best_step"] == best_step
    assert f.data["stop_step"] > best_step and f"step {f.data['stop_step']}" in f.evidence


@pytest.mark.parametrize("tool", list(FOREIGN))
def test_foreign_reader_gives_one_series(tool):
    path = FIX / "foreign" / tool / "healthy" / FOREIGN[tool]
    s = read(path)
    assert s.source == {"hf": "hf_trainer", "lightning": "lightning", "tensorboard": "tensorboard"}[tool]
    steps, loss = s.col("loss")
    vsteps, vloss = s.col("loss", "val")
    assert len(loss) >= 20 and len(vloss) >= 5
    assert list(steps) == sorted(steps) and loss[-1] < loss[0] and vloss[-1] < vloss[0]
    assert s.has("lr") and s.fact("peak_lr") == pytest.approx(3e-3, rel=1e-3)
    assert s.fact("warmup_steps") > 0


@pytest.mark.parametrize("tool", list(FOREIGN))
@pytest.mark.parametrize("case", ["healthy", "lr_too_high", "lr_too_low"])
def test_foreign_logs_are_diagnosed(tool, case):
    diag = diagnose(FIX / "foreign" / tool / case / FOREIGN[tool])
    ids = [(f.id, f.severity) for f in diag.findings]
    if case == "healthy":
        assert not [f for f in diag.findings if f.severity == "high"], ids
    else:
        assert diag.findings and diag.findings[0].id == case, ids


def test_doctor_json_contract_and_files(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIX / "golden" / "lr_too_low", run)
    out = cli("doctor", str(run), "--json", "--no-data-check").stdout
    doc = json.loads(out)
    assert doc["verdict"] in ("healthy", "needs_attention", "failing")
    assert doc["findings"][0]["id"] == "lr_too_low"
    for f in doc["findings"]:
        assert set(f) == {"id", "severity", "evidence", "recommendation", "suggested_overrides"}
        assert f["severity"] in ("high", "medium", "low")
    assert doc["findings"][0]["suggested_overrides"]["optim.lr"] > 3e-5
    assert json.loads((run / "diagnosis.json").read_text())["findings"] == doc["findings"]
    assert (run / "report.html").stat().st_size > 1000


def test_doctor_on_foreign_logs_writes_beside_them(tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(FIX / "foreign" / "hf" / "lr_too_high", src)
    text = cli("doctor", str(src / "trainer_state.json")).stdout
    assert "lr_too_high" in text and (src / "doctor" / "report.html").exists()
    cli("doctor", str(src / "trainer_state.json"), "--out", str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "diagnosis.json").exists()
    # where the folder beside the logs cannot be made (here a file holds its name; or a read-only mount), the
    # diagnosis still prints, and one line says the report was not written
    shutil.rmtree(src / "doctor")
    (src / "doctor").write_text("mine")
    proc = cli("doctor", str(src / "trainer_state.json"), "--json")
    assert json.loads(proc.stdout)["findings"][0]["id"] == "lr_too_high"
    assert "report not written" in proc.stderr and "--out" in proc.stderr and "Traceback" not in proc.stderr
    assert (src / "doctor").read_text() == "mine"


def test_a_healthy_fine_tune_is_not_blamed_on_its_lr(tmp_path):
    """The Trainer's default lr (5e-5) fine-tuning pretrained weights (scripts/foreign_logs.py finetune): the
    loss starts far below ln(vocab) and barely moves. With the model's config.json beside the log the doctor
    knows it is a fine-tune; without it, an unmoving loss at that lr is said at medium, with why it may not be."""
    src = FIX / "foreign" / "hf" / "finetune"
    diag = diagnose(src / "trainer_state.json")
    assert diag.series.fact("vocab_size") == 80  # the characters of the bundled Shakespeare
    assert not [f for f in diag.findings if f.severity == "high" or f.id in ("lr_too_low", "lr_too_high")]
    bare = tmp_path / "finetune"
    bare.mkdir()
    shutil.copy(src / "trainer_state.json", bare / "trainer_state.json")
    diag = diagnose(bare / "trainer_state.json")
    assert [(f.id, f.severity) for f in diag.findings] == [("lr_too_low", "medium")]
    assert "fine-tune of pretrained weights" in diag.findings[0].evidence and "0 to 0" not in diag.findings[0].evidence


def test_a_slow_fall_at_a_low_lr_is_high_only_when_the_log_shows_a_run_from_scratch(tmp_path):
    """The Trainer's run at lr 3e-5 from scratch (scripts/foreign_logs.py lr_too_low): its loss fell 24% and
    kept falling, which is also how a fine-tune at that lr can look. trainer_state.json alone cannot tell
    which: lr_too_low at medium, saying what would tell. With the model's config.json beside it (a first loss
    near ln V: from scratch) it is high."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIX / "foreign" / "hf" / "lr_too_low" / "trainer_state.json", run / "trainer_state.json")
    first = diagnose(run / "trainer_state.json").findings[0]
    assert (first.id, first.severity) == ("lr_too_low", "medium") and "config.json" in first.evidence
    (run / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 80}))
    first = diagnose(run / "trainer_state.json").findings[0]
    assert (first.id, first.severity) == ("lr_too_low", "high") and "config.json" not in first.evidence


def test_a_finite_loss_that_ends_worse_than_a_uniform_guess_diverged(tmp_path):
    """A run whose loss blew up at lr 100x without warmup and stayed far above ln V, every logged loss finite
    (corpus case tl2-char-lr-100x-noclip-nowarm, a trainlab run): it diverged, which the far too high lr explains.
    The same losses in a Trainer's trainer_state.json count only with a language model's config.json beside it:
    a classifier's or a regression's loss is not a cross-entropy over the vocabulary."""
    from trainlab.doctor.detectors import Curves, chance_loss, diverged

    case = FIX / "corpus" / "tl2-char-lr-100x-noclip-nowarm"
    series = read(case)
    assert chance_loss(series) == pytest.approx(math.log(81))
    assert all(math.isfinite(r["loss"]) for r in series.train)  # nothing non-finite to go on
    found = diverged(Curves(series))
    assert found is not None and "worse than chance" in found.evidence and "81-token" in found.evidence
    first = diagnose(case, check_data=False).findings[0]
    assert first.id == "lr_too_high" and "diverged" in first.explains

    run = tmp_path / "hf"
    run.mkdir()
    history = [{"step": r["step"], "loss": r["loss"], "learning_rate": r["lr"]} for r in series.train]
    (run / "trainer_state.json").write_text(json.dumps({"log_history": history, "global_step": history[-1]["step"]}))
    for arch, fires in (("LlamaForCausalLM", True), ("LlamaForSequenceClassification", False)):
        (run / "config.json").write_text(json.dumps({"architectures": [arch], "vocab_size": 81}))
        foreign = read(run / "trainer_state.json")
        assert (chance_loss(foreign) is not None) == fires, arch
        found = diverged(Curves(foreign))
        assert (found is not None and "worse than chance" in found.evidence) == fires, arch


def test_clip_every_step_is_explained_not_blamed():
    """Seed 000's 'clipping is too strict': every step clipped is a low finding that says why."""
    diag = diagnose(FIX / "golden" / "lr_too_low", check_data=False)
    f = next(f for f in diag.findings if f.id == "clip_too_strict")
    assert f.severity == "low" and "AdamW" in f.recommendation and "%" in f.evidence


def test_capacity_finding_for_seed_000_shape(tmp_path):
    """A 250k vocabulary with 4-dim embeddings: nearly every parameter is an embedding."""
    run = tmp_path / "run"
    shutil.copytree(FIX / "golden" / "healthy", run)
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(vocab_size=250_000, d_model=4, n_head=1, n_layer=2)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    diag = diagnose(run, check_data=False)
    f = next(f for f in diag.findings if f.id == "capacity_too_small")
    assert f.severity == "high" and "250,000" in f.evidence
    assert f.suggested_overrides["data.bpe_vocab_size"] < 250_000 and "smaller vocabulary" in f.recommendation
    # micro-bert's shape: a vocabulary of 1,025 is small already; the advice widens the model, never a larger BPE
    cfg["model"].update(vocab_size=1025, d_model=4)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    f = next(f for f in diagnose(run, check_data=False).findings if f.id == "capacity_too_small")
    assert f.suggested_overrides == {"model.d_model": 128} and "already small" in f.recommendation
    # a fine-tune keeps its base's shape and tokenizer: no override to change them
    cfg["init_from"] = str(tmp_path / "base")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    f = next(f for f in diagnose(run, check_data=False).findings if f.id == "capacity_too_small")
    assert f.suggested_overrides == {} and "wider base model" in f.recommendation


def test_repetition_measures():
    loop = text_stats("To be or not", " to be or not to be or not to be or not to be or not to be")
    prose = text_stats("To be or not", " that is the question: whether 'tis nobler in the mind to suffer the "
                                       "slings and arrows of outrageous fortune")
    assert loop["repeated"] > 0.6 and loop["copied"] == 0.5 and loop["distinct_2"] < 0.4
    assert prose["repeated"] == 0 and prose["copied"] == 0 and prose["distinct_2"] == 1.0


def test_probe_generates_from_validation_prompts(tmp_path):
    run = tmp_path / "run"
    cli("train", "--preset", "tiny", "--set", "train.max_steps=20", "--run-dir", str(run))
    doc = json.loads(cli("doctor", str(run), "--probe", "--json", "--no-data-check").stdout)
    probe = doc["probe"]
    assert probe["plain"]["n"] == 8 and probe["penalised"]["n"] == 8
    for name in ("plain", "penalised"):
        assert 0 <= probe[name]["repeated"] <= 1 and 0 <= probe[name]["copied"] <= 1
    from trainlab.data.corpora import get_corpus

    text = get_corpus("shakespeare").read_text(encoding="utf-8")
    val = text[int(0.9 * len(text)) - 5000:]
    assert all(ex["prompt"] in val for ex in probe["examples"])  # prompts come from the validation split
    assert len(probe["examples"]) == 3 and all(ex["output"] for ex in probe["examples"])


def test_cosine_restarts_are_flagged(tmp_path):
    """Seed 003 warns against cosine with restarts; the doctor notices the lr jumping back up."""
    run = tmp_path / "run"
    cli("train", "--preset", "tiny", "--set", "schedule.name=cosine_restarts", "--set", "schedule.cycles=3",
        "--set", "train.max_steps=60", "--run-dir", str(run))
    diag = diagnose(run, check_data=False)
    f = next(f for f in diag.findings if f.id == "schedule_decays_too_early")
    assert "restarts" in f.evidence and f.suggested_overrides == {"schedule.name": "cosine"}


def test_a_run_the_guards_gave_up_on_is_diverged(tmp_path):
    run = tmp_path / "run"
    proc = cli("train", "--preset", "tiny", "--set", "optim.lr=30", "--set", "schedule.warmup_steps=0",
               "--set", "optim.grad_clip=0", "--set", "train.max_steps=80", "--set", "guard.max_rollbacks=2",
               "--set", "checkpoint.interval=4", "--run-dir", str(run), check=False)
    assert proc.returncode == 1, proc.stderr
    diag = diagnose(run, check_data=False)
    ids = {f.id: f for f in diag.findings}
    assert diag.verdict == "failing" and diag.findings[0].severity == "high"
    # lr 30 is the cause: the divergence is folded into it (or stands alone when lr_too_high is silent)
    if "diverged" in ids:
        assert "guards gave up" in ids["diverged"].evidence and ids["diverged"].suggested_overrides["optim.lr"] == 3.0
    else:
        assert diag.findings[0].id == "lr_too_high" and "diverged" in diag.findings[0].explains
        assert diag.findings[0].suggested_overrides["optim.lr"] < 30


def test_fp32_on_a_bf16_cpu_is_low_mfu(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIX / "golden" / "healthy", run)
    env = json.loads((run / "env.json").read_text())
    env["hardware"]["cpu_bf16"] = True  # the same run, as if made on a CPU with avx512_bf16
    (run / "env.json").write_text(json.dumps(env))
    f = next(f for f in diagnose(run, check_data=False).findings if f.id == "low_mfu")
    assert f.severity == "medium" and f.suggested_overrides == {"train.precision": "bf16"}


def test_bf16_on_a_cpu_without_fast_bf16_is_a_precision_mismatch(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIX / "golden" / "healthy", run)
    assert "precision_mismatch" not in {f.id for f in diagnose(run, check_data=False).findings}
    env = json.loads((run / "env.json").read_text())
    env["precision"] = "bf16"  # the same run, as if made in bf16 on its AVX2 CPU
    (run / "env.json").write_text(json.dumps(env))
    f = next(f for f in diagnose(run, check_data=False).findings if f.id == "precision_mismatch")
    assert f.severity == "medium" and f.suggested_overrides == {"train.precision": "fp32"}
    env["hardware"]["cpu_bf16"] = True  # on a CPU with AVX-512 bf16, bf16 is the right choice
    (run / "env.json").write_text(json.dumps(env))
    assert "precision_mismatch" not in {f.id for f in diagnose(run, check_data=False).findings}


@pytest.mark.parametrize("tool", list(FOREIGN))
def test_a_far_too_high_lr_without_warmup_is_the_lr_not_the_warmup(tool):
    """A constant lr 50x the usual top of the range and no warmup (real Trainer, Lightning and TensorBoard
    logs): the lr is the cause, first, with the early violence folded into it; no warmup advice."""
    diag = diagnose(FIX / "foreign" / tool / "lr_far_no_warmup" / FOREIGN[tool])
    ids = [f.id for f in diag.findings]
    assert ids[0] == "lr_too_high", ids
    assert "no_warmup_instability" not in ids
    first = diag.findings[0]
    assert first.suggested_overrides == {}  # not a trainlab run: its own tool's names instead
    # the TensorBoard run is the Trainer's too: its events hold its TrainingArguments, so their names are used
    key = "learning rate" if tool == "lightning" else "learning_rate"
    assert first.suggested_changes[key] <= 1e-2 / 3 + 1e-12


@pytest.mark.parametrize("tool", list(FOREIGN))
def test_a_run_driven_to_nan_is_diverged_even_when_the_trainer_masks_it(tool):
    """No clipping and a huge lr drive the loss to NaN. The Trainer's logging_nan_inf_filter logs an all-NaN
    window as 0.0; the doctor reads that as NaN, says diverged, and never reports a loss of 0."""
    diag = diagnose(FIX / "foreign" / tool / "nan" / FOREIGN[tool])
    ids = [f.id for f in diag.findings]
    assert ids[0] in ("diverged", "lr_too_high"), ids
    assert "diverged" in ids or "diverged" in diag.findings[0].explains, ids
    text = " ".join(f.evidence for f in diag.findings)
    assert "0 to 0" not in text and "ended at loss 0." not in text and "at 0." not in text
    if tool == "hf":
        assert diag.series.fact("masked_nonfinite"), "the fixture should hold a masked window"


def test_hf_trainer_advice_uses_training_arguments_names(tmp_path):
    """A Trainer run's suggestion speaks TrainingArguments; a warmup given as a ratio stays a ratio."""
    src = tmp_path / "run"
    shutil.copytree(FIX / "foreign" / "hf" / "lr_too_high", src)
    diag = diagnose(src / "trainer_state.json")
    assert all(not f.suggested_overrides for f in diag.findings)
    assert "learning_rate" in diag.findings[0].suggested_changes
    out = cli("doctor", str(src / "trainer_state.json")).stdout
    assert "--set" not in out and "learning_rate = " in out


def test_the_trainers_tensorboard_events_give_its_arguments_and_the_models_vocabulary(tmp_path):
    """The Trainer's TensorBoard callback writes its TrainingArguments and the model's config as JSON text beside
    the scalars: the run's stated settings, its vocabulary, and advice in TrainingArguments' names, as from
    trainer_state.json with training_args.json and config.json beside it."""
    tb = diagnose(FIX / "foreign" / "tensorboard" / "lr_too_high")
    state = diagnose(FIX / "foreign" / "hf" / "lr_too_high" / "trainer_state.json")
    args = tb.series.fact("trainer_args")
    assert args["learning_rate"] == 0.09 and tb.series.fact("stated")["peak_lr"] == 0.09
    assert tb.series.fact("vocab_size") == 80 and tb.series.fact("grad_clip") == args["max_grad_norm"]
    assert tb.findings[0].suggested_changes == state.findings[0].suggested_changes == {"learning_rate": 0.018}
    # without them (events of a plain loop), the change is said in words
    bare = tmp_path / "tb"
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(bare))
    for r in tb.series.train:
        for key in ("loss", "lr", "grad_norm"):
            w.add_scalar(f"train/{key}", r[key], r["step"])
    w.close()
    plain = diagnose(bare)
    assert plain.series.fact("trainer_args") is None and plain.series.fact("vocab_size") is None
    assert set(plain.findings[0].suggested_changes) == {"learning rate"}


def test_lightning_hparams_yaml_states_the_settings_and_the_vocabulary(tmp_path):
    """Lightning saves the module's save_hyperparameters() as hparams.yaml beside metrics.csv. The real
    lr-3e-5 run from scratch (a slow fall that a fine-tune would also show) is lr_too_low at medium alone; with
    the vocabulary stated there (a first loss near ln V: from scratch) it is high, and the stated lr and warmup
    are read as such."""
    run = tmp_path / "version_0"
    run.mkdir()
    shutil.copy(FIX / "foreign" / "lightning" / "lr_too_low" / "metrics.csv", run / "metrics.csv")
    first = diagnose(run / "metrics.csv").findings[0]
    assert (first.id, first.severity) == ("lr_too_low", "medium")
    (run / "hparams.yaml").write_text("model:\n  vocab_size: 80\n  d_model: 64\noptim:\n  lr: 3.0e-05\n"
                                      "  warmup_steps: 34\n  gradient_clip_val: 1.0\nname: char\n")
    diag = diagnose(run / "metrics.csv")
    assert (diag.findings[0].id, diag.findings[0].severity) == ("lr_too_low", "high")
    assert diag.series.fact("vocab_size") == 80 and diag.series.fact("grad_clip") == 1.0
    assert diag.series.fact("stated") == {"peak_lr": 3e-05, "warmup_steps": 34, "grad_clip": 1.0}
    (run / "hparams.yaml").write_text("{}\n")  # what Lightning writes when nothing was saved
    assert diagnose(run / "metrics.csv").findings[0].severity == "medium"


def test_no_finding_on_a_log_too_sparse_to_check_is_not_called_healthy(tmp_path):
    """The real Trainer log of a healthy run, kept at every 100th step (3 training losses, as a default
    logging_steps gives a short run): the lr checks cannot run, so the console and the report say the run was not
    shown healthy, and why; the full log is healthy. The JSON verdict stays one of the contract's three, with
    `checks` saying what did not run."""
    src = FIX / "foreign" / "hf" / "healthy" / "trainer_state.json"
    state = json.loads(src.read_text())
    assert "healthy (0 findings" in cli("doctor", str(src), "--out", str(tmp_path / "full")).stdout
    state["log_history"] = [h for h in state["log_history"] if "loss" not in h or h["step"] % 100 == 0]
    run = tmp_path / "sparse"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps(state))
    out = cli("doctor", str(run / "trainer_state.json")).stdout
    assert "no finding, but not shown healthy" in out
    assert "not checked: lr_too_high (needs 10 finite training losses, the run has 3)" in out
    assert "not shown healthy" in (run / "doctor" / "report.html").read_text()
    doc = json.loads((run / "doctor" / "diagnosis.json").read_text())
    assert doc["unchecked"] == ["lr_too_high", "lr_too_low"]
    assert doc["verdict"] == "healthy" and {"id": "lr_too_high", "ran": False,
                                            "reason": "needs 10 finite training losses, the run has 3"} in doc["checks"]


def test_explained_findings_are_folded_into_their_cause():
    from trainlab.doctor.causes import explain
    from trainlab.doctor.series import RunSeries
    from trainlab.findings import Finding

    series = RunSeries("trainlab", Path("."), facts={"peak_lr": 3e-3})
    found = [Finding("diverged", "high", "e", "r"), Finding("no_warmup_instability", "high", "e", "r",
                                                             {"schedule.warmup_steps": 30})]
    out = explain(found, series)  # a sane lr: the missing warmup is the cause of the divergence
    assert [f.id for f in out] == ["no_warmup_instability"] and out[0].explains == ["diverged"]
    series.facts["peak_lr"] = 0.5  # far above the range: the lr is the cause, and no warmup advice is given
    out = explain([Finding("no_warmup_instability", "high", "e", "r", {"schedule.warmup_steps": 30})], series)
    assert [f.id for f in out] == ["lr_too_high"] and out[0].explains == ["no_warmup_instability"]
    assert out[0].suggested_overrides["optim.lr"] < 1e-2
    assert out[0].to_json()["explains"] == ["no_warmup_instability"]
    assert "explains" not in Finding("x", "low", "e", "r").to_json()  # optional keys appear only when used
