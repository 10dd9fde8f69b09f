"""Weights and config.json in transformers' formats, both ways.

A causal GPT is a Llama (Qwen3 when it has `qk_norm`: Llama with RMSNorm on each head's queries and keys
before the rotary embedding); a BertMLM is a BertForMaskedLM. Our fused matrices (q/k/v, gate/up) are
split one-to-one on the way out and concatenated on the way in; every other tensor is renamed through
one name map per architecture, used in both directions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from trainlab.config import ModelConfig
from trainlab.errors import TrainlabError
from trainlab.models.bert import TYPE_VOCAB


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Llama / Qwen3 (causal LM)

LLAMA_BLOCK = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
               "attn.o_proj.weight": "self_attn.o_proj.weight", "mlp.down_proj.weight": "mlp.down_proj.weight"}
QWEN3_BLOCK = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
LLAMA_FUSED = {"attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
               "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")}


def llama_names(n_layer: int, qk_norm: bool, tied: bool) -> dict[str, str]:
    """Our names -> Llama's (Qwen3's with qk_norm) for every one-to-one tensor."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not tied:
        names["lm_head.weight"] = "lm_head.weight"
    block = {**LLAMA_BLOCK, **(QWEN3_BLOCK if qk_norm else {})}
    for i in range(n_layer):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in block.items()})
    return names


def llama_config(cfg: ModelConfig, eos_id: Optional[int] = None) -> dict:
    """Llama's config.json, or Qwen3's for a model with qk_norm."""
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
    out = {theirs: weights[ours] for ours, theirs in llama_names(cfg.n_layer, cfg.qk_norm, cfg.tie_embeddings).items()}
    for i in range(cfg.n_layer):
        for ours, parts in LLAMA_FUSED.items():
            for theirs, w in zip(parts, weights[f"blocks.{i}.{ours}"].chunk(len(parts))):
                out[f"model.layers.{i}.{theirs}"] = w
    return _float32(out)


def from_llama(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Llama's (or Qwen3's) names to ours: q/k/v and gate/up fused back into one matrix each."""
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in state
    names = llama_names(n_layer, qk_norm, tied="lm_head.weight" not in state)
    out = {ours: state[theirs] for ours, theirs in names.items()}
    for i in range(n_layer):
        for ours, parts in LLAMA_FUSED.items():
            out[f"blocks.{i}.{ours}"] = torch.cat([state[f"model.layers.{i}.{theirs}"] for theirs in parts])
    return out


def write_llama_files(tmp: Path, cfg: ModelConfig, tokenizer, tok: Path, chat_template: Optional[str] = None,
                      stop_strings: Optional[list[str]] = None) -> None:
    """config.json, generation_config.json and the tokenizer beside a Llama (Qwen3) model.safetensors; with a
    chat template (an SFT run), `apply_chat_template` renders its prompts and generation stops at its end marker."""
    (tmp / "config.json").write_text(json.dumps(llama_config(cfg, tokenizer.eos_id), indent=1))
    generation: dict = {"eos_token_id": tokenizer.eos_id}
    if stop_strings:  # an answer ends at the end marker: `generate(..., tokenizer=tok)` stops there
        generation["stop_strings"] = stop_strings
    (tmp / "generation_config.json").write_text(json.dumps(generation))
    if tokenizer.kind == "bpe":  # a tokenizers JSON: transformers' fast tokenizer reads it as is
        shutil.copy(tok, tmp / "tokenizer.json")
        config: dict = {"tokenizer_class": "PreTrainedTokenizerFast"}
        if chat_template is not None:
            config["chat_template"] = chat_template
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    else:  # char and byte vocabularies: the same ids as a tokenizers JSON, and trainlab's own file beside it
        (tmp / "tokenizer.json").write_text(tokenizer.to_hf_json(), encoding="utf-8")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "model_max_length": cfg.seq_len}
        if chat_template is not None:
            config["chat_template"] = chat_template
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        shutil.copy(tok, tmp / "trainlab_tokenizer.json")


# ---------------------------------------------------------------------------------------------
# BERT (masked LM)

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


def bert_config(cfg: ModelConfig) -> dict:
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "intermediate_size": cfg.ffn_hidden or 4 * cfg.d_model, "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "max_position_embeddings": cfg.seq_len, "type_vocab_size": TYPE_VOCAB, "layer_norm_eps": cfg.norm_eps,
            "initializer_range": cfg.init_std, "position_embedding_type": "absolute", "pad_token_id": None,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32"}


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
    return _float32(out)


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


def write_bert_files(tmp: Path, cfg: ModelConfig, tokenizer, tok: Path, mask_token: str, mask_id: int) -> None:
    """config.json, and a tokenizer that knows [MASK]: a BPE tokenizer.json gets it as a special token
    with the id the model gives it (one past the tokenizer's vocabulary, unless it had its own)."""
    (tmp / "config.json").write_text(json.dumps(bert_config(cfg), indent=1))
    if tokenizer.kind != "bpe":  # char and byte vocabularies are trainlab's own: kept beside the weights
        shutil.copy(tok, tmp / "trainlab_tokenizer.json")
        return
    from tokenizers import AddedToken, Tokenizer

    hf = Tokenizer.from_str(tok.read_text(encoding="utf-8"))
    # lstrip: "to [MASK]" reads as "to" + [MASK], the space going with the masked word as in training
    hf.add_special_tokens([AddedToken(mask_token, special=True, lstrip=True)])
    if hf.token_to_id(mask_token) != mask_id:
        raise TrainlabError(f"the exported tokenizer would give {mask_token} the id {hf.token_to_id(mask_token)}, "
                            f"not the model's {mask_id}")
    hf.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "mask_token": mask_token, "model_max_length": cfg.seq_len}))


# ---------------------------------------------------------------------------------------------
# Reading a directory


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        raise TrainlabError(f"init_from '{path}': config.json is not readable JSON") from None
    kind = config.get("model_type")
    if kind not in ("llama", "qwen3", "bert"):
        raise TrainlabError(f"init_from '{path}': model_type {kind!r} is not supported "
                            f"(Llama- and Qwen3-architecture causal LMs and BERT-architecture masked LMs are)")
    if kind == "bert" and config.get("position_embedding_type", "absolute") != "absolute":
        raise TrainlabError(f"init_from '{path}': position_embedding_type {config['position_embedding_type']!r} has "
                            f"no trainlab equivalent (absolute positions do)")
    if config.get("use_sliding_window"):
        raise TrainlabError(f"init_from '{path}': sliding-window attention has no trainlab equivalent")
    if config.get("num_key_value_heads", config.get("num_attention_heads")) != config.get("num_attention_heads"):
        raise TrainlabError(f"init_from '{path}': grouped-query attention (num_key_value_heads < "
                            f"num_attention_heads) has no trainlab equivalent yet")
    return config


def load_transformers_dir(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a local transformers directory of a Llama- or Qwen3-architecture (causal) or BERT-architecture
    (masked LM) model, in trainlab's names."""
    from safetensors.torch import load_file

    path = Path(path)
    config = _read_config(path)
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
