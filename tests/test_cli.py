"""The command line as a user meets it: a tiny real run, its files, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from safetensors.torch import load_file

from conftest import cli, read_rows

TINY = ["--preset", "tiny"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    proc = cli("train", *TINY, "--run-dir", str(run), "--set", "train.max_steps=20")
    return run, proc


def test_run_directory_holds_the_contracted_files(tiny_run):
    run, proc = tiny_run
    assert "effective batch 4 x 1 x 32 = 128 tokens/step" in proc.stdout
    assert "bits per char" in proc.stdout
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["vocab_size"] > 60 and cfg["preset"] == "tiny" and cfg["train"]["max_steps"] == 20
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "python", "command", "hardware", "git_commit", "precision"} <= env.keys()
    rows = read_rows(run / "metrics.jsonl")
    for row in rows:
        assert {"step", "tokens", "elapsed_s", "split"} <= row.keys()
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 21))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "clip_frac", "weight_norm", "update_ratio", "mfu",
            "peak_memory_mb", "data_wait_frac"} <= train[0].keys()
    assert all(0 <= r["clip_frac"] <= 1 and 0 < r["update_ratio"] < 1 and r["mfu"] > 0 for r in train)
    assert [r["step"] for r in val] == [10, 20]
    assert {"loss", "ppl", "bits_per_token", "bits_per_char", "acc", "top5", "confidence", "entropy",
            "ece"} <= val[-1].keys()
    assert 0 <= val[-1]["ece"] <= 1 and val[-1]["acc"] <= val[-1]["top5"]
    assert train[-1]["tokens"] == 20 * 4 * 32
    assert val[-1]["loss"] < val[0]["loss"] < 4.5  # it learns
    assert abs(val[-1]["bits_per_char"] - val[-1]["loss"] / 0.6931471805599453) < 1e-9
    assert os.listdir(run / "tb") and any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))
    samples = read_rows(run / "samples.jsonl")
    assert [s["step"] for s in samples] == [10, 20] and all(s["text"] for s in samples)


def test_checkpoints_are_step_folders_with_relative_links(tiny_run):
    run, _ = tiny_run
    ck = run / "checkpoints"
    assert os.readlink(ck / "last") == "step-00000020"
    assert not os.path.isabs(os.readlink(ck / "best"))
    folder = ck / "step-00000020"
    assert {"model.safetensors", "state.pt", "meta.json"} <= set(os.listdir(folder))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 20 and meta["schema_version"] == 1 and set(meta["files"]) == {"model.safetensors", "state.pt"}
    weights = load_file(folder / "model.safetensors")
    assert "embed.weight" in weights


def test_generate_and_eval_on_a_finished_run(tiny_run, tmp_path):
    run, _ = tiny_run
    a = cli("generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1")
    b = cli("generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "1")
    assert a.stdout == b.stdout and a.stdout.startswith("ROMEO:") and len(a.stdout.rstrip("\n")) == 26
    assert a.stderr == ""  # every character of the prompt is in Shakespeare's vocabulary
    # characters the vocabulary lacks are named once each on stderr; the text still comes out
    odd = cli("generate", str(run), "--prompt", "ROMÉO 你好好", "--max-new-tokens", "5", "--seed", "1")
    assert odd.stdout.startswith("ROMÉO 你好好") and odd.stderr.count("\n") == 1
    assert "3 characters the run's vocabulary lacks ('É', '你', '好')" in odd.stderr
    out = json.loads(cli("eval", str(run)).stdout)
    assert out["step"] == 20 and out["loss"] > 0 and "bits_per_char" in out
    other = tmp_path / "sonnet.txt"
    other.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 40)
    out2 = json.loads(cli("eval", str(run), "--data", str(other)).stdout)
    assert out2["data"] == str(other) and out2["loss"] != out["loss"]
    # a file of a few lines is evaluated whole: it needs a window in each split, not a tenth of it to hold one
    short = tmp_path / "couplet.txt"
    short.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
                     "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n"
                     "Sometime too hot the eye of heaven shines,\nAnd often is his gold complexion dimm'd;\n")
    assert json.loads(cli("eval", str(run), "--data", str(short)).stdout)["loss"] > 0


def test_existing_run_needs_resume_or_fresh(tiny_run):
    run, _ = tiny_run
    proc = cli("train", *TINY, "--run-dir", str(run), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--resume" in proc.stderr and "--fresh" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--set", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
    (["--set", "train.batchsize=8"], "did you mean 'train.batch_size'"),
    (["--set", "train.batch_size=lots"], "train.batch_size"),
    (["--set", "optim.lr=-1"], "optim.lr"),
    (["--set", "model.n_head=3"], "model.n_head (3) must divide model.d_model"),
    (["--set", "schedule.name=linear"], "schedule.name"),
    (["--preset", "shakespeare-chars"], "did you mean 'shakespeare-char'"),
    (["--set", "nokey"], "key=value"),
])
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, args, needle):
    preset = [] if "--preset" in args else TINY
    proc = cli("train", *preset, *args, "--run-dir", str(tmp_path / "r"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert needle in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_config_file_and_overrides_stack(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.002\ntrain:\n  batch_size: 3\n")
    run = tmp_path / "r"
    cli("train", "--preset", "tiny", "--config", str(cfg), "--set", "train.batch_size=2",
        "--set", "train.max_steps=2", "--set", "optim.betas=[0.8, 0.99]", "--run-dir", str(run))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.002 and saved["train"]["batch_size"] == 2
    assert saved["optim"]["betas"] == [0.8, 0.99]


def test_the_tests_fork_server_runs_the_cli_as_a_fresh_interpreter_does(tmp_path):
    """The suite's `cli` forks from a warm interpreter (tests/forkserver.py): for a listing, a bad input and a
    short training run, exit code, output and the run's files are what `python -m trainlab` gives."""
    from forkserver import run_trainlab

    def both(*args: str, run: str = "") -> list:
        got = []
        for spawn in ("0", "1"):
            argv = [a.replace("{run}", str(tmp_path / f"{run}{spawn}")) for a in args]
            proc = run_trainlab(argv, {**os.environ, "TRAINLAB_TEST_SPAWN": spawn}, 300)
            text = (proc.stdout + proc.stderr).replace(str(tmp_path / f"{run}{spawn}"), "RUN")
            got.append((proc.returncode, text))
        return got

    for args in (["config"], ["train", *TINY, "--set", "optim.lrr=0.1", "--run-dir", "{run}"]):
        forked, spawned = both(*args, run="bad")
        assert forked == spawned and forked[0] in (0, 2) and forked[1]
    assert not (tmp_path / "bad0").exists() and not (tmp_path / "bad1").exists()
    both("train", *TINY, "--set", "train.max_steps=6", "--set", "train.eval_interval=3", "--run-dir", "{run}", run="r")
    rows = [[(r["step"], r.get("loss")) for r in read_rows(tmp_path / f"r{s}" / "metrics.jsonl") if "loss" in r]
            for s in "01"]
    assert rows[0] == rows[1] and len(rows[0]) >= 6
    assert sorted(p.name for p in (tmp_path / "r0").iterdir()) == sorted(p.name for p in (tmp_path / "r1").iterdir())


def test_a_folder_of_other_files_is_foreign_but_hidden_files_and_run_entries_are_not(tmp_path):
    from trainlab.rundir import is_foreign

    assert not is_foreign(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not is_foreign(tmp_path / "empty")
    (tmp_path / "mac").mkdir()
    (tmp_path / "mac" / ".DS_Store").write_text("x")
    (tmp_path / "mac" / ".gitkeep").write_text("")
    assert not is_foreign(tmp_path / "mac")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("x")
    assert is_foreign(tmp_path / "project")
    (tmp_path / "project" / "metrics.jsonl").write_text("")
    assert not is_foreign(tmp_path / "project")
