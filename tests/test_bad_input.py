"""Bad input: every case exits 2 with one line naming the file or key, and writes or loses nothing.

The table in docs/errors.md is generated from these cases: run with TRAINLAB_UPDATE_DOCS=1 to
rewrite it; otherwise the last test checks that it is up to date.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, cli

DOC = REPO / "docs" / "errors.md"
RESULTS: dict[str, tuple[str, int, str]] = {}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cli("train", "--preset", "tiny", "--set", "train.max_steps=10", "--run-dir", str(root / "run"))
    return root


def w(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


TINY = ["train", "--preset", "tiny"]
NEW = ["--run-dir", "{root}/new"]

# name: (what the user gave, files to create {relative path: content}, argv, expected fragment)
CASES = {
    "empty_text_file": ("an empty .txt file", {"empty.txt": ""},
                        [*TINY, "--set", "data.source={root}/empty.txt", *NEW], "is empty"),
    "binary_file": ("a binary file as text", {"model.bin": b"\x00\x01\x02\xff" * 400},
                    [*TINY, "--set", "data.source={root}/model.bin", *NEW], "looks binary"),
    "non_utf8_text": ("Latin-1 text", {"latin1.txt": "caf\xe9 na\xefve r\xf4le\n".encode("latin-1") * 500},
                      [*TINY, "--set", "data.source={root}/latin1.txt", *NEW], "is not UTF-8 text"),
    "jsonl_broken_line_strict": ("a broken .jsonl line with data.strict=true",
                                 {"b.jsonl": '{"text": "fine line of text"}\n{broken\n' * 50},
                                 [*TINY, "--set", "data.source={root}/b.jsonl", "--set", "data.strict=true", *NEW],
                                 "b.jsonl:2 is not valid JSON"),
    "jsonl_missing_text_field": ("a .jsonl without a `text` field", {"m.jsonl": '{"content": "no text"}\n' * 50},
                                 [*TINY, "--set", "data.source={root}/m.jsonl", *NEW], "set data.text_field"),
    "jsonl_empty": ("an empty .jsonl file", {"e.jsonl": ""},
                    [*TINY, "--set", "data.source={root}/e.jsonl", *NEW], "is empty"),
    "corpus_shorter_than_a_sequence": ("a text shorter than one sequence", {"short.txt": "To be.\n"},
                                       [*TINY, "--set", "data.source={root}/short.txt", *NEW],
                                       "fewer than one sequence of model.seq_len=32"),
    "missing_data_path": ("a data path that does not exist", {},
                          [*TINY, "--set", "data.source={root}/nowhere.txt", *NEW],
                          "is neither a bundled corpus nor an existing path"),
    "corpus_name_typo": ("a misspelt corpus name", {}, [*TINY, "--set", "data.source=shakespear", *NEW],
                         "did you mean the corpus 'shakespeare'"),
    "folder_without_text": ("a folder with no .txt files", {"docs/readme.md": "# nothing"},
                            [*TINY, "--set", "data.source={root}/docs", *NEW], "holds no .txt files"),
    "tokenizer_file_missing": ("a tokenizer.json that does not exist", {},
                               [*TINY, "--set", "data.tokenizer={root}/tok/tokenizer.json", *NEW], "does not exist"),
    "tokenizer_not_json": ("a tokenizer.json that is not JSON", {"tokenizer.json": "hello"},
                           [*TINY, "--set", "data.tokenizer={root}/tokenizer.json", *NEW], "is not valid JSON"),
    "tokenizer_unreadable": ("JSON that is no tokenizer", {"tok2.json": '{"model": 3}'},
                             [*TINY, "--set", "data.tokenizer={root}/tok2.json", *NEW], "is not a tokenizer"),
    "unknown_key": ("a misspelt config key", {}, [*TINY, "--set", "optim.lrr=0.1", *NEW], "did you mean 'optim.lr'"),
    "wrong_type": ("a value of the wrong type", {}, [*TINY, "--set", "train.batch_size=many", *NEW],
                   "config key 'train.batch_size'"),
    "negative_lr": ("a negative learning rate", {}, [*TINY, "--set", "optim.lr=-0.001", *NEW], "config key 'optim.lr'"),
    "infinite_lr": ("an infinite learning rate", {}, [*TINY, "--set", "optim.lr=inf", *NEW],
                    "config key 'optim.lr': input should be a finite number"),
    "negative_seed": ("a negative seed", {}, [*TINY, "--set", "train.seed=-5", *NEW], "config key 'train.seed'"),
    "no_budget": ("no budget at all", {}, [*TINY, "--set", "train.max_steps=null", *NEW],
                  "the run has no budget"),
    "freeze_everything": ("a freeze pattern that matches every parameter", {},
                          [*TINY, '--set=train.freeze=["*"]', *NEW], "freezes every parameter"),
    "freeze_matches_nothing": ("a freeze pattern that matches no parameter", {},
                               [*TINY, '--set=train.freeze=["attn.*"]', *NEW], "matches no parameter"),
    "unfreeze_what_is_not_frozen": ("an unfreeze pattern that releases nothing frozen", {},
                                    [*TINY, '--set=train.unfreeze={{10: ["blocks.*"]}}', *NEW],
                                    "releases no parameter that train.freeze freezes"),
    "heads_do_not_divide_width": ("n_head not dividing d_model", {}, [*TINY, "--set", "model.n_head=3", *NEW],
                                  "must divide model.d_model"),
    "unknown_schedule": ("an unknown schedule", {}, [*TINY, "--set", "schedule.name=linear", *NEW],
                         "config key 'schedule.name'"),
    "unknown_preset": ("an unknown preset", {}, ["train", "--preset", "shakespeare", *NEW],
                       "did you mean one of shakespeare-char, shakespeare-bpe, shakespeare-sft?"),
    "config_file_missing": ("a --config file that does not exist", {},
                            [*TINY, "--config", "{root}/nope.yaml", *NEW], "does not exist"),
    "config_not_yaml": ("a --config file that is not YAML", {"bad.yaml": "optim: [1, 2\n"},
                        [*TINY, "--config", "{root}/bad.yaml", *NEW], "is not valid YAML"),
    "config_not_mapping": ("a --config file holding a list", {"list.yaml": "- 1\n- 2\n"},
                           [*TINY, "--config", "{root}/list.yaml", *NEW], "must hold a mapping"),
    "config_wrong_type": ("a --config file with a wrong type", {"t.yaml": "train:\n  batch_size: many\n"},
                          [*TINY, "--config", "{root}/t.yaml", *NEW], "config key 'train.batch_size'"),
    "config_unknown_key": ("a --config file with an unknown key", {"u.yaml": "optim:\n  weight_decy: 0.1\n"},
                           [*TINY, "--config", "{root}/u.yaml", *NEW], "did you mean 'optim.weight_decay'"),
    "config_is_a_directory": ("a directory as --config", {"cfgdir/x.txt": "x"},
                              [*TINY, "--config", "{root}/cfgdir", *NEW], "is a directory"),
    "run_dir_is_a_file": ("a file as --run-dir", {"afile": "x"}, [*TINY, "--run-dir", "{root}/afile"], "is a file"),
    "existing_run_without_flag": ("an existing run without --resume/--fresh", {},
                                  [*TINY, "--run-dir", "{root}/run"], "pass --resume to continue it or --fresh"),
    "resume_foreign_dir": ("--resume on a folder that is not a run directory", {"notarun/notes.txt": "x"},
                           [*TINY, "--run-dir", "{root}/notarun", "--resume"], "not a trainlab run"),
    "train_into_foreign_dir": ("a new run into a folder of other files", {"project/notes.txt": "x"},
                               [*TINY, "--run-dir", "{root}/project"], "not a trainlab run"),
    "lr_find_out_holds_a_run": ("lr-find --out into a run directory", {}, ["lr-find", "--out", "{root}/run"],
                                "other than an LR range test's"),
    "resume_without_run_dir": ("--resume without --run-dir", {}, [*TINY, "--resume"], "--resume needs --run-dir"),
    "resume_and_fresh": ("--resume and --fresh together", {}, [*TINY, "--run-dir", "{root}/run", "--resume", "--fresh"],
                         "exclude each other"),
    "set_without_equals": ("--set without key=value", {}, [*TINY, "--set", "optim.lr", *NEW], "--set expects key=value"),
    "resume_other_shape": ("resuming with another model shape", {},
                           [*TINY, "--run-dir", "{root}/run", "--resume", "--set", "model.d_model=64"],
                           "cannot resume"),
    "resume_other_tokenizer": ("resuming with another tokenizer", {},
                               [*TINY, "--run-dir", "{root}/run", "--resume", "--set", "data.tokenizer=byte"],
                               "data.tokenizer='byte'"),
    "vocab_smaller_than_tokenizer": ("model.vocab_size below the tokenizer's", {},
                                     [*TINY, "--set", "model.vocab_size=10", *NEW], "smaller than the tokenizer's"),
    "mlm_fractions_over_one": ("masked LM replacement shares above 1", {},
                               [*TINY, "--set", "task=masked_lm", "--set", "mlm.random_fraction=0.3", *NEW],
                               "cannot exceed 1"),
    "masked_lm_with_moe": ("a masked LM with a mixture of experts", {},
                           [*TINY, "--set", "task=masked_lm", "--set", "model.moe.experts=4", *NEW],
                           "model.moe.experts must be 0 for task masked_lm"),
    "fp16_on_cpu": ("fp16 precision on a CPU", {}, [*TINY, "--set", "train.precision=fp16", *NEW],
                    "train.precision=fp16 is for GPUs"),
    "cuda_without_gpu": ("train.device=cuda without a GPU", {}, [*TINY, "--set", "train.device=cuda", *NEW],
                         "no CUDA GPU is visible"),
    "init_from_missing": ("init_from a path that is no run", {}, [*TINY, "--set", "init_from={root}/nope", *NEW],
                          "is not a run directory"),
    "init_from_other_shape": ("init_from a run of another shape", {},
                              [*TINY, "--set", "init_from={root}/run", "--set", "model.d_model=64", *NEW],
                              "do not fit this model's shape; blocks.0.attn.o_proj.weight is [32, 32] there and [64, 64] here"),
    "generate_missing_run": ("generate from a run that does not exist", {}, ["generate", "{root}/nope"],
                             "does not exist"),
    "generate_bad_top_p": ("generate with --top-p 1.5", {}, ["generate", "{root}/run", "--top-p", "1.5"],
                           "--top-p"),
    "eval_missing_data": ("eval --data on a missing file", {}, ["eval", "{root}/run", "--data", "{root}/none.txt"],
                          "does not exist"),
    "eval_forecaster_options_on_a_text_run": ("eval with a forecaster's options on a text run", {},
                                              ["eval", "{root}/run", "--samples", "20", "--seed", "3"],
                                              "--samples, --seed apply to a forecaster's run"),
    "data_get_unknown": ("data get of an unknown corpus", {}, ["data", "get", "shakespear"], "shakespeare"),
    "doctor_missing_path": ("doctor on a path that does not exist", {}, ["doctor", "{root}/nope"], "does not exist"),
    "doctor_empty_folder": ("doctor on a folder with no logs", {"empty/.keep": ""}, ["doctor", "{root}/empty"],
                            "holds no run this doctor reads; known formats: trainlab, hf_trainer, lightning, "
                            "tensorboard, mlflow, wandb, console"),
    "doctor_unreadable_file": ("doctor on a file no reader reads", {"w.bin": b"\x00\x01" * 64},
                               ["doctor", "{root}/w.bin"], "known formats: trainlab, hf_trainer"),
    "doctor_text_without_a_log": ("doctor on text with no training log lines", {"notes.txt": "it went well\n"},
                                  ["doctor", "{root}/notes.txt"], "no training log lines"),
    "doctor_on_a_folder_of_runs": ("doctor on a folder holding several runs (an ablate's)",
                                   {f"sweep/runs/{v}/seed-0/run/{f}": "" for v in ("a", "b")
                                    for f in ("metrics.jsonl", "config.yaml")},
                                   ["doctor", "{root}/sweep"], "holds 2 trainlab runs, not one: give one of them"),
    "doctor_unknown_format": ("doctor --format with an unknown name", {}, ["doctor", "{root}/run", "--format", "csv"],
                              "the known formats are trainlab, hf_trainer"),
    "doctor_csv_without_step": ("doctor on a CSV that is not Lightning's", {"m.csv": "a,b\n1,2\n"},
                                ["doctor", "{root}/m.csv"], "no 'step' or 'epoch' column"),
    "doctor_json_not_trainer_state": ("doctor on JSON that is no trainer_state.json", {"s.json": '{"a": 1}'},
                                      ["doctor", "{root}/s.json"], "no log_history"),
    "doctor_report_folder_is_a_file": ("doctor --out where a file takes the folder's name",
                                       {"logs/train.log": "".join(f"iter {i}: loss {4 - i / 50:.4f}\n" for i in range(60)),
                                        "logs/doctor": "mine"},
                                       ["doctor", "{root}/logs/train.log", "--out", "{root}/logs/doctor"],
                                       "cannot write diagnosis.json"),
    "verify_bad_budget": ("doctor --verify with a budget in an unknown unit", {},
                          ["doctor", "{root}/run", "--verify", "--budget", "hours=2"], "give tokens=N, steps=N or seconds=N"),
    "verify_zero_seeds": ("doctor --verify with --seeds 0", {}, ["doctor", "{root}/run", "--verify", "--seeds", "0"],
                          "'--seeds'"),
    "budget_without_verify": ("doctor --budget without --verify", {}, ["doctor", "{root}/run", "--budget", "steps=20"],
                              "go with --verify"),
    "ablate_missing_sweep": ("ablate with a sweep file that does not exist", {}, ["ablate", "{root}/nope.yaml"],
                             "does not exist"),
    "ablate_unknown_key": ("a sweep variant with a misspelt key",
                           {"s.yaml": "base: {preset: tiny}\nvariants:\n  fast: {optim.lrr: 0.1}\n"},
                           ["ablate", "{root}/s.yaml", "--out", "{root}/sweep"], "variant 'fast': unknown config key"),
    "ablate_bad_budget": ("a sweep budget in an unknown unit",
                          {"b.yaml": "base: {preset: tiny}\nbudget: {hours: 2}\nvariants: {a: {}}\n"},
                          ["ablate", "{root}/b.yaml", "--out", "{root}/sweep"], "'budget' must be one of"),
    "ablate_mixed_tasks": ("a sweep whose variants train different tasks",
                           {"m.yaml": "base: {preset: tiny}\nvariants:\n  lm: {}\n  mlm: {task: masked_lm}\n"},
                           ["ablate", "{root}/m.yaml", "--out", "{root}/sweep"], "train different tasks"),
    "tune_space_without_params": ("a tune space with no params", {"t.yaml": "budget: {steps: 10}\n"},
                                  ["tune", "{root}/t.yaml", "--preset", "tiny", "--out", "{root}/tune"],
                                  "'params' must map config keys"),
    "tune_log_range_from_zero": ("a tune log range starting at 0",
                                 {"t.yaml": "params:\n  optim.lr: {low: 0, high: 1.0e-2, log: true}\nbudget: {steps: 5}\n"},
                                 ["tune", "{root}/t.yaml", "--preset", "tiny", "--out", "{root}/tune"],
                                 "a log range needs low above 0"),
    "tune_empty_choices": ("tune choices that are empty", {"t.yaml": "params:\n  optim.lr: {choices: []}\n"},
                           ["tune", "{root}/t.yaml", "--preset", "tiny", "--out", "{root}/tune"],
                           "choices must be a non-empty list"),
    "tune_invalid_choice": ("a tune choice the config refuses", {"t.yaml": "params:\n  model.n_head: {choices: [2, 3]}\n"},
                            ["tune", "{root}/t.yaml", "--preset", "tiny", "--out", "{root}/tune"],
                            "the value 3 makes an invalid config"),
    "tune_bad_storage": ("a tune storage URL that cannot be opened",
                         {"t.yaml": "params:\n  optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"},
                         ["tune", "{root}/t.yaml", "--preset", "tiny", "--out", "{root}/tune", "--storage", "bogus://x"],
                         "cannot be opened"),
    "sft_no_assistant_message": ("an instruction .jsonl with no assistant message",
                                 {"q.jsonl": '{"messages": [{"role": "user", "content": "Who?"}]}\n' * 20},
                                 [*TINY, "--set", "task=sft", "--set", "data.source={root}/q.jsonl", *NEW],
                                 "holds no usable conversation"),
    "sft_template_not_in_vocabulary": ("sft from a run whose tokenizer cannot write the chat template", {},
                                       [*TINY, "--set", "task=sft", "--set", "data.source=shakespeare-qa",
                                        "--set", "init_from={root}/run", *NEW], "cannot be written with this run's tokenizer"),
    "sft_other_tokenizer_than_init_from": ("sft with a data.tokenizer other than init_from's",
                                           {"byte.json": '{"trainlab": "byte"}'},
                                           [*TINY, "--set", "task=sft", "--set", "data.source=shakespeare-qa",
                                            "--set", "init_from={root}/run", "--set", "data.tokenizer={root}/byte.json",
                                            *NEW], "is not the tokenizer init_from"),
    "data_check_missing": ("data check of a path that does not exist", {}, ["data", "check", "{root}/none.txt"],
                           "is neither a bundled corpus nor an existing path"),
    "forecaster_without_tokenizer": ("a forecaster without series.tokenizer_run", {},
                                     ["train", "--preset", "kronos-btc-forecast", *NEW], "--preset kronos-btc"),
    "forecaster_tokenizer_not_a_run": ("a forecaster whose tokenizer_run is no run", {"docs/a.txt": "x"},
                                       ["train", "--preset", "kronos-btc-forecast", "--set",
                                        "series.tokenizer_run={root}/docs", *NEW], "is not a run directory"),
    "forecast_of_a_language_model": ("forecast from a run that is no forecaster", {},
                                     ["forecast", "{root}/run", "--horizon", "6"], "forecasts come from"),
    "forecast_columns_malformed": ("forecast --columns without name=Column pairs", {},
                                   ["forecast", "{root}/run", "--horizon", "6", "--columns", "Date"],
                                   "give name=Column pairs"),
    "candles_without_close": ("a candle CSV without close and volume", {"c.csv": "date,open,high,low\n1,2,3,4\n"},
                              ["train", "--preset", "kronos-btc", "--set", "data.source={root}/c.csv", *NEW],
                              "lacks the column(s) close, volume"),
}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(base, name):
    what, files, argv, fragment = CASES[name]
    root = base / name
    root.mkdir()
    for rel, content in files.items():
        w(root / rel, content)
    shutil.copytree(base / "run", root / "run", symlinks=True)
    before = snapshot(root)
    proc = cli(*[a.format(root=root) for a in argv], check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert fragment in proc.stderr, proc.stderr
    assert snapshot(root) == before  # nothing written, nothing lost
    cache = Path(os.environ["TRAINLAB_CACHE"])
    assert not [p for p in (cache / "shards").iterdir() if p.name.startswith(".")]
    shown = " ".join(a.format(root="DIR") for a in argv)
    RESULTS[name] = (f"{what}: `trainlab {shown}`", proc.returncode, proc.stderr.strip().replace(str(root), "DIR"))


def render() -> str:
    lines = ["# Bad input and what trainlab says", "",
             "Generated by `tests/test_bad_input.py` (`TRAINLAB_UPDATE_DOCS=1 make test` rewrites it). Every case",
             "exits with code 2, prints one line on stderr, and leaves the run directory and the cache as they were.",
             "", "| input | exit | message |", "|---|---|---|"]
    for name in CASES:
        what, code, message = RESULTS[name]
        lines.append(f"| {what.replace('|', '/')} | {code} | {message.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def test_errors_doc_is_generated_from_these_cases():
    if len(RESULTS) != len(CASES):
        pytest.skip("run the whole module to compare docs/errors.md")
    assert len(CASES) >= 30
    text = render()
    if os.environ.get("TRAINLAB_UPDATE_DOCS"):
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
    assert DOC.exists() and DOC.read_text() == text, "docs/errors.md is stale: run with TRAINLAB_UPDATE_DOCS=1"
