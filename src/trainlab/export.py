"""Export a run to the Hugging Face format: a causal LM becomes a Llama-compatible directory (Qwen3 with
`model.qk_norm`: Llama with RMSNorm on queries and keys) holding config.json, model.safetensors and the
tokenizer, that `transformers.AutoModelForCausalLM` loads; a masked LM a BERT directory that
`transformers.AutoModelForMaskedLM` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch

from trainlab.config import ModelConfig, SFTConfig
from trainlab.errors import TrainlabError


def llama_config(cfg: ModelConfig, eos_id=None) -> dict:
    """Llama's config.json, or Qwen3's for a model with qk_norm (Qwen3 is Llama with RMSNorm on each head's
    queries and keys before the rotary embedding, which is what qk_norm computes)."""
    arch = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "use_sliding_window": False,
            "sliding_window": None} if cfg.qk_norm else {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    return {**arch, "vocab_size": cfg.vocab_size,
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
        if cfg.qk_norm:
            out[q + "self_attn.q_norm.weight"] = weights[p + "attn.q_norm.weight"]
            out[q + "self_attn.k_norm.weight"] = weights[p + "attn.k_norm.weight"]
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
    masked = run.cfg.task == "masked_lm"
    state = to_bert(run.model.state_dict(), run.cfg.model) if masked else to_llama(run.model.state_dict(), run.cfg.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tok = Path(run_dir) / "tokenizer.json"
        if masked:
            write_bert_files(tmp, run.cfg.model, run.tokenizer, tok)
        else:
            write_llama_files(tmp, run.cfg.model, run.tokenizer, tok, run.cfg.sft if run.cfg.task == "sft" else None)
        (tmp / "trainlab_run.json").write_text(json.dumps({"run": str(run_dir), "step": run.step, "task": run.cfg.task,
                                                           "tokenizer": run.tokenizer.kind}))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def chat_template(sft: SFTConfig) -> str:
    """The run's SFT template as the Jinja chat template transformers' `apply_chat_template` renders: the
    same text trainlab trains on (role prefix, content, turn end; answers close with the end marker), and
    with `add_generation_prompt` the assistant prefix a generation starts from."""
    lit = json.dumps  # a JSON string is a valid Jinja string literal
    prefix = "{" + ", ".join(f"{lit(role)}: {lit(getattr(sft, role))}" for role in ("system", "user")) + "}"
    return (f"{{%- set prefix = {prefix} -%}}"
            "{%- for m in messages -%}"
            f"{{%- if m['role'] == 'assistant' -%}}{{{{ {lit(sft.assistant)} }}}}{{{{ m['content'] }}}}"
            f"{{{{ {lit(sft.end)} }}}}"
            "{%- else -%}{{ prefix[m['role']] }}{{ m['content'] }}{%- endif -%}"
            f"{{{{ {lit(sft.turn_end)} }}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {lit(sft.assistant)} }}}}{{%- endif -%}}")


def write_llama_files(tmp: Path, cfg: ModelConfig, tokenizer, tok: Path, sft: Optional[SFTConfig] = None) -> None:
    (tmp / "config.json").write_text(json.dumps(llama_config(cfg, tokenizer.eos_id), indent=1))
    generation: dict = {"eos_token_id": tokenizer.eos_id}
    if sft is not None:  # an answer ends at the end marker: `generate(..., tokenizer=tok)` stops there
        generation["stop_strings"] = [sft.end]
    (tmp / "generation_config.json").write_text(json.dumps(generation))
    if tokenizer.kind == "bpe":  # a tokenizers JSON: transformers' fast tokenizer reads it as is
        shutil.copy(tok, tmp / "tokenizer.json")
        config: dict = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if sft is not None:
            config["chat_template"] = chat_template(sft)
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    else:  # char and byte vocabularies are trainlab's own: kept beside the weights
        shutil.copy(tok, tmp / "trainlab_tokenizer.json")


# ---------------------------------------------------------------------------------------------
# BERT (masked LM)


def bert_config(cfg: ModelConfig) -> dict:
    from trainlab.models.bert import TYPE_VOCAB

    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.ffn_hidden or 4 * cfg.d_model, "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "max_position_embeddings": cfg.seq_len, "type_vocab_size": TYPE_VOCAB, "layer_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std, "position_embedding_type": "absolute", "pad_token_id": None,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32"}


BERT_BLOCK = {  # ours (under blocks.i.) -> BertForMaskedLM's (under bert.encoder.layer.i.), besides q/k/v
    "attn.o_proj": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
    "mlp.up_proj": "intermediate.dense", "mlp.down_proj": "output.dense", "mlp_norm": "output.LayerNorm"}
BERT_TOP = {"embed.weight": "bert.embeddings.word_embeddings.weight",
            "pos_embed.weight": "bert.embeddings.position_embeddings.weight",
            "type_embed.weight": "bert.embeddings.token_type_embeddings.weight",
            "embed_norm.weight": "bert.embeddings.LayerNorm.weight", "embed_norm.bias": "bert.embeddings.LayerNorm.bias",
            "head.dense.weight": "cls.predictions.transform.dense.weight",
            "head.dense.bias": "cls.predictions.transform.dense.bias",
            "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "head.norm.bias": "cls.predictions.transform.LayerNorm.bias"}


def bert_names(n_layer: int) -> dict[str, str]:
    """Our parameter names -> BertForMaskedLM's, for every one-to-one tensor (q/k/v and the head's
    decoder are handled apart)."""
    names = dict(BERT_TOP)
    for i in range(n_layer):
        for ours, theirs in BERT_BLOCK.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"bert.encoder.layer.{i}.{theirs}.{kind}"
    return names


def to_bert(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our names to BertForMaskedLM's: the fused q/k/v split one-to-one; a model without an output
    bias gets BERT's as zeros (the same logits)."""
    out = {theirs: weights[ours] for ours, theirs in bert_names(cfg.n_layer).items()}
    for i in range(cfg.n_layer):
        p, q = f"blocks.{i}.attn.qkv_proj.", f"bert.encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            for name, w in zip(("query", "key", "value"), weights[p + kind].chunk(3)):
                out[q + f"{name}.{kind}"] = w
    if not cfg.tie_embeddings:
        out["cls.predictions.decoder.weight"] = weights["head.decoder.weight"]
    bias = weights.get("head.decoder.bias")
    # the decoder's bias is cls.predictions.bias, tied by transformers only along with the embeddings
    out["cls.predictions.bias"] = bias if bias is not None else torch.zeros(cfg.vocab_size)
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def write_bert_files(tmp: Path, cfg: ModelConfig, tokenizer, tok: Path) -> None:
    """config.json, and a tokenizer that knows [MASK]: a BPE tokenizer.json gets it as a special token
    with the id the model gives it (one past the tokenizer's vocabulary, unless it had its own)."""
    from trainlab.tasks.masked_lm import MASK_TOKEN, mask_id

    (tmp / "config.json").write_text(json.dumps(bert_config(cfg), indent=1))
    if tokenizer.kind != "bpe":  # char and byte vocabularies are trainlab's own: kept beside the weights
        shutil.copy(tok, tmp / "trainlab_tokenizer.json")
        return
    from tokenizers import AddedToken, Tokenizer

    hf = Tokenizer.from_str(tok.read_text(encoding="utf-8"))
    # lstrip: "to [MASK]" reads as "to" + [MASK], the space going with the masked word as in training
    hf.add_special_tokens([AddedToken(MASK_TOKEN, special=True, lstrip=True)])
    if hf.token_to_id(MASK_TOKEN) != mask_id(tokenizer):
        raise TrainlabError(f"the exported tokenizer would give {MASK_TOKEN} the id {hf.token_to_id(MASK_TOKEN)}, "
                            f"not the model's {mask_id(tokenizer)}")
    hf.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "mask_token": MASK_TOKEN, "model_max_length": cfg.seq_len}))


