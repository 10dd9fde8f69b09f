"""The user-path matrix: every path a user takes, for every registered task, through the real CLI.

One recipe per path (a task, or a variant of one such as a mixture of experts): a preset, the overrides
that make it tiny and fast, and what must exist first (SFT starts from a pretrained run). For each, in
subprocesses of `python -m trainlab`: train, SIGKILL mid-run, `train --resume` to the end, `eval`,
`generate`, `export --format hf` (loaded back in transformers where the task exports: the same ids,
logits and greedy text), `doctor --json`, `ablate` on a 2-variant sweep and `tune` with 2 trials.

Every command ends with exit 0, or exit 2 with exactly one line on stderr saying why, and prints no
traceback. One training run per recipe is shared by the steps after it.

Each recipe has its own test file, tests/test_paths_<name>.py (a `UserPaths` subclass naming the recipe),
so that `pytest -n 2 --dist loadfile` spreads the recipes over the workers. A new task joins by adding a
recipe here and its file; `check_registry_coverage` fails until it does.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import yaml

from forkserver import run_trainlab

from conftest import read_rows

TESTS = Path(__file__).resolve().parent

# every recipe: eager, one thread, fp32 (exports compare logits), a step budget instead of a time budget,
# evaluation and checkpoints every few steps, a short sample
COMMON = {"train.compile": False, "train.threads": 1, "train.precision": "fp32", "train.max_seconds": None,
          "train.max_tokens": None, "train.epochs": None, "train.max_steps": 16, "train.eval_interval": 4,
          "train.eval_batches": 2, "train.log_interval": 1, "train.sample_tokens": 8, "checkpoint.interval": 4,
          "early_stopping.patience": 0}
SMALL_GPT = {"model.n_layer": 1, "model.n_head": 2, "model.d_model": 32, "train.batch_size": 4}
GREEDY_TOKENS = 12
KILL_AFTER = 6  # SIGKILL once a train row past this step exists: after the first checkpoint (step 4), before the end


@dataclass(frozen=True)
class Recipe:
    """One user path: `trainlab train --preset PRESET --set K=V ...`, and what the commands after it expect."""

    name: str
    task: str
    preset: str
    sets: dict = field(default_factory=dict)
    prompt: str = ""
    """--prompt for `trainlab generate` (greedy, a few tokens)."""
    export: Optional[str] = None
    """How transformers loads the export: "causal", "chat" (causal, with the SFT chat template) or "masked";
    None: the export exits 2 with one line holding `export_refusal`."""
    export_refusal: str = ""
    init_from: Optional["Recipe"] = None
    """A run trained first and given as init_from (SFT starts from a pretrained causal LM)."""
    init_key: str = "init_from"
    """The key that names the run trained first (a forecaster names its tokenizer: series.tokenizer_run)."""
    tune_param: tuple[str, float, float] = ("optim.lr", 1e-3, 1e-2)

    def overrides(self) -> dict:
        return {**COMMON, **self.sets}

    def argv(self, extra: Optional[dict] = None) -> list[str]:
        args = ["--preset", self.preset]
        for key, value in {**self.overrides(), **(extra or {})}.items():
            args += ["--set", f"{key}={set_value(value)}"]
        return args


def set_value(value) -> str:
    """A value as `--set` takes it (YAML): null, true/false, numbers, plain strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# the BPE recipes take micro-bert's 1,024-token vocabulary: the prepared corpus (a tokenizer trained and the
# text encoded, some 12 s on 2 cores) is then made once per test worker, not once per vocabulary
BPE = {"data.bpe_vocab_size": 1024}
BPE_PRETRAIN = Recipe("sft_pretrain", "causal_lm", "shakespeare-bpe",
                      {**SMALL_GPT, **BPE, "model.seq_len": 128, "train.max_steps": 2, "train.eval_interval": 2,
                       "checkpoint.interval": 2, "train.sample_tokens": 0})

