"""The decoder: causality, KV cache, and parity with transformers' Llama (Qwen3 with qk_norm) on the same weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainlab.config import ModelConfig
from trainlab.models.gpt import GPT, KVCache

from conftest import kernel_outputs


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, d_model=32, seq_len=24, vocab_size=50, tie_embeddings=False)
    cfg.update(kw)
    return GPT(ModelConfig(**cfg)).eval()


def test_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 50, (2, 8))
    assert not torch.equal(x, y)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_kv_cache_prefill_and_decode_equal_full_recomputation(qk_norm):
    model = tiny_model(qk_norm=qk_norm)
    x = torch.randint(0, 50, (3, 18))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.empty(model.cfg, 3, model.cfg.seq_len, "cpu", torch.float32)
        parts = [model(x[:, :10], cache)]  # prefill
        parts += [model(x[:, t:t + 1], cache) for t in range(10, 14)]  # one token at a time
        parts.append(model(x[:, 14:], cache))  # several tokens after a prefix: needs the offset mask
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_tied_embeddings_share_one_tensor():
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight
    # from the layer shapes (d 32, SwiGLU hidden 96, vocabulary 50): the shared table counts once
    d, h, V = 32, 96, 50
    per_block = 2 * d + 3 * d * d + d * d + 2 * d * h + h * d
    assert model.num_params() == V * d + 2 * per_block + d
    assert model.num_params(exclude_embedding=True) == 2 * per_block + d
    untied = tiny_model(tie_embeddings=False)
    assert untied.num_params() == 2 * V * d + 2 * per_block + d


def test_flops_estimate_counts_the_real_parameters():
    model = tiny_model()
    n = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    cfg = model.cfg
    assert model.flops_per_token() == 6 * n + 12 * cfg.n_layer * cfg.seq_len * cfg.d_model


@pytest.mark.parametrize("qk_norm", [False, True])
def test_logits_match_transformers_llama_on_the_same_weights(qk_norm):
    """Llama; with qk_norm, Qwen3 (Llama with RMSNorm on each head's queries and keys before RoPE)."""
    transformers = pytest.importorskip("transformers")
    model = tiny_model(seed=3, qk_norm=qk_norm)
    cfg = model.cfg
    if qk_norm:  # norm weights away from their init of ones, so a norm left out or misplaced shows
        with torch.no_grad():
            for block in model.blocks:
                block.attn.q_norm.weight.uniform_(0.5, 1.5)
                block.attn.k_norm.weight.uniform_(0.5, 1.5)
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden_size,
                  num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_head,
                  head_dim=cfg.head_dim, max_position_embeddings=cfg.seq_len, rms_norm_eps=cfg.norm_eps,
                  rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=False)
    if qk_norm:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common)).eval()
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, mlp_bias=False)).eval()
    from trainlab.models.hf import to_llama

    mapped = to_llama(model.state_dict(), cfg)  # the exporter's mapping: q/k/v and gate/up split one-to-one
    assert sum(".q_norm." in k for k in mapped) == (cfg.n_layer if qk_norm else 0)
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_math_attention_equals_sdpa(dropout):
    """The explicit kernel (chosen for bf16 on CPUs) computes what scaled_dot_product_attention does,
    logits and gradients; with dropout both are the same model in eval mode."""
    model = tiny_model(dropout=dropout)
    x = torch.randint(0, 50, (2, 20))
    outs, grads = kernel_outputs(model, x)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    if dropout == 0.0:
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: agree to bf16's precision
        model.use_attention("sdpa")
        a = model(x).float()
        model.use_attention("math")
        b = model(x).float()
    assert (a - b).abs().max() < 0.05


@pytest.mark.parametrize("causal,T", [(True, 7), (False, 7), (True, 150), (False, 70)])
def test_attention_operator_equals_sdpa_and_passes_opcheck(causal, T):
    """trainlab::blocked_attention (the math kernel without dropout): outputs and input gradients equal
    scaled_dot_product_attention's in fp32, also where causal attention runs in query blocks
    (T=150: blocks of 64, 64 and 22 queries); its fake and autograd registrations pass torch's opcheck,
    which is what lets torch.compile keep it whole."""
    from trainlab.models.gpt import ATTENTION_BLOCK

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 8, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 3, T, 8)
    out, probs = torch.ops.trainlab.blocked_attention(q, k, v, causal)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if T <= ATTENTION_BLOCK:  # one block: the probabilities are the full (B, H, T, T) matrix
        probs = probs.view(2, 3, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, T))
        assert bool((probs[..., 0, 1:] == 0).all()) == causal  # the first query sees only itself when causal
    else:  # blocks skip the keys no query of theirs sees: 64x64 + 64x128 + 22x150 per head when causal
        assert probs.numel() == 6 * ((64 * 64 + 64 * 128 + 22 * 150) if causal else T * T)
    torch.library.opcheck(torch.ops.trainlab.blocked_attention.default, (q, k, v, causal))
    q, k, v, probs = q.detach(), k.detach(), v.detach(), probs.detach()
    backward = torch.ops.trainlab.blocked_attention_backward(g, q, k, v, probs, causal)
    assert all(torch.equal(a, b) for a, b in zip(backward, grads))  # autograd's backward is this operator
    torch.library.opcheck(torch.ops.trainlab.blocked_attention_backward.default, (g, q, k, v, probs, causal))


def test_attention_kernel_choice():
    from trainlab.hardware import attention_kernel

    cpu = torch.device("cpu")
    assert attention_kernel("auto", cpu, "bf16", 256) == "math"
    assert attention_kernel("auto", cpu, "bf16", 1024) == "sdpa"
    assert attention_kernel("auto", cpu, "fp32", 256) == "sdpa"
    assert attention_kernel("sdpa", cpu, "bf16", 256) == "sdpa"


def test_qk_norm_under_bf16_autocast_stays_on_the_fused_kernel():
    """q and k arrive in bf16 under autocast while the norm's weight is fp32: the norm casts its weight, so
    torch raises no "Mismatch dtype" warning (once printed by every bf16 demo run), and the output follows."""
    import warnings

    import torch.nn.functional as F

    from trainlab.models.gpt import RMSNorm

    norm = RMSNorm(16, 1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 16).to(torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x)
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
    assert y.dtype == torch.bfloat16
    expected = F.rms_norm(x.float(), (16,), norm.weight, 1e-5)
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
