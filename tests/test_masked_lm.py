"""The masked LM: masking statistics and determinism on real Shakespeare, logits equal to
transformers' BertForMaskedLM, a tiny run through the CLI, hf export and init_from back, seed 000's
parameter table, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import cli, read_rows
from trainlab.presets import resolve
from trainlab.tasks.base import IGNORE

# micro-bert shrunk to seconds: its BPE vocabulary (so the cached shards are shared), a narrow model
TINY = ["--preset", "micro-bert", "--set", "model.d_model=16", "--set", "model.seq_len=32",
        "--set", "train.batch_size=8", "--set", "train.max_seconds=null", "--set", "train.max_steps=20",
        "--set", "train.eval_interval=10", "--set", "train.eval_batches=2", "--set", "train.log_interval=5",
        "--set", "train.sample_tokens=24", "--set", "train.precision=fp32", "--set", "train.compile=false",
        "--set", "train.threads=1", "--set", "checkpoint.interval=10"]


def sets(argv: list[str]) -> list[str]:
    return [a for a in argv[2:] if a != "--set"]


@pytest.fixture(scope="module")
def task():
    from trainlab.tasks import prepared
    from trainlab.tasks.masked_lm import MaskedLM

    cfg, data = prepared(resolve("micro-bert", overrides=sets(TINY) + ["model.seq_len=128"]), log=lambda s: None)
    return MaskedLM(cfg, data, torch.device("cpu"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlm") / "run"
    cli("train", *TINY, "--run-dir", str(path))
    return path


def test_masking_statistics_on_shakespeare(task):
    indices = np.arange(400)
    batch = task.batch(indices)
    inputs, positions, target = batch["input"], batch["positions"], batch["target"]
    windows = torch.from_numpy(task.windows.gather(task.windows.starts(indices))[:, :-1])
    T = inputs.shape[1]
    assert positions.shape == (400, round(0.15 * T))  # exactly 15% of each window, rounded
    predicted = target != IGNORE
    assert (predicted.sum(1) == positions.shape[1]).all()
    assert torch.equal(predicted, torch.zeros_like(predicted).scatter(1, positions, True))
    assert torch.equal(inputs[~predicted], windows[~predicted])  # the rest of the window as it is
    assert torch.equal(target[predicted], windows[predicted])
    shown = inputs[predicted]
    truth = windows[predicted]
    mask_id = task.masking.mask_id
    masked = (shown == mask_id).float().mean().item()
    unchanged = (shown == truth).float().mean().item()
    randomised = ((shown != mask_id) & (shown != truth)).float().mean().item()
    # 7,600 predicted positions: three standard deviations of a share near 10% are about 1%
    assert masked == pytest.approx(0.8, abs=0.015)
    assert unchanged == pytest.approx(0.1, abs=0.012)  # a random draw equal to the truth counts here
    assert randomised == pytest.approx(0.1, abs=0.012)
    assert int(inputs.max()) == mask_id and int(shown[shown != mask_id].max()) < mask_id
    assert task.cfg.model.vocab_size == task.data.tokenizer.vocab_size + 1  # [MASK] is one past the tokenizer


def test_masking_is_a_pure_function_of_seed_and_index(task):
    from trainlab.tasks.masked_lm import MaskedLM

    whole = task.batch(np.arange(0, 16))
    part = task.batch(np.arange(8, 12))  # the same examples asked for alone, as after a resume
    for key in ("input", "positions", "target"):
        assert torch.equal(part[key], whole[key][8:12])
    other = MaskedLM(task.cfg.model_copy(update={"train": task.cfg.train.model_copy(update={"seed": 7})}),
                     task.data, torch.device("cpu"))
    assert not torch.equal(other.batch(np.arange(16))["input"], whole["input"])
    # validation masking: fixed, the same at every evaluation and for every training seed
    for key in ("input", "positions", "target"):
        assert torch.equal(other.val[key], task.val[key])
    assert other.val_unigram_entropy == task.val_unigram_entropy > 0


def test_unigram_entropy_is_the_entropy_of_the_targets():
    from trainlab.tasks.masked_lm import unigram_entropy

    targets = torch.tensor([[3, IGNORE, 3, 5], [IGNORE, 7, 7, 7]])
    p = np.array([2, 1, 3]) / 6
    assert unigram_entropy(targets) == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-12)


def test_mask_id_and_prompts_with_masks():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from trainlab.data.tokenizers import CharTokenizer, HFTokenizer
    from trainlab.tasks.masked_lm import decode_with_masks, encode_with_masks, mask_id

    char = CharTokenizer(list("abt "))
    assert mask_id(char) == char.vocab_size  # one past the vocabulary
    ids = encode_with_masks(char, "a [MASK]t", mask_id(char))
    assert ids == [*char.encode("a "), mask_id(char), *char.encode("t")]
    assert decode_with_masks(char, ids, mask_id(char)) == "a [MASK]t"
    word = Tokenizer(models.WordLevel({"[UNK]": 0, "[MASK]": 1, "to": 2, "be": 3}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    bert_like = HFTokenizer(word)
    assert mask_id(bert_like) == 1  # a tokenizer's own [MASK] is kept
    assert encode_with_masks(bert_like, "to [MASK] to be", 1) == [2, 1, 2, 3]


def test_tiny_run_through_the_cli(run):
    rows = read_rows(run / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20]
    for r in val:
        assert {"loss", "acc", "top5", "ece", "loss_at_mask", "unigram_entropy"} <= set(r)
        assert 0 <= r["acc"] <= r["top5"] <= 1 and r["unigram_entropy"] > 0
    assert val[0]["unigram_entropy"] == val[1]["unigram_entropy"]  # one fixed validation masking
    assert any(r["split"] == "train" for r in rows)
    sample = read_rows(run / "samples.jsonl")[-1]
    assert "[MASK]" in sample["prompt"] and "[MASK]" not in sample["filled"]
    prompt = "What light through yonder [MASK] breaks?"
    out = cli("generate", str(run), "--prompt", prompt).stdout
    assert out.startswith(prompt + "\nWhat light through yonder")
    filled, top = out[len(prompt) + 1:].rsplit("\n[MASK] 1: ", 1)
    assert "[MASK]" not in filled and top.count(" | ") == 4  # the greedy fill, then 5 candidates
    best = min(r["loss"] for r in val)  # eval reads the best checkpoint
    assert json.loads(cli("eval", str(run)).stdout)["loss"] == pytest.approx(best, abs=1e-5)


def test_resume_is_exact(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    cli("train", *TINY, "--run-dir", str(straight))
    cli("train", *TINY, "--set", "train.max_steps=10", "--run-dir", str(halves))
    cli("train", "--run-dir", str(halves), "--resume", "--set", "train.max_steps=20")

    def last_val(path):
        return [r for r in read_rows(path / "metrics.jsonl") if r["split"] == "val"][-1]

    assert last_val(halves)["step"] == 20 and last_val(halves)["loss"] == last_val(straight)["loss"]


def test_exported_bert_matches_in_transformers(run, tmp_path):
    import transformers

    from trainlab.inference import load_run
    from trainlab.tasks.masked_lm import encode_with_masks, fill_masks, mask_id

    out = tmp_path / "hf"
    cli("export", str(run), "--format", "hf", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForMaskedLM"]
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    ours = load_run(run)
    mask = mask_id(ours.tokenizer)
    prompt = "ROMEO:\nWhat light through yonder [MASK] breaks? It is the [MASK], and Juliet"
    ids = encode_with_masks(ours.tokenizer, prompt, mask)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok.mask_token == "[MASK]" and hf_tok.mask_token_id == mask
    assert hf_tok(prompt, add_special_tokens=False)["input_ids"] == ids  # the same ids from their tokenizer
    x = torch.tensor([ids])
    with torch.no_grad():
        theirs, mine = hf(x).logits, ours.model(x)
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)  # fp32
    filled, _ = fill_masks(ours.model, ids, mask)
    at = x[0] == mask
    their_logits = theirs[0, at].clone()
    their_logits[:, mask] = float("-inf")
    assert [filled[i] for i in at.nonzero().flatten().tolist()] == their_logits.argmax(-1).tolist()


def test_init_from_an_exported_bert_directory(run, tmp_path):
    from trainlab.models.hf import load_transformers_dir
    from trainlab.inference import load_run

    out, new = tmp_path / "hf", tmp_path / "new"
    cli("export", str(run), "--out", str(out))
    original = load_run(run).model.state_dict()
    weights = load_transformers_dir(out)
    assert set(weights) == set(original)
    for k, v in weights.items():
        assert torch.equal(v, original[k]), k
    cli("train", *TINY, "--set", f"init_from={out}", "--set", "train.max_steps=1", "--set", "optim.lr=1e-12",
        "--set", "train.eval_interval=1", "--run-dir", str(new))
    restarted = load_run(new).model.state_dict()
    for k, v in original.items():
        torch.testing.assert_close(restarted[k], v, rtol=0, atol=1e-9)
    first = next(r for r in read_rows(new / "metrics.jsonl") if r["split"] == "val")
    last = [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "val"][-1]
    assert first["loss"] == pytest.approx(last["loss"], abs=1e-5)  # starts where the source ended


def test_export_of_a_model_without_output_bias_loads_back(tmp_path):
    """BERT always has an output bias: a run without one exports zeros, and loads back without it."""
    from trainlab.models.hf import load_transformers_dir
    from trainlab.inference import load_run

    run, out = tmp_path / "run", tmp_path / "hf"
    cli("train", *TINY, "--set", "model.output_bias=false", "--set", "model.tie_embeddings=true",
        "--set", "train.max_steps=5", "--run-dir", str(run))
    cli("export", str(run), "--out", str(out))
    model = load_run(run).model
    weights = load_transformers_dir(out)
    assert not weights["head.decoder.bias"].any()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_weights(weights)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    weights["head.decoder.bias"] = weights["head.decoder.bias"] + 1.0
    with pytest.raises(ValueError, match="output_bias=true"):
        model.load_weights(weights)


# Seed 000's micro-BERT table: (layers, heads, width, the document's parameter count at a 250,000 vocabulary)
SEED_000 = [(2, 1, 4, 2.3e6), (2, 2, 16, 8.3e6), (4, 4, 64, 32.7e6), (1, 1, 8, 4.3e6)]


@pytest.mark.parametrize("layers,heads,width,documented", SEED_000)
def test_seed_000_parameter_table_within_5_percent(layers, heads, width, documented):
    from trainlab.experiment.estimate import estimate

    cfg = resolve("micro-bert", overrides=[f"model.n_layer={layers}", f"model.n_head={heads}",
                                           f"model.d_model={width}", "model.vocab_size=250000"])
    result = estimate(cfg, "fp32", torch.device("cpu"), tokens_per_s=1000.0)  # the meta model
    total = result["params"]["total"]
    assert abs(total - documented) / documented < 0.05, total
    assert result["params"]["non_embedding"] < 0.03 * total  # the vocabulary holds nearly all of it


def test_meta_counts_and_flops_follow_the_real_model():
    from trainlab.experiment.estimate import meta_model, param_counts
    from trainlab.models.bert import BertMLM

    cfg = resolve("micro-bert", overrides=["model.vocab_size=300", "model.d_model=32", "model.ffn_hidden=48"])
    real = BertMLM(cfg.model)
    counts = param_counts(meta_model(cfg))
    assert counts["total"] == sum(p.numel() for p in real.parameters())
    d, T, V = 32, cfg.model.seq_len, 300
    embedding = (V + T + 2) * d + V * d + V  # tables, untied decoder, output bias
    assert counts["embedding"] == embedding and counts["non_embedding"] == counts["total"] - embedding
    per_layer = 4 * (d * d + d) + (d * 48 + 48) + (48 * d + d) + 4 * d
    predicted = round(0.15 * T) / T
    expected = 6 * 2 * per_layer + 6 * (d * d + d * V) * predicted + 12 * 2 * T * d
    assert meta_model(cfg).flops_per_token() == int(expected)


def test_vocab_without_room_for_mask_exits_2(run, tmp_path):
    from trainlab.data.tokenizers import load_tokenizer

    vocab = load_tokenizer(run / "tokenizer.json").vocab_size
    proc = cli("train", *TINY, "--set", f"model.vocab_size={vocab}", "--run-dir", str(tmp_path / "new"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "leaves no room for [MASK]" in proc.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("setting,message", [("model.qk_norm=true", "model.qk_norm must be false for task masked_lm"),
                                             ("model.moe.experts=4", "model.moe.experts must be 0 for task masked_lm")])
def test_decoder_only_options_exit_2(run, tmp_path, setting, message):
    proc = cli("train", *TINY, "--set", setting, "--run-dir", str(tmp_path / "new"), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "new").exists()


def test_generate_without_mask_exits_2_and_the_probe_is_skipped(run):
    proc = cli("generate", str(run), "--prompt", "To be, or not to be", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "put [MASK]" in proc.stderr
    proc = cli("doctor", str(run), "--probe")  # the rest of the diagnosis still runs; the probe is skipped with a note
    assert "--probe generates continuations of a causal LM; this run's task is masked_lm: skipped" in proc.stdout


def test_the_mask_token_is_not_reported_as_unknown_prompt_characters():
    """A character vocabulary lacks '[', 'M', 'A', 'S', 'K', ']' here; in a masked LM's prompt [MASK] has its own
    id, so only the characters outside it count (generate notes them on stderr)."""
    from pathlib import Path

    from trainlab.data.tokenizers import CharTokenizer
    from trainlab.tasks.base import LoadedRun
    from trainlab.tasks.causal_lm import CausalLM
    from trainlab.tasks.masked_lm import MaskedLM

    run = LoadedRun(Path("."), None, None, CharTokenizer.train(["to be or not "]), 0)
    assert MaskedLM.unknown_prompt_chars(run, "to be or not to [MASK]") == []
    assert MaskedLM.unknown_prompt_chars(run, "to be? [MASK]!") == ["?", "!"]
    assert CausalLM.unknown_prompt_chars(run, "to [MASK]") == ["[", "M", "A", "S", "K", "]"]
