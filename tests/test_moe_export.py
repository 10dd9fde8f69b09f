"""A mixture of experts in transformers' formats, both ways: Mixtral (no qk_norm), Qwen3-MoE (qk_norm) and
Qwen2-MoE (a shared expert, gated or not) compute the same logits as trainlab's model, and init_from reads
each class back; a setting no class computes exits 2 with one line naming it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from trainlab.config import ModelConfig
from trainlab.errors import ConfigError, TrainlabError
from trainlab.models.gpt import GPT, init_hint
from trainlab.models.hf import CAUSAL, causal_type, llama_config, load_transformers_dir, to_llama

from conftest import assert_logits_match, cli, exported_run_matches

VOCAB = 97
CASES = {  # trainlab settings -> the class they export as
    "mixtral": dict(qk_norm=False, moe=dict(norm_topk=True)),
    "qwen3_moe": dict(qk_norm=True, moe=dict(norm_topk=False, expert_hidden=48)),
    "qwen2_moe": dict(qk_norm=False, moe=dict(shared_expert=True, expert_hidden=48)),
    "qwen2_moe+gate": dict(qk_norm=False, moe=dict(shared_expert=True, shared_gate=True, norm_topk=False)),
}


def moe_cfg(qk_norm: bool = False, moe: dict | None = None, **kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=32, seq_len=64, vocab_size=VOCAB, ffn_hidden=64,
                tie_embeddings=False, init_std=0.1, norm_eps=1e-6, qk_norm=qk_norm)
    return ModelConfig(**{**base, **kw, "moe": {"experts": 4, "top_k": 2, **(moe or {})}})


def random_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A trainlab MoE in eval mode (every assignment kept), norm weights away from their init of ones."""
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def tokens(n: int = 24, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(1))


def transformers_class(name: str):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, name):
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    return transformers


@pytest.mark.parametrize("case", list(CASES))
def test_export_computes_the_same_logits_in_transformers(tmp_path, case):
    kind = case.split("+")[0]
    transformers = transformers_class(CAUSAL[kind])
    cfg = moe_cfg(**CASES[case])
    model = random_model(cfg)
    assert causal_type(cfg) == kind
    config = llama_config(cfg)
    assert config["model_type"] == kind and config["num_key_value_heads"] == 2
    # the layout transformers holds in memory, loaded strictly: every tensor named, none left over
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    assert type(hf).__name__ == CAUSAL[kind]
    hf.load_state_dict(to_llama(model.state_dict(), cfg, fused_experts=True), strict=True)
    x = tokens()
    with torch.no_grad():
        ours = model(x)
        assert_logits_match(hf(x).logits, ours, f"export {case} (load_state_dict)")
    # the directory export writes: one tensor per expert, as checkpoints store them; from_pretrained reads it
    mapped = to_llama(model.state_dict(), cfg)
    assert any(".experts.3." in k for k in mapped) and not any("gate_up_proj" in k for k in mapped)
    save_file(mapped, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert_logits_match(loaded(x).logits, ours, f"export {case} (from_pretrained)")
    # and init_from reads it back tensor for tensor (an ungated shared expert: doubled, then halved back)
    weights = load_transformers_dir(tmp_path)
    assert weights.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v), k


def test_the_aux_loss_weight_becomes_router_aux_loss_coef():
    """Transformers' balancing term counts each token's top_k assignments (top_k when balanced), ours their
    shares (1 when balanced): with the weight divided by top_k, one layer's loss is the same."""
    transformers = transformers_class("MixtralForCausalLM")
    cfg = moe_cfg(n_layer=1, moe=dict(aux_loss_weight=0.03))
    model = random_model(cfg)
    config = llama_config(cfg)
    assert config["router_aux_loss_coef"] == pytest.approx(0.03 / 2)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    hf.load_state_dict(to_llama(model.state_dict(), cfg, fused_experts=True), strict=True)
    x = tokens()
    with torch.no_grad():
        ours = model(x, with_aux=True)[1]
        theirs = hf(x, output_router_logits=True).aux_loss * hf.config.router_aux_loss_coef
    assert float(theirs) == pytest.approx(float(ours), rel=1e-5)


