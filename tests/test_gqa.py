"""Grouped-query attention (model.n_kv_head): the config check, both attention kernels against an equivalent
model with a key/value head per query head, the KV cache, counts and FLOPs, and transformers parity both ways
(Llama and Qwen3 export, init_from of a LlamaForCausalLM with num_key_value_heads < num_attention_heads)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from trainlab.config import ModelConfig
from trainlab.errors import ConfigError
from trainlab.models.generate import generate
from trainlab.models.gpt import GPT, KVCache, init_hint

from conftest import assert_logits_match, cli, exported_run_matches, kernel_outputs

VOCAB = 97


def gqa_cfg(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=64, vocab_size=VOCAB, ffn_hidden=64,
                tie_embeddings=False, init_std=0.1)
    return ModelConfig(**{**base, **kw})


def random_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A GPT in eval mode with its norm weights away from their init of ones (a misplaced norm shows)."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def tokens(n: int = 24, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def test_n_kv_head_must_divide_n_head():
    from trainlab.presets import resolve

    with pytest.raises(ConfigError) as err:
        resolve("tiny", overrides=["model.n_head=4", "model.n_kv_head=3"])
    assert str(err.value) == "model.n_kv_head (3) must divide model.n_head (4)"
    assert resolve("tiny", overrides=["model.n_head=4", "model.n_kv_head=2"]).model.kv_heads == 2
    assert resolve("tiny").model.kv_heads == resolve("tiny").model.n_head  # unset: a key/value head per head


def with_heads_repeated(gqa: GPT) -> GPT:
    """The same network written without grouping: each query head gets its own copy of its group's keys and
    values (key/value head j serves query heads j*g .. j*g+g-1, as transformers' repeat_kv)."""
    cfg = gqa.cfg
    H, K, D = cfg.n_head, cfg.kv_heads, cfg.head_dim
    full = GPT(cfg.model_copy(update={"n_kv_head": None})).eval()
    state = dict(gqa.state_dict())
    for i in range(cfg.n_layer):
        q, k, v = state[f"blocks.{i}.attn.qkv_proj.weight"].split([H * D, K * D, K * D])
        k, v = (w.view(K, D, -1).repeat_interleave(H // K, dim=0).reshape(H * D, -1) for w in (k, v))
        state[f"blocks.{i}.attn.qkv_proj.weight"] = torch.cat([q, k, v])
    full.load_weights(state)
    return full


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_both_kernels_equal_a_model_with_a_key_value_head_per_query_head(kernel):
    model = random_model(gqa_cfg())
    assert model.blocks[0].attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 8, 32)
    full = with_heads_repeated(model)
    model.use_attention(kernel)
    full.use_attention(kernel)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(model(x), full(x), rtol=1e-5, atol=1e-5)


def test_math_kernel_equals_sdpa_in_values_and_gradients():
    outs, grads = kernel_outputs(random_model(gqa_cfg()), tokens())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_kv_cache_holds_the_kv_heads_and_equals_recomputation(kernel):
    cfg = gqa_cfg(seq_len=16, n_kv_head=1)
    model = random_model(cfg)
    model.use_attention(kernel)
    cache = KVCache.empty(cfg, 2, 16, "cpu", torch.float32)
    assert cache.keys[0].shape == cache.values[0].shape == (2, 1, 16, 8)
    x = tokens(12)
    with torch.no_grad():
        full = model(x)
        parts = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    # 30 new tokens run past seq_len=16: the cache is refilled from the sliding window too
    prompt = tokens(5)
    assert torch.equal(generate(model, prompt, 30, temperature=0, use_cache=True),
                       generate(model, prompt, 30, temperature=0, use_cache=False))
    sampled = [generate(model, prompt, 30, temperature=1.0, top_k=10, seed=7, use_cache=c) for c in (True, False)]
    assert torch.equal(*sampled)


def test_counts_and_flops_follow_the_kv_heads():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainlab.experiment.estimate import estimate, qkv_width
    from trainlab.presets import resolve
    from trainlab.tasks import meta_model

    sets = ["model.n_head=4", f"model.vocab_size={VOCAB}"]
    mha, gqa = resolve("tiny", overrides=sets), resolve("tiny", overrides=[*sets, "model.n_kv_head=2"])
    real = GPT(gqa.model)
    d = gqa.model.d_model
    # k and v lose half their rows in every layer
    assert GPT(mha.model).num_params() - real.num_params() == gqa.model.n_layer * 2 * (d // 2) * d
    estimated = estimate(gqa, "fp32", torch.device("cpu"))["params"]["total"]
    assert meta_model(gqa).num_params() == real.num_params() == estimated
    assert meta_model(gqa).flops_per_token() == real.flops_per_token()
    assert qkv_width(mha) == 3 * d and qkv_width(gqa) == (4 + 2 * 2) * (d // 4) + 2 * d
    # torch's count of a forward and backward of seq_len-long rows (the math backend: matmuls it sees)
    x = torch.randint(0, VOCAB, (2, gqa.model.seq_len + 1), generator=torch.Generator().manual_seed(0))
    real.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.cross_entropy(real(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    measured = counter.get_total_flops() / (2 * gqa.model.seq_len)
    assert abs(real.flops_per_token() - measured) / measured < 0.05, (real.flops_per_token(), measured)


@pytest.mark.parametrize("qk_norm,model_type", [(False, "llama"), (True, "qwen3")])
def test_export_matches_transformers(qk_norm, model_type):
    import transformers

    from trainlab.models.hf import llama_config, to_llama

    cfg = gqa_cfg(qk_norm=qk_norm)
    model = random_model(cfg)
    config = llama_config(cfg)
    assert config["model_type"] == model_type and config["num_key_value_heads"] == 2
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    mapped = to_llama(model.state_dict(), cfg)
    assert mapped["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)
    hf.load_state_dict(mapped, strict=True)
    x = tokens()
    with torch.no_grad():
        assert_logits_match(hf(x).logits, model(x), f"export {model_type} n_kv_head=2")


def random_llama(tmp_path, qk_norm: bool):
    """A random LlamaForCausalLM (Qwen3ForCausalLM) with 2 key/value heads for 4 query heads, saved."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6,
                  rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.1, attention_bias=False)
    torch.manual_seed(0)
    if qk_norm:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, mlp_bias=False))
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    hf.eval().save_pretrained(str(tmp_path))
    assert list(tmp_path.glob("*.safetensors"))
    return hf


@pytest.mark.parametrize("qk_norm", [False, True])
def test_a_transformers_gqa_model_loads_with_the_same_logits(tmp_path, qk_norm):
    from trainlab.models.hf import load_transformers_dir

    hf = random_llama(tmp_path, qk_norm)
    weights = load_transformers_dir(tmp_path)
    cfg = gqa_cfg(qk_norm=qk_norm, norm_eps=1e-6)
    model = GPT(cfg).eval()
    model.load_weights(weights)
    x = tokens()
    with torch.no_grad():
        assert_logits_match(hf(x).logits, model(x), f"init_from {'qwen3' if qk_norm else 'llama'} 4 heads / 2 kv")
    # a model with a key/value head per query head does not fit them, and the hint names the key
    with pytest.raises((ValueError, RuntimeError)):
        GPT(gqa_cfg(qk_norm=qk_norm, n_kv_head=None)).load_weights(weights)
    assert init_hint(weights, gqa_cfg(qk_norm=qk_norm, n_kv_head=None)) == "; set model.n_kv_head=2 as its source has"
    assert init_hint(weights, cfg) == ""


def test_a_tiny_gqa_run_exports_to_transformers_and_generates_the_same_text(tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    heads = ["--set", "model.n_head=4", "--set", "model.n_kv_head=2"]
    cli("train", "--preset", "tiny", *heads, "--set", "train.max_steps=30", "--run-dir", str(run))
    cli("export", str(run), "--format", "hf", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["num_attention_heads"] == 4
    # "ROMEO:\nWhat" with 12 new tokens stays inside the tiny preset's 32-token context; init_from reads the
    # export back as the same tensors, and a model without grouping is refused with a hint
    hf = exported_run_matches(out, run, "ROMEO:\nWhat", "tiny run n_head=4 n_kv_head=2, exported")
    assert hf.config.num_key_value_heads == 2
    proc = cli("train", "--preset", "tiny", "--set", "model.n_head=4", "--set", f"init_from={out}",
               "--run-dir", str(tmp_path / "mismatch"), check=False)
    assert proc.returncode == 2 and "do not fit" in proc.stderr and "set model.n_kv_head=2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "mismatch").exists()
