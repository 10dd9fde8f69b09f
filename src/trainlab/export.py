"""Export a run to the Hugging Face format: a causal LM becomes a Llama-compatible directory
(config.json, model.safetensors, tokenizer) that `transformers.AutoModelForCausalLM` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from trainlab.config import ModelConfig
from trainlab.errors import TrainlabError


def llama_config(cfg: ModelConfig, eos_id=None) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden_size, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32", "bos_token_id": None,
            "eos_token_id": eos_id, "initializer_range": cfg.init_std}


def to_llama(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names to Llama's: the fused q/k/v and gate/up matrices split one-to-one."""
    if cfg.output_bias:
        raise TrainlabError("this run has model.output_bias=true; a Llama checkpoint has no output bias")
    if cfg.moe.experts:
        raise TrainlabError("this run is a mixture of experts (model.moe.experts > 0); a Llama directory holds dense "
                            "feed-forward layers only, so it cannot be exported in hf format")
    out = {"model.embed_tokens.weight": weights["embed.weight"], "model.norm.weight": weights["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = weights["lm_head.weight"]
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = weights[p + "attn_norm.weight"]
        out[q + "post_attention_layernorm.weight"] = weights[p + "mlp_norm.weight"]
        for name, w in zip(("q_proj", "k_proj", "v_proj"), weights[p + "attn.qkv_proj.weight"].chunk(3)):
            out[q + f"self_attn.{name}.weight"] = w
        out[q + "self_attn.o_proj.weight"] = weights[p + "attn.o_proj.weight"]
        for name, w in zip(("gate_proj", "up_proj"), weights[p + "mlp.gate_up_proj.weight"].chunk(2)):
            out[q + f"mlp.{name}.weight"] = w
        out[q + "mlp.down_proj.weight"] = weights[p + "mlp.down_proj.weight"]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def export_hf(run_dir: Path, out: Path) -> Path:
    """Write the run's best checkpoint as a transformers directory; built in a temporary folder and renamed."""
    from safetensors.torch import save_file

    from trainlab.inference import load_run

    run = load_run(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TrainlabError(f"--out '{out}' exists and is not empty")
    state = to_llama(run.model.state_dict(), run.cfg.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(llama_config(run.cfg.model, run.tokenizer.eos_id), indent=1))
        (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": run.tokenizer.eos_id}))
        tok = Path(run_dir) / "tokenizer.json"
        if run.tokenizer.kind == "bpe":  # a tokenizers JSON: transformers' fast tokenizer reads it as is
            shutil.copy(tok, tmp / "tokenizer.json")
            (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        else:  # char and byte vocabularies are trainlab's own: kept beside the weights
            shutil.copy(tok, tmp / "trainlab_tokenizer.json")
        (tmp / "trainlab_run.json").write_text(json.dumps({"run": str(run_dir), "step": run.step,
                                                           "tokenizer": run.tokenizer.kind}))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def from_llama(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Llama's names to ours: q/k/v and gate/up fused back into one matrix each."""
    out = {"embed.weight": state["model.embed_tokens.weight"], "norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(n_layer):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        out[p + "attn_norm.weight"] = state[q + "input_layernorm.weight"]
        out[p + "mlp_norm.weight"] = state[q + "post_attention_layernorm.weight"]
        out[p + "attn.qkv_proj.weight"] = torch.cat([state[q + f"self_attn.{n}.weight"]
                                                    for n in ("q_proj", "k_proj", "v_proj")])
        out[p + "attn.o_proj.weight"] = state[q + "self_attn.o_proj.weight"]
        out[p + "mlp.gate_up_proj.weight"] = torch.cat([state[q + f"mlp.{n}.weight"] for n in ("gate_proj", "up_proj")])
        out[p + "mlp.down_proj.weight"] = state[q + "mlp.down_proj.weight"]
    return out


def load_transformers_dir(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a local transformers directory of a Llama-architecture model, in trainlab's names."""
    from safetensors.torch import load_file

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise TrainlabError(f"init_from '{path}': config.json is not readable JSON") from None
    if config.get("model_type") != "llama":
        raise TrainlabError(f"init_from '{path}': model_type {config.get('model_type')!r} is not supported "
                            f"(Llama-architecture causal LMs are)")
    if config.get("num_key_value_heads", config.get("num_attention_heads")) != config.get("num_attention_heads"):
        raise TrainlabError(f"init_from '{path}': grouped-query attention (num_key_value_heads < "
                            f"num_attention_heads) has no trainlab equivalent yet")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TrainlabError(f"init_from '{path}' holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    try:
        return from_llama(state, int(config["num_hidden_layers"]))
    except KeyError as err:
        raise TrainlabError(f"init_from '{path}': weight {err} is missing") from None