CANDLES = {"data.source": str(TESTS / "fixtures" / "candles" / "bitfinex_btcusd_1h.csv")}
FORECAST_TOKENIZER = Recipe("forecast_tokenizer", "series_tokenizer", "kronos-btc",
                            {**CANDLES, "model.d_model": 16, "train.batch_size": 8, "series.lookback": 24,
                             "series.pred_len": 8, "series.s1_bits": 6, "series.s2_bits": 6, "series.causal": True,
                             "data.val_fraction": 0.4, "train.max_steps": 2, "train.eval_interval": 2,
                             "checkpoint.interval": 2, "train.sample_tokens": 0})

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    # the demo preset, shrunk: character-level, qk_norm (exports as Qwen3), Muon
    Recipe("causal_lm", "causal_lm", "shakespeare-char", {**SMALL_GPT, "model.seq_len": 32},
           prompt="ROMEO:", export="causal"),
    # byte-level BPE with a mixture of experts (qk_norm, from the preset): exports as a Qwen3-MoE
    Recipe("moe", "causal_lm", "shakespeare-bpe", {**SMALL_GPT, **BPE, "model.seq_len": 32, "model.moe.experts": 4},
           prompt="ROMEO:", export="causal"),
    # instruction fine-tuning from a (2-step) shakespeare-bpe run, as the preset's doc prescribes
    Recipe("sft", "sft", "shakespeare-sft", {**SMALL_GPT, "model.seq_len": 128, "train.grad_accum": 1},
           prompt='Who speaks the line "Now, fair Hippolyta, our nuptial hour"?', export="chat",
           init_from=BPE_PRETRAIN),
    Recipe("masked_lm", "masked_lm", "micro-bert", {"model.seq_len": 32, "train.batch_size": 8},
           prompt="To be, or not to [MASK], that is the [MASK].", export="masked"),
    Recipe("series_tokenizer", "series_tokenizer", "kronos-btc",
           {"model.d_model": 16, "train.batch_size": 8, "series.lookback": 24, "series.pred_len": 8},
           export_refusal="no transformers format"),
    # a forecaster over a (2-step) causal tokenizer, both on 800 real Bitfinex hours (newest first, other
    # column names); the tokenizer trains on the first 60% of the rows, before the forecaster's validation
    Recipe("series_forecast", "series_forecast", "kronos-btc-forecast",
           {**CANDLES, "model.d_model": 16, "model.n_head": 2, "train.batch_size": 8, "series.pred_len": 8,
            "data.val_fraction": 0.2, "series.test_fraction": 0.2},
           export_refusal="no transformers format", init_from=FORECAST_TOKENIZER, init_key="series.tokenizer_run"),
]}

TEST_ONLY_PRESETS = {"tiny"}  # the tests' own baseline (the kill loop uses it), not a user's starting point


def check_registry_coverage() -> None:
    """Every registered task and every user preset has a recipe, and every recipe its test file."""
    from trainlab.presets import PRESETS
    from trainlab.tasks import TASKS

    tasks = {r.task for r in RECIPES.values()}
    assert set(TASKS) <= tasks, f"tasks without a user-path recipe in tests/user_paths.py: {set(TASKS) - tasks}"
    assert tasks <= set(TASKS), f"recipes of unregistered tasks: {tasks - set(TASKS)}"
    presets = {r.preset for r in RECIPES.values()} | {r.init_from.preset for r in RECIPES.values() if r.init_from}
    missing = set(PRESETS) - presets - TEST_ONLY_PRESETS
    assert not missing, f"presets no user-path recipe starts from: {missing}"
    for name in RECIPES:
        assert (TESTS / f"test_paths_{name}.py").is_file(), f"recipe '{name}' has no tests/test_paths_{name}.py"


# -- running the CLI as a user does -------------------------------------------------------------------