def random_transformers(tmp_path, kind: str, gate: str = "random"):
    """A random transformers MoE of this class (4 heads, 2 key/value heads, 4 experts, top-2), saved with
    save_pretrained; for Qwen2-MoE the shared expert's gate random or zero."""
    transformers = transformers_class(CAUSAL[kind])
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                  tie_word_embeddings=False, initializer_range=0.1, num_experts_per_tok=2)
    extra = {"mixtral": dict(intermediate_size=48, num_local_experts=4, sliding_window=None),
             "qwen3_moe": dict(intermediate_size=64, moe_intermediate_size=48, num_experts=4, norm_topk_prob=False,
                               attention_bias=False),
             "qwen2_moe": dict(intermediate_size=64, moe_intermediate_size=48, num_experts=4, norm_topk_prob=True,
                               shared_expert_intermediate_size=48, qkv_bias=False)}[kind]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(kind, **common, **extra))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
            if name.endswith("shared_expert_gate.weight") and gate == "zero":
                p.zero_()
    hf.eval().save_pretrained(str(tmp_path))
    assert list(tmp_path.glob("*.safetensors"))
    return hf


READ = {  # a random transformers model -> the trainlab settings that compute it
    "mixtral": dict(moe=dict(expert_hidden=48)),
    "qwen3_moe": dict(qk_norm=True, moe=dict(expert_hidden=48, norm_topk=False)),
    "qwen2_moe": dict(moe=dict(expert_hidden=48, shared_expert=True, shared_gate=True)),
    "qwen2_moe+zero_gate": dict(moe=dict(expert_hidden=48, shared_expert=True)),
}


@pytest.mark.parametrize("case", list(READ))
def test_init_from_reads_a_transformers_moe_with_the_same_logits(tmp_path, case):
    kind, _, variant = case.partition("+")
    hf = random_transformers(tmp_path, kind, gate="zero" if variant else "random")
    weights = load_transformers_dir(tmp_path)
    cfg = moe_cfg(**READ[case])
    model = GPT(cfg).eval()
    model.load_weights(weights)
    x = tokens()
    with torch.no_grad():
        assert_logits_match(hf(x).logits, model(x), f"init_from {case}")
    if kind == "qwen2_moe":  # the other gate setting does not fit, and the hint names it
        other = moe_cfg(**{**READ[case], "moe": {**READ[case]["moe"], "shared_gate": bool(variant)}})
        with pytest.raises(ValueError):
            GPT(other).load_weights(weights)
        source = "false" if variant else "true"
        assert init_hint(weights, other) == f"; set model.moe.shared_gate={source} as its source has"


def test_settings_no_transformers_class_computes_are_refused():
    mixtral_unnormalised = moe_cfg(moe=dict(norm_topk=False))
    with pytest.raises(TrainlabError, match="norm_topk=false") as err:
        to_llama(GPT(mixtral_unnormalised).state_dict(), mixtral_unnormalised)
    assert "\n" not in str(err.value)
    shared_qk_norm = moe_cfg(qk_norm=True, moe=dict(shared_expert=True))
    with pytest.raises(TrainlabError, match="qk_norm=true") as err:
        llama_config(shared_qk_norm)
    assert "\n" not in str(err.value)
    from trainlab.presets import resolve

    with pytest.raises(ConfigError, match="model.moe.shared_gate needs model.moe.shared_expert=true"):
        resolve("tiny", overrides=["model.moe.experts=4", "model.moe.shared_gate=true"])


def test_a_mixtral_without_renormalisation_exits_2_on_export(tmp_path):
    run, out = tmp_path / "run", tmp_path / "hf"
    cli("train", "--preset", "tiny", "--set", "model.moe.experts=4", "--set", "model.moe.norm_topk=false",
        "--set", "train.max_steps=2", "--set", "train.eval_interval=2", "--run-dir", str(run))
    proc = cli("export", str(run), "--format", "hf", "--out", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "norm_topk=false" in proc.stderr
    assert not out.exists()


def test_a_tiny_moe_run_exports_as_qwen2_moe_and_reads_back(tmp_path):
    """A shared expert without a gate, with grouped-query attention: transformers computes the same logits and
    greedy text; init_from reads the directory back, and a model with a gate is refused with a hint."""
    transformers_class("Qwen2MoeForCausalLM")  # skips where this transformers lacks the class

    run, out = tmp_path / "run", tmp_path / "hf"
    moe = ["--set", "model.moe.experts=4", "--set", "model.moe.shared_expert=true", "--set", "model.n_head=4",
           "--set", "model.n_kv_head=2"]
    cli("train", "--preset", "tiny", *moe, "--set", "train.max_steps=30", "--run-dir", str(run))
    cli("export", str(run), "--format", "hf", "--out", str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe" and config["num_key_value_heads"] == 2
    exported_run_matches(out, run, "ROMEO:\nWhat", "tiny MoE run (shared expert), exported as Qwen2-MoE")
    proc = cli("train", "--preset", "tiny", *moe, "--set", "model.moe.shared_gate=true", "--set", f"init_from={out}",
               "--run-dir", str(tmp_path / "mismatch"), check=False)
    assert proc.returncode == 2 and "set model.moe.shared_gate=false" in proc.stderr
