"""trainlab estimate: counts from the meta model equal the real model's; seed 000's table."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli
from trainlab.config import resolve
from trainlab.experiment.estimate import activation_bytes, estimate, meta_model, param_counts
from trainlab.models.gpt import GPT


@pytest.mark.parametrize("shape", [
    dict(n_layer=2, n_head=2, d_model=32, vocab_size=81, tie_embeddings=True),
    dict(n_layer=3, n_head=4, d_model=64, vocab_size=300, tie_embeddings=False),
    dict(n_layer=1, n_head=1, d_model=8, vocab_size=1000, tie_embeddings=False, output_bias=True),
])
def test_meta_counts_equal_the_real_model(shape):
    overrides = [f"model.{k}={v}" for k, v in shape.items()]
    cfg = resolve("tiny", overrides=overrides)
    real = GPT(cfg.model)
    counts = param_counts(meta_model(cfg))
    assert counts["total"] == sum(p.numel() for p in real.parameters())
    assert counts["non_embedding"] == real.num_params(exclude_embedding=True)
    assert counts["total"] == counts["embedding"] + counts["non_embedding"] == counts["active"]


# Seed 000's micro-BERT table at a 250,000 vocabulary, untied embeddings with an output bias. Until the
# masked LM exists, the causal model of the same shape stands in (no position table, SwiGLU, RMSNorm).
SEED_000 = [  # (layers, heads, width, the document's count)
    (2, 1, 4, 2.3e6), (2, 2, 16, 8.3e6), (4, 4, 64, 32.7e6), (1, 1, 8, 4.3e6)]


@pytest.mark.parametrize("layers,heads,width,documented", SEED_000)
def test_seed_000_parameter_table_within_5_percent(layers, heads, width, documented):
    cfg = resolve("tiny", overrides=[f"model.n_layer={layers}", f"model.n_head={heads}", f"model.d_model={width}",
                                     "model.vocab_size=250000", "model.tie_embeddings=false",
                                     "model.output_bias=true"])
    total = param_counts(meta_model(cfg))["total"]
    assert abs(total - documented) / documented < 0.05, total


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
    assert result["tokens"] == 20 * cfg.tokens_per_step and result["estimated_seconds"] == result["tokens"] / 1000.0


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

    from trainlab.experiment.estimate import peak_flops

    before = torch.get_rng_state()
    assert peak_flops("fp32", torch.device("cpu"), cache_dir=tmp_path) > 0
    assert torch.equal(torch.get_rng_state(), before)
