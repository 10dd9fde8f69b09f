"""An exported causal LM is whole for transformers: AutoTokenizer and AutoModelForCausalLM load it, the
tokenizer gives trainlab's ids, and greedy text from transformers' `generate` equals `trainlab generate`'s,
for every tokenizer kind (characters as in `tiny` and the demo, bytes, BPE)."""

from __future__ import annotations

import pytest

from conftest import cli

PROMPT = "ROMEO:\nWhat light through yonder window breaks? ¿Qué?"
# the prompt and its continuation fit the context (96 positions): past it trainlab slides its window while
# transformers extends the rotary positions, and the two would rightly differ
SMALL = ["--set", "train.max_steps=12", "--set", "train.eval_interval=12", "--set", "checkpoint.interval=12",
         "--set", "model.seq_len=96"]
NEW = 16
CASES = {
    "tiny-char": ["--preset", "tiny"],
    "demo-char": ["--preset", "shakespeare-char", "--set", "model.n_layer=1", "--set", "model.d_model=32",
                  "--set", "model.n_head=2", "--set", "train.batch_size=4",
                  "--set", "train.max_seconds=null", "--set", "train.compile=false", "--set", "train.precision=fp32",
                  "--set", "train.threads=1"],
    "byte": ["--preset", "tiny", "--set", "data.tokenizer=byte"],
    "bpe": ["--preset", "tiny", "--set", "data.tokenizer=bpe", "--set", "data.bpe_vocab_size=300"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_the_tokenizer_and_generates_trainlab_text(tmp_path, case):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainlab.inference import load_run

    run, out = tmp_path / "run", tmp_path / "hf"
    cli("train", *CASES[case], *SMALL, "--run-dir", str(run))
    cli("export", str(run), "--format", "hf", "--out", str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_run(run)
    ids = tok(PROMPT)["input_ids"]
    assert len(ids) + NEW <= ours.cfg.model.seq_len
    assert ids == ours.tokenizer.encode(PROMPT).tolist()  # the same ids, unseen characters included
    assert tok.decode(ids) == ours.tokenizer.decode(ids)
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(ids):].tolist()
    theirs = PROMPT + tok.decode(new)
    printed = cli("generate", str(run), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", str(NEW)).stdout
    assert printed == theirs + "\n"
