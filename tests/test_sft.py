"""Instruction fine-tuning: the three .jsonl formats, the loss mask, the response-only loss, the held-out
split, the shakespeare-qa set, and a pretrain-then-SFT run through the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli, read_rows
from trainlab.presets import build_config
from trainlab.tasks.sft import SFTConfig, chat_template
from trainlab.data.sft import Template, is_val, parse_conversation, prepare_sft
from trainlab.data.tokenizers import ByteTokenizer, HFTokenizer
from trainlab.presets import tiny

SYSTEM, PROMPT, RESPONSE = "Answer briefly.", "Who speaks first in Hamlet?", "BERNARDO: Who's there?"
FORMATS = {
    "prompt_response": {"system": SYSTEM, "prompt": PROMPT, "response": RESPONSE},
    "messages": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT},
                              {"role": "assistant", "content": RESPONSE}]},
    "conversations": {"conversations": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT},
                                        {"role": "assistant", "content": RESPONSE}]},
    "prompt_completion": {"system": SYSTEM, "prompt": PROMPT, "completion": RESPONSE},  # TRL's prompt-completion
    "sharegpt": {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": PROMPT},
                                   {"from": "gpt", "value": RESPONSE}]},
    "alpaca": {"system": SYSTEM, "instruction": PROMPT, "input": "", "output": RESPONSE},
}


def lines_of(kind: str, n: int = 40) -> str:
    """n conversations in one format; the content varies so both splits get some."""
    out = []
    for i in range(n):
        obj = json.loads(json.dumps(FORMATS[kind]).replace("Hamlet", f"Hamlet {i}").replace("there", f"there {i}"))
        out.append(json.dumps(obj))
    return "\n".join(out) + "\n"


def sft_cfg(tmp_path: Path, source: Path, **sets):
    tree = tiny().to_dict()
    tree.update(task="sft")
    tree["data"].update(source=str(source), tokenizer="byte", cache_dir=str(tmp_path / "cache"))
    tree["model"].update(seq_len=96)
    for key, value in sets.items():
        section, name = key.split("__")
        tree[section][name] = value
    return build_config(tree)


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    text = Path(__import__("os").environ["TRAINLAB_CACHE"], "corpora", "shakespeare.txt").read_text()[:200_000]
    return HFTokenizer.train(iter([text]), 400)


def test_every_format_gives_the_same_ids_mask_and_split(tmp_path):
    prepared = {}
    for kind in FORMATS:
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(lines_of(kind))
        prepared[kind] = prepare_sft(sft_cfg(tmp_path, path), log=lambda s: None)
    ref = prepared["messages"]
    assert len(ref.train) and len(ref.val) and len(ref.train) + len(ref.val) == 40
    for data in prepared.values():
        for split in ("train", "val"):
            a, b = getattr(data, split), getattr(ref, split)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.mask, b.mask)
            assert np.array_equal(a.offsets, b.offsets)
    parsed = [parse_conversation(obj) for obj in FORMATS.values()]
    assert all(p == parsed[0] for p in parsed) and len(parsed) == 6
    # Alpaca's input, when given, follows the instruction after a blank line
    assert parse_conversation({"instruction": "Translate to English.", "input": "Bonjour", "output": "Hello"}) == [
        {"role": "user", "content": "Translate to English.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(ValueError, match="ShareGPT speakers: human, gpt, system"):
        parse_conversation({"conversations": [{"from": "bot", "value": "hi"}]})


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_mask_covers_exactly_the_responses(tokenizer, bpe):
    tok = bpe if tokenizer == "bpe" else ByteTokenizer()
    template = Template(SFTConfig(), tok)
    messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": RESPONSE + "."},
                {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "FRANCISCO"}]
    ids, mask = template.encode(template.pieces(messages))
    # the masked tokens spell the two responses, each with its end marker, and nothing else
    masked = [tok.decode(ids[run].tolist()) for run in _runs(mask)]
    assert masked == [RESPONSE + ".<|end|>", "FRANCISCO<|end|>"]
    assert tok.decode(ids.tolist()) == ("<|user|>\n" + PROMPT + "\n<|assistant|>\n" + RESPONSE + ".<|end|>\n"
                                        "<|user|>\nAnd then?\n<|assistant|>\nFRANCISCO<|end|>")
    # the end marker is the same ids after any response, so generation can stop on it
    end = template.end_ids.tolist()
    for run in _runs(mask):
        assert ids[run].tolist()[-len(end):] == end


def _runs(mask: np.ndarray) -> list[slice]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return [slice(a, b) for a, b in zip(edges[::2], edges[1::2])]


def test_loss_is_cross_entropy_over_response_positions_only(tmp_path):
    from trainlab.tasks.sft import SFT

    path = tmp_path / "m.jsonl"
    path.write_text(lines_of("messages"))
    cfg = sft_cfg(tmp_path, path)
    data = prepare_sft(cfg, log=lambda s: None)
    cfg = SFT.configure(cfg, data)
    torch.manual_seed(0)
    task = SFT(cfg, data, torch.device("cpu"))
    model = SFT.build_model(cfg)
    indices = np.arange(4)
    batch = task.batch(indices)
    loss, _ = task.loss(model, batch)
    # by hand, from the stored examples: -log p(token j | tokens < j) at each response token j
    nll = []
    for example in task.order(indices):
        ids, mask = data.train.get(int(example))
        logp = model(torch.from_numpy(ids[None, :-1]))[0].double().log_softmax(-1)
        nll += [-logp[j - 1, ids[j]] for j in range(1, len(ids)) if mask[j]]
    assert len(nll) == int((batch["target"] != -100).sum())
    torch.testing.assert_close(loss.double(), torch.stack(nll).mean(), rtol=1e-5, atol=1e-6)
    assert task.batch(indices)["input"].equal(batch["input"])  # a pure function of the indices


def test_held_out_split_is_deterministic_and_disjoint(tmp_path):
    from trainlab.data.shakespeare_qa import get_dataset

    path = get_dataset()
    conversations = [parse_conversation(json.loads(line)) for line in path.read_text().splitlines()]
    first = [is_val(c, 0.1) for c in conversations]
    assert first == [is_val(c, 0.1) for c in conversations]
    assert 0.07 < np.mean(first) < 0.13
    # held-out questions quote lines that no training example shows, as question or answer
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train_text = {r["line"] for r, v in zip(rows, first) if not v} | {r["response"] for r, v in zip(rows, first)
                                                                       if not v and r["kind"] == "next"}
    val_lines = [r["line"] for r, v in zip(rows, first) if v]
    assert val_lines and not train_text & set(val_lines)
    # the prepared splits hold exactly those examples
    cfg = sft_cfg(tmp_path, path)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"seq_len": 256})})
    data = prepare_sft(cfg, log=lambda s: None)
    assert (len(data.train), len(data.val)) == (first.count(False), first.count(True))
    again = prepare_sft(cfg, log=lambda s: None)
    assert np.array_equal(again.val.ids, data.val.ids) and again.directory == data.directory


def test_shakespeare_qa_answers_come_from_the_corpus():
    from trainlab.data.corpora import get_corpus
    from trainlab.data.shakespeare_qa import PER_KIND, PLAYS, build_examples, get_dataset

    text = get_corpus("shakespeare").read_text()
    built = build_examples(text)
    assert built == build_examples(text)  # deterministic, and what the cached file holds
    rows = [json.loads(line) for line in get_dataset().read_text().splitlines()]
    assert rows == built
    assert len(rows) == 3 * PER_KIND and {r["kind"] for r in rows} == {"who", "play", "next"}
    titles = sorted((m.start(), t) for t in PLAYS for m in re.finditer(rf"\n\n{re.escape(t)}\n\n", "\n\n" + text))
    measure = text.index("ACT I\n\nSCENE I. An apartment in the DUKE'S palace.")
    quoted = [r["line"] for r in rows]
    assert len(set(quoted)) == len(quoted)  # each line asked about once
    lines = text.split("\n")
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines])
    where: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        where.setdefault(line, []).append(i)
    for r in rows:
        line = r["line"]
        assert r["prompt"].count(f'"{line}"') == 1
        assert len(where[line]) == 1  # the only place it occurs: one right answer
        i = where[line][0]
        if r["kind"] == "who":  # the line stands in the paragraph headed by that speaker's name
            head = i
            while head > 0 and lines[head - 1] != "":
                head -= 1
            assert lines[head] == r["response"]
        elif r["kind"] == "next":
            assert lines[i + 1] == r["response"]
        else:
            play = [t for p, t in titles if p <= offsets[i]][-1]
            if play == "All's Well That Ends Well" and offsets[i] > measure:
                play = "Measure for Measure"  # its text has no title line
            assert r["response"] == play


def test_generation_stops_at_a_multi_token_end_marker():
    from trainlab.config import ModelConfig
    from trainlab.models.generate import generate
    from trainlab.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, vocab_size=50, seq_len=32)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    free = generate(model, prompt, 12, temperature=1.0, seed=0)[0].tolist()
    stop = free[4:6]
    end = next(k for k in range(2, 13) if free[k - 2:k] == stop)
    stopped = generate(model, prompt, 12, temperature=1.0, seed=0, stop=stop)[0].tolist()
    assert stopped == free[:end] and len(stopped) < len(free)


def test_pretrain_then_sft_through_the_cli(tmp_path):
    pre, sft = tmp_path / "pre", tmp_path / "sft"
    cli("train", "--preset", "tiny", "--set", "data.tokenizer=byte", "--set", "model.seq_len=128",
        "--set", "train.max_steps=30", "--run-dir", str(pre))
    cli("train", "--preset", "tiny", "--set", "task=sft", "--set", "data.source=shakespeare-qa",
        "--set", f"init_from={pre}", "--set", "model.seq_len=128", "--set", "train.max_steps=30",
        "--set", "train.eval_interval=15", "--set", "train.batch_size=8", "--run-dir", str(sft))
    rows = read_rows(sft / "metrics.jsonl")
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [0, 15, 30]
    assert val[-1]["loss"] < val[0]["loss"] and "exact_match" in val[0]
    samples = read_rows(sft / "samples.jsonl")
    assert samples[0]["prompt"].startswith("<|user|>\n") and samples[0]["prompt"].endswith("<|assistant|>\n")
    # the step-0 loss is the pretrained model's: evaluate the same weights by hand
    from trainlab.inference import load_run
    from trainlab.tasks.base import GenerationRequest
    from trainlab.tasks.sft import SFT
    from trainlab.tasks.base import TokenMetrics
    from trainlab.tasks.sft import collate

    run = load_run(sft)
    data = prepare_sft(run.cfg, log=lambda s: None)
    before = load_run(pre).model
    metrics = TokenMetrics()
    n_val = min(len(data.val), 2 * 8)  # tiny: eval_batches 2 x batch_size 8
    for part in (range(0, min(8, n_val)), range(8, n_val)):
        inputs, targets = collate([data.val.get(j) for j in part], 128)
        with torch.no_grad():
            metrics.add(before(inputs), targets)
    assert metrics.finish(lambda t: t)["loss"] == pytest.approx(val[0]["loss"], rel=1e-4)
    # trainlab eval scores the run's best checkpoint (steps 15 and 30 have one) the same way
    assert json.loads(cli("eval", str(sft)).stdout)["loss"] == pytest.approx(min(r["loss"] for r in val[1:]), rel=1e-6)
    # generate wraps the prompt in the template and stops at the end marker
    prompt = 'Who speaks the line "Now, fair Hippolyta, our nuptial hour"?'
    out = cli("generate", str(sft), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "24").stdout
    text = SFT.generate(run, GenerationRequest(prompt, 24, 0.0, 0, 1.0, 1.0, None))
    assert out == text + "\n" and text.startswith(prompt + "\n") and "<|end|>" not in text


@pytest.mark.parametrize("case", ["no_assistant", "tokenizer_differs", "vocab_differs"])
def test_bad_sft_input_exits_2_with_one_line(tmp_path, case):
    pre = tmp_path / "pre"
    if case == "no_assistant":
        src = tmp_path / "q.jsonl"
        src.write_text('{"messages": [{"role": "user", "content": "Who?"}]}\n{broken\n')
        argv = ["--set", f"data.source={src}", "--set", "data.tokenizer=byte"]
        fragment = "holds no usable conversation (1 broken lines, 1 without an assistant message)"
    else:
        cli("train", "--preset", "tiny", "--set", "data.tokenizer=byte", "--set", "train.max_steps=2",
            "--run-dir", str(pre))
        argv = ["--set", f"init_from={pre}", "--set", "data.source=shakespeare-qa", "--set", "model.seq_len=128"]
        if case == "tokenizer_differs":
            other = tmp_path / "char.json"
            other.write_text(json.dumps({"trainlab": "char", "chars": list("abc<|>\n")}))
            argv += ["--set", f"data.tokenizer={other}"]
            fragment = "is not the tokenizer init_from"
        else:
            argv += ["--set", "model.vocab_size=300"]
            fragment = "model.vocab_size=300 does not fit init_from"
    proc = cli("train", "--preset", "tiny", "--set", "task=sft", *argv, "--run-dir", str(tmp_path / "new"),
               check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "new").exists()


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    """Batches are a pure function of (seed, index): resuming from step 6 redoes steps 7-12 bitwise."""
    import shutil

    from safetensors.torch import load_file

    args = ["--preset", "tiny", "--set", "task=sft", "--set", "data.source=shakespeare-qa", "--set", "data.tokenizer=byte",
            "--set", "model.seq_len=128", "--set", "train.max_steps=12", "--set", "checkpoint.interval=6",
            "--set", "checkpoint.keep_last=3", "--set", "train.eval_interval=6"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("train", *args, "--run-dir", str(straight))
    shutil.copytree(straight, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012")
    cli("train", *args, "--run-dir", str(resumed), "--resume")
    a = load_file(straight / "checkpoints" / "step-00000012" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step-00000012" / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    loss = [[r["loss"] for r in read_rows(run / "metrics.jsonl") if r["split"] == "train"] for run in (straight, resumed)]
    assert loss[0] == loss[1]


def test_export_writes_the_chat_template_trainlab_trains_with(tmp_path, bpe):
    """transformers' apply_chat_template on an exported SFT directory renders the text and ids trainlab
    trains on and prompts with, and generation stops at the end marker."""
    from transformers import AutoTokenizer, GenerationConfig

    from trainlab.config import ModelConfig
    from trainlab.models.hf import write_llama_files

    sft = SFTConfig()
    template = Template(sft, bpe)
    bpe.save(tmp_path / "tokenizer.json")
    out = tmp_path / "hf"
    out.mkdir()
    write_llama_files(out, ModelConfig(vocab_size=bpe.vocab_size), bpe, tmp_path / "tokenizer.json", chat_template(sft),
                      [sft.end])
    hf = AutoTokenizer.from_pretrained(out)
    messages = FORMATS["messages"]["messages"]
    pieces = template.pieces(messages)
    assert hf.apply_chat_template(messages, tokenize=False) == "".join(t for t, _ in pieces) + sft.turn_end
    asked = [{"role": "user", "content": PROMPT}]
    ids = hf.apply_chat_template(asked, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == template.prompt(PROMPT).tolist()
    assert GenerationConfig.from_pretrained(out).stop_strings == [sft.end]