def from_bert(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """BertForMaskedLM's names to ours: q/k/v fused back. A bare BertModel's names (no `bert.` prefix)
    are read too, but its directory has no MLM head."""
    if not any(k.startswith("bert.") for k in state):
        state = {("bert." + k if not k.startswith("cls.") else k): v for k, v in state.items()}
    out = {ours: state[theirs] for ours, theirs in bert_names(n_layer).items()}
    for i in range(n_layer):
        p, q = f"blocks.{i}.attn.qkv_proj.", f"bert.encoder.layer.{i}.attention.self."
        for kind in ("weight", "bias"):
            out[p + kind] = torch.cat([state[q + f"{n}.{kind}"] for n in ("query", "key", "value")])
    # a tied directory leaves the decoder out: it is the word embedding (a copy for an untied model)
    out["head.decoder.weight"] = state.get("cls.predictions.decoder.weight", out["embed.weight"])
    out["head.decoder.bias"] = state.get("cls.predictions.bias", state.get("cls.predictions.decoder.bias"))
    if out["head.decoder.bias"] is None:
        raise KeyError("cls.predictions.bias")
    return out


def from_llama(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Llama's (or Qwen3's) names to ours: q/k/v and gate/up fused back into one matrix each."""
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
        if q + "self_attn.q_norm.weight" in state:  # Qwen3
            out[p + "attn.q_norm.weight"] = state[q + "self_attn.q_norm.weight"]
            out[p + "attn.k_norm.weight"] = state[q + "self_attn.k_norm.weight"]
        out[p + "mlp.gate_up_proj.weight"] = torch.cat([state[q + f"mlp.{n}.weight"] for n in ("gate_proj", "up_proj")])
        out[p + "mlp.down_proj.weight"] = state[q + "mlp.down_proj.weight"]
    return out


def load_transformers_dir(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a local transformers directory of a Llama- or Qwen3-architecture (causal) or BERT-architecture
    (masked LM) model, in trainlab's names."""
    from safetensors.torch import load_file

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise TrainlabError(f"init_from '{path}': config.json is not readable JSON") from None
    if config.get("model_type") not in ("llama", "qwen3", "bert"):
        raise TrainlabError(f"init_from '{path}': model_type {config.get('model_type')!r} is not supported "
                            f"(Llama- and Qwen3-architecture causal LMs and BERT-architecture masked LMs are)")
    if config.get("model_type") == "bert" and config.get("position_embedding_type", "absolute") != "absolute":
        raise TrainlabError(f"init_from '{path}': position_embedding_type {config['position_embedding_type']!r} has "
                            f"no trainlab equivalent (absolute positions do)")
    if config.get("use_sliding_window"):
        raise TrainlabError(f"init_from '{path}': sliding-window attention has no trainlab equivalent")
    if config.get("num_key_value_heads", config.get("num_attention_heads")) != config.get("num_attention_heads"):
        raise TrainlabError(f"init_from '{path}': grouped-query attention (num_key_value_heads < "
                            f"num_attention_heads) has no trainlab equivalent yet")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TrainlabError(f"init_from '{path}' holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    convert = from_bert if config["model_type"] == "bert" else from_llama
    try:
        return convert(state, int(config["num_hidden_layers"]))
    except KeyError as err:
        raise TrainlabError(f"init_from '{path}': weight {err} is missing") from None
