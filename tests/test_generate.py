"""Sampling: processors equal transformers' logits processors; KV-cache decoding equals recomputation."""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ModelConfig
from trainlab.models.generate import apply_repetition_penalty, apply_top_k, apply_top_p, generate
from trainlab.models.gpt import GPT

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper)


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(4, 97) * 3


@pytest.mark.parametrize("k", [1, 5, 40, 96])
def test_top_k_equals_transformers(logits, k):
    expected = TopKLogitsWarper(top_k=k)(None, logits.clone())
    assert torch.equal(apply_top_k(logits.clone(), k), expected)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_equals_transformers(logits, p):
    expected = TopPLogitsWarper(top_p=p)(None, logits.clone())
    ours = apply_top_p(logits.clone(), p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    torch.testing.assert_close(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])


@pytest.mark.parametrize("penalty", [0.8, 1.2, 2.0])
def test_repetition_penalty_equals_transformers(logits, penalty):
    seen = torch.randint(0, 97, (4, 12))
    expected = RepetitionPenaltyLogitsProcessor(penalty=penalty)(seen, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits.clone(), seen, penalty), expected)


def model(seq_len=16):
    torch.manual_seed(1)
    return GPT(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=seq_len, vocab_size=40)).eval()


def test_kv_cache_generation_equals_full_recomputation_past_the_context():
    m = model()
    prompt = torch.randint(0, 40, (2, 5))
    # 30 new tokens run past seq_len=16, so the cache is refilled from a sliding window too
    cached = generate(m, prompt, 30, temperature=0, use_cache=True)
    full = generate(m, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(cached, full)
    sampled_a = generate(m, prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=7, use_cache=True)
    sampled_b = generate(m, prompt, 30, temperature=1.0, top_k=10, top_p=0.9, seed=7, use_cache=False)
    assert torch.equal(sampled_a, sampled_b)


def test_sampling_is_deterministic_under_a_seed_and_varies_without():
    m = model()
    prompt = torch.randint(0, 40, (1, 4))
    a = generate(m, prompt, 20, temperature=1.0, seed=3)
    b = generate(m, prompt, 20, temperature=1.0, seed=3)
    c = generate(m, prompt, 20, temperature=1.0, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_picks_the_argmax_each_step():
    m = model()
    prompt = torch.randint(0, 40, (1, 3))
    out = generate(m, prompt, 5, temperature=0)
    seq = prompt
    for t in range(5):
        nxt = m(seq)[:, -1].argmax(-1, keepdim=True)
        assert int(nxt) == int(out[0, t])
        seq = torch.cat([seq, nxt], 1)
