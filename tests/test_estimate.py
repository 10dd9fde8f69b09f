"""trainlab estimate: counts from the meta model equal the real model's and its layer shapes; memory; the CLI.
(Seed 000's parameter table is checked against the masked LM itself, in test_masked_lm.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli
from trainlab.presets import resolve
from trainlab.experiment.estimate import activation_bytes, estimate, meta_model, param_counts
from trainlab.models.gpt import GPT


def causal_counts(n_layer, d_model, vocab_size, tie_embeddings=True, output_bias=False, **_):
    """A decoder's parameters from its layer shapes: per block two RMSNorm weights (d), q/k/v (3 d^2), the
    output projection (d^2), SwiGLU's gate and up (2 d h) and down (h d) with h = 8/3 d rounded up to a
    multiple of 32; a final norm (d); the token table (V d), an untied output head (V d) and its bias (V)."""
    d, V = d_model, vocab_size
    h = -(-(8 * d // 3) // 32) * 32
    non_embedding = n_layer * (2 * d + 4 * d * d + 3 * d * h) + d
    embedding = V * d + (0 if tie_embeddings else V * d) + (V if output_bias else 0)
    return embedding, non_embedding


@pytest.mark.parametrize("shape", [
    dict(n_layer=2, n_head=2, d_model=32, vocab_size=81, tie_embeddings=True),
    dict(n_layer=3, n_head=4, d_model=64, vocab_size=300, tie_embeddings=False),
    dict(n_layer=1, n_head=1, d_model=8, vocab_size=1000, tie_embeddings=False, output_bias=True),
])
def test_meta_counts_equal_the_real_model_and_the_layer_shapes(shape):
    overrides = [f"model.{k}={v}" for k, v in shape.items()]
    cfg = resolve("tiny", overrides=overrides)
    real = GPT(cfg.model)
    counts = param_counts(meta_model(cfg))
    embedding, non_embedding = causal_counts(**shape)
    assert counts["embedding"] == embedding and counts["non_embedding"] == non_embedding
    assert counts["total"] == embedding + non_embedding == sum(p.numel() for p in real.parameters())
    assert real.num_params(exclude_embedding=True) == non_embedding
    assert counts["active"] == counts["total"]  # no mixture of experts: every parameter is active


def test_memory_parts_follow_the_parameter_count():
    cfg = resolve("tiny", overrides=["model.vocab_size=81"])
    result = estimate(cfg, "fp32", torch.device("cpu"), tokens_per_s=1000.0)
    n = result["params"]["total"]
    mem = result["memory_bytes"]
    assert mem["weights"] == 4 * n and mem["gradients"] == 4 * n
    # tiny trains with Muon: one buffer for each matrix in the blocks, AdamW's two moments elsewhere
    muon = sum(p.numel() for name, p in GPT(cfg.model).named_parameters() if p.ndim == 2 and name.startswith("blocks."))
    assert muon > n / 2 and mem["optimizer"] == 8 * (n - muon) + 4 * muon
    adamw = estimate(resolve("tiny", overrides=["model.vocab_size=81", "optim.name=adamw"]), "fp32",
                     torch.device("cpu"), tokens_per_s=1000.0)
    assert adamw["memory_bytes"]["optimizer"] == 8 * n
    assert mem["total"] == mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    assert mem["activations_checkpointed"] < mem["activations"]
    assert activation_bytes(cfg, "bf16") < activation_bytes(cfg, "fp32")
    assert result["tokens"] == 20 * 4 * 32 and result["tokens_per_step"] == 4 * 32 and result["estimated_seconds"] == result["tokens"] / 1000.0


def test_cli_json_follows_the_contract():
    out = json.loads(cli("estimate", "--preset", "tiny", "--set", "model.vocab_size=81", "--json").stdout)
    assert set(out["params"]) == {"total", "embedding", "non_embedding", "active"}
    assert {"weights", "gradients", "optimizer", "activations", "total"} <= set(out["memory_bytes"])
    for key in ("flops_per_token", "tokens_per_step", "tokens_per_param", "estimated_seconds"):
        assert out[key] is not None and out[key] > 0
    table = cli("estimate", "--preset", "tiny", "--measure").stdout
    assert "tokens/s (measured)" in table and "tokens per parameter" in table


def test_measuring_the_peak_leaves_the_global_rng_alone(tmp_path):
    """A run that measures the peak (empty cache) must draw the same dropout masks as its resumed self."""
    import torch

    from trainlab.hardware import peak_flops

    before = torch.get_rng_state()
    assert peak_flops("fp32", torch.device("cpu"), cache_dir=tmp_path) > 0
    assert torch.equal(torch.get_rng_state(), before)