def trainlab(*args, expect: int = 0, fragment: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m trainlab ARGS`: exit `expect` (0, or 2 with exactly one line on stderr holding `fragment`),
    and no traceback in its output."""
    proc = run_trainlab(list(map(str, args)), os.environ.copy(), timeout)
    check_output(args, proc.returncode, proc.stdout, proc.stderr, expect, fragment)
    return proc


def check_output(args, code: int, out: str, err: str, expect: int = 0, fragment: str = "") -> None:
    said = f"trainlab {' '.join(map(str, args))} exited {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    assert "Traceback" not in out + err, said
    assert code == expect, said
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: "), said
        assert fragment in err, said


def val_rows(run: Path) -> list[dict]:
    return [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "val"]


def train_with_a_kill(recipe: Recipe, root: Path) -> SimpleNamespace:
    """Train the recipe's run, SIGKILL it once it has passed its first checkpoint, and `--resume` it to the end."""
    extra = {}
    if recipe.init_from is not None:
        pre = root / "init"
        trainlab("train", *recipe.init_from.argv(), "--run-dir", pre)
        extra[recipe.init_key] = str(pre)
    run = root / "run"
    argv = recipe.argv(extra)
    log_out, log_err = root / "killed.out", root / "killed.err"
    with open(log_out, "w") as out, open(log_err, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "trainlab", "train", *argv, "--run-dir", str(run)],
                                stdout=out, stderr=err)
        try:
            killed_at = wait_for_step(proc, run / "metrics.jsonl", KILL_AFTER, timeout=240)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert "Traceback" not in log_out.read_text() + log_err.read_text()
    resumed = trainlab("train", *argv, "--run-dir", run, "--resume")
    return SimpleNamespace(recipe=recipe, root=root, run=run, argv=argv, extra=extra, killed_at=killed_at,
                           resumed=resumed)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float) -> int:
    """Poll metrics.jsonl until a train row past `step` appears; the step seen. Fails if the run ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run exited {proc.returncode} before it could be killed (no train row past step {step})")
        seen = max((r.get("step", 0) for r in complete_rows(metrics) if r.get("split") == "train"), default=-1)
        if seen > step:
            return seen
        time.sleep(0.002)
    pytest.fail(f"no train row past step {step} within {timeout:.0f} s")


def complete_rows(path: Path) -> list[dict]:
    """The whole lines of a metrics.jsonl another process is appending to."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


# -- the matrix ---------------------------------------------------------------------------------------------

class UserPaths:
    """Every step of the user path for `recipe`; a test file subclasses it as `Test...` and names the recipe."""

    recipe: str = ""

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, tmp_path_factory) -> SimpleNamespace:
        recipe = RECIPES[cls.recipe]
        return train_with_a_kill(recipe, tmp_path_factory.mktemp(f"paths-{recipe.name}"))

    def test_train_killed_then_resumed_to_the_end(self, trained):
        steps = trained.recipe.overrides()["train.max_steps"]
        rows = read_rows(trained.run / "metrics.jsonl")
        train = [r["step"] for r in rows if r["split"] == "train"]
        assert train == list(range(1, steps + 1))  # each step logged once: the killed run's extra rows were cut
        events = [r for r in rows if r["split"] == "event"]
        assert [e["kind"] for e in events] == ["resume"]
        resumed_from = int(events[0]["detail"].rsplit(" ", 1)[-1])
        assert 4 <= resumed_from <= trained.killed_at
        assert os.readlink(trained.run / "checkpoints" / "last") == f"step-{steps:08d}"
        assert all(math.isfinite(r["loss"]) for r in rows if r["split"] in ("train", "val"))
        assert f"at step {steps}" in trained.resumed.stdout

    def test_eval(self, trained):
        if trained.recipe.task == "series_forecast":  # a walk-forward evaluation, its table and its JSON
            out = trainlab("eval", trained.run, "--samples", "8", "--origins", "40").stdout
            result = json.loads((trained.run / "forecast_eval.json").read_text())
            assert list(result["horizons"]) == ["1", "6", "24"] and "| 24 | gaussian_vol |" in out
            return
        result = json.loads(trainlab("eval", trained.run).stdout)
        best = min((r for r in val_rows(trained.run) if r["step"] > 0), key=lambda r: r["loss"])  # checkpointed
        assert result["loss"] == pytest.approx(best["loss"], rel=1e-5)

    def test_generate(self, trained):
        recipe = trained.recipe
        out = greedy(trained)
        assert out.startswith(recipe.prompt) and out.strip()
        if recipe.task == "series_tokenizer":
            assert "reconstruction mse" in out and "plot: " in out
        if recipe.task == "masked_lm":
            assert out.splitlines()[2].startswith("[MASK] 1: ")

    def test_export(self, trained):
        recipe, out = trained.recipe, trained.root / "hf"
        if recipe.export is None:
            trainlab("export", trained.run, "--format", "hf", "--out", out, expect=2, fragment=recipe.export_refusal)
            assert not out.exists()
            return
        assert trainlab("export", trained.run, "--format", "hf", "--out", out).stdout.strip() == str(out)
        {"causal": same_causal_lm, "chat": same_chat_model, "masked": same_masked_lm}[recipe.export](trained, out)

    def test_doctor(self, trained):
        diagnosis = json.loads(trainlab("doctor", trained.run, "--json").stdout)
        assert isinstance(diagnosis, dict) and diagnosis
        assert (trained.run / "diagnosis.json").is_file() and (trained.run / "report.html").is_file()

    def test_ablate(self, trained, tmp_path):
        recipe = trained.recipe
        lr = resolved(trained).optim.lr
        sweep = {"base": {"preset": recipe.preset, "set": {**recipe.overrides(), **trained.extra,
                                                           "train.sample_tokens": 0}},
                 "budget": {"steps": 6}, "seeds": 1, "workers": 2, "baseline": "baseline",
                 "variants": {"baseline": {}, "half_lr": {"optim.lr": lr / 2}}}
        path, out = tmp_path / "sweep.yaml", tmp_path / "ablate"
        path.write_text(yaml.safe_dump(sweep))
        trainlab("ablate", path, "--out", out)
        runs = json.loads((out / "results.json").read_text())["runs"]
        assert sorted(r["variant"] for r in runs) == ["baseline", "half_lr"]
        assert not any(r.get("failed") for r in runs) and {r["steps"] for r in runs} == {6}

    def test_tune(self, trained, tmp_path):
        recipe = trained.recipe
        key, low, high = recipe.tune_param
        space = {"params": {key: {"low": low, "high": high, "log": True}}, "budget": {"steps": 6}, "pruner": "none",
                 "set": {"train.sample_tokens": 0}}
        path, out = tmp_path / "space.yaml", tmp_path / "tune"
        path.write_text(yaml.safe_dump(space))
        sets = [a for k, v in {**recipe.overrides(), **trained.extra}.items() for a in ("--set", f"{k}={set_value(v)}")]
        done = trainlab("tune", path, "--preset", recipe.preset, *sets, "--trials", "2", "--out", out).stdout
        assert "best: trial" in done and (out / "best.yaml").is_file()
        assert sum(line.startswith("trial ") for line in done.splitlines()) == 2


def resolved(trained):
    from trainlab.rundir import saved_config

    return saved_config(trained.run)


# -- transformers loads the export and agrees ------------------------------------------------------------------

def greedy(trained) -> str:
    """What `trainlab generate RUN --prompt P --temperature 0 --max-new-tokens 12` prints, less its last newline
    (run once per recipe: generation and the export check share it)."""
    if getattr(trained, "greedy", None) is None:
        out = trainlab("generate", trained.run, "--prompt", trained.recipe.prompt, "--temperature", "0",
                       "--max-new-tokens", str(GREEDY_TOKENS)).stdout
        assert out.endswith("\n")
        trained.greedy = out[:-1]
    return trained.greedy


def same_causal_lm(trained, out: Path) -> None:
    """The same ids from their tokenizer, the same logits (fp32) and the same greedy text as `trainlab generate`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainlab.inference import load_run

    prompt = trained.recipe.prompt
    ours = load_run(trained.run)
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids == list(ours.tokenizer.encode(prompt))
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours.model(x), rtol=1e-4, atol=1e-4)
        new = hf.generate(x, max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=0)
    assert greedy(trained) == prompt + tok.decode(new[0, x.shape[1]:].tolist())


def same_chat_model(trained, out: Path) -> None:
    """apply_chat_template gives the ids trainlab prompts with, and transformers' greedy answer (stopped at the
    end marker) is the one `trainlab generate` prints."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainlab.data.sft import Template
    from trainlab.inference import load_run

    question = trained.recipe.prompt
    ours = load_run(trained.run)
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = list(tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False))
    assert ids == Template(ours.cfg.sft, ours.tokenizer).prompt(question).tolist()
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours.model(x), rtol=1e-4, atol=1e-4)
        new = hf.generate(x, max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=0, tokenizer=tok)
    answer = tok.decode(new[0, x.shape[1]:].tolist()).split(ours.cfg.sft.end)[0]
    assert greedy(trained) == question + "\n" + answer


def same_masked_lm(trained, out: Path) -> None:
    """The same ids (with [MASK]) from their tokenizer, the same logits, and the masks filled as `trainlab
    generate` fills them."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from trainlab.inference import load_run
    from trainlab.tasks.masked_lm import encode_with_masks, mask_id

    prompt = trained.recipe.prompt
    ours = load_run(trained.run)
    mask = mask_id(ours.tokenizer)
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.mask_token_id == mask and ids == encode_with_masks(ours.tokenizer, prompt, mask)
    hf = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = hf(x).logits
        torch.testing.assert_close(logits, ours.model(x), rtol=1e-4, atol=1e-4)
    logits[..., mask] = float("-inf")  # [MASK] is never proposed
    filled = [int(logits[0, i].argmax()) if t == mask else t for i, t in enumerate(ids)]
    printed = greedy(trained).splitlines()
    assert printed[0] == prompt and printed[1] == tok.decode(filled)
