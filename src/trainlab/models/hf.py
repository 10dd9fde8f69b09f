"""Weights and config.json in transformers' formats, both ways.

A causal GPT is a Llama (Qwen3 when it has `qk_norm`: Llama with RMSNorm on each head's queries and keys
before the rotary embedding), with `num_key_value_heads` its n_kv_head; a mixture of experts is a Mixtral,
a Qwen3-MoE (with `qk_norm`) or a Qwen2-MoE (with a shared expert), and a setting none of them computes
exits 2 naming it. A BertMLM is a BertForMaskedLM. Our fused matrices (q/k/v, gate/up) are split
one-to-one on the way out and concatenated on the way in, experts split into one tensor each (stacked back
on the way in); every other tensor is renamed through one name map per architecture, used in both
directions.
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
# Llama / Qwen3 and their mixtures of experts, Mixtral / Qwen3-MoE / Qwen2-MoE (causal LM)

LLAMA_BLOCK = {"attn_norm.weight": "input_layernorm.weight", "mlp_norm.weight": "post_attention_layernorm.weight",
               "attn.o_proj.weight": "self_attn.o_proj.weight"}
DENSE_BLOCK = {"mlp.down_proj.weight": "mlp.down_proj.weight"}
QWEN3_BLOCK = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
CAUSAL = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "mixtral": "MixtralForCausalLM",
          "qwen3_moe": "Qwen3MoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
"""model_type -> the transformers class a causal GPT exports as (and init_from reads)."""
MOE = ("mixtral", "qwen3_moe", "qwen2_moe")
EXPERT = {"mixtral": ("w1", "w3", "w2")}
"""Each expert's gate, up and down projections as checkpoints name them (Qwen's: gate_proj, up_proj, down_proj)."""


def causal_type(cfg: ModelConfig) -> str:
    """The model_type a causal GPT exports as: llama, qwen3 (qk_norm); a mixture of experts as mixtral,
    qwen3_moe (qk_norm) or qwen2_moe (a shared expert). TrainlabError (exit 2), naming the setting, for a
    model no transformers class computes."""
    if cfg.output_bias:
        raise TrainlabError("this run has model.output_bias=true; a Llama checkpoint has no output bias")
    m = cfg.moe
    if not m.experts:
        return "qwen3" if cfg.qk_norm else "llama"
    if m.shared_expert:
        if cfg.qk_norm:
            raise TrainlabError("this run is a mixture of experts with a shared expert and model.qk_norm=true: "
                                "Qwen2-MoE, the transformers class with a shared expert, has no qk_norm, so it cannot "
                                "be exported in hf format")
        return "qwen2_moe"
    if cfg.qk_norm:
        return "qwen3_moe"
    if not m.norm_topk:
        raise TrainlabError("this run is a mixture of experts with model.moe.norm_topk=false and no qk_norm: Mixtral "
                            "always renormalises the chosen experts' weights, so it cannot be exported in hf format")
    return "mixtral"


def llama_names(n_layer: int, qk_norm: bool, tied: bool, moe: bool = False) -> dict[str, str]:
    """Our names -> Llama's (Qwen3's with qk_norm) for every one-to-one tensor (a mixture of experts: all
    but its feed-forward layers')."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not tied:
        names["lm_head.weight"] = "lm_head.weight"
    block = {**LLAMA_BLOCK, **({} if moe else DENSE_BLOCK), **(QWEN3_BLOCK if qk_norm else {})}
    for i in range(n_layer):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in block.items()})
    return names


def llama_config(cfg: ModelConfig, eos_id: Optional[int] = None) -> dict:
    """config.json of the class `causal_type` picks. The load-balancing weight becomes router_aux_loss_coef
    divided by top_k: transformers' term counts each token's top_k assignments (top_k when balanced), ours
    their shares (1 when balanced)."""
    kind, m = causal_type(cfg), cfg.moe
    hidden = m.expert_hidden or cfg.ffn_hidden_size
    out = {"architectures": [CAUSAL[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.d_model, "intermediate_size": hidden if kind == "mixtral" else cfg.ffn_hidden_size,
           "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
           "head_dim": cfg.head_dim, "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps,
           "rope_theta": cfg.rope_theta, "hidden_act": "silu", "attention_dropout": 0.0,
           "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": "float32", "bos_token_id": None,
           "eos_token_id": eos_id, "initializer_range": cfg.init_std}
    if kind in ("llama", "qwen3", "qwen3_moe"):
        out.update(attention_bias=False, **({"mlp_bias": False} if kind == "llama" else {}))
    if kind in ("qwen3", "qwen3_moe", "qwen2_moe"):
        out.update(use_sliding_window=False, sliding_window=None)
    if kind not in MOE:
        return out
    out.update(num_experts_per_tok=m.top_k, router_aux_loss_coef=m.aux_loss_weight / m.top_k,
               output_router_logits=False)
    if kind == "mixtral":  # top-k weights always renormalised (causal_type checked norm_topk)
        return {**out, "num_local_experts": m.experts, "sliding_window": None, "router_jitter_noise": 0.0}
    out.update(num_experts=m.experts, moe_intermediate_size=hidden, norm_topk_prob=m.norm_topk, decoder_sparse_step=1,
               mlp_only_layers=[])
    if kind == "qwen2_moe":
        out.update(shared_expert_intermediate_size=hidden, qkv_bias=False)
    return out


def to_llama(weights: dict[str, torch.Tensor], cfg: ModelConfig,
             fused_experts: bool = False) -> dict[str, torch.Tensor]:
    """Our names to those of the class `causal_type` picks: the fused q/k/v split into q (n_head heads), k and
    v (n_kv_head heads each), gate/up into two. Experts are written one tensor per expert and projection, as
    checkpoints store them and every transformers version reads them; with `fused_experts`, as transformers 5
    holds them in memory (`mlp.experts.gate_up_proj`, (experts, 2 x hidden, d_model), and
    `mlp.experts.down_proj`: our own layout), the names its `load_state_dict` takes."""
    kind = causal_type(cfg)
    moe = kind in MOE
    names = llama_names(cfg.n_layer, cfg.qk_norm, cfg.tie_embeddings, moe)
    out = {theirs: weights[ours] for ours, theirs in names.items()}
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out.update(zip([theirs + n for n in QKV], weights[ours + "attn.qkv_proj.weight"].split([q, kv, kv])))
        if moe:
            out.update(_experts_out(weights, ours + "mlp.", theirs, kind, fused_experts))
        else:
            out.update(zip([theirs + n for n in GATE_UP], weights[ours + "mlp.gate_up_proj.weight"].chunk(2)))
    return _float32(out)


def _experts_out(weights: dict[str, torch.Tensor], ours: str, layer: str, kind: str, fused: bool) -> dict:
    """One mixture-of-experts layer: ours under `ours` (blocks.i.mlp.), theirs under `layer` (model.layers.i.).
    A shared expert without a gate gets a zero one, sigmoid(0) = 1/2, and its output projection doubled."""
    mlp = layer + ("block_sparse_moe." if kind == "mixtral" and not fused else "mlp.")
    gate_up, down = weights[ours + "gate_up_weight"], weights[ours + "down_weight"]
    out = {mlp + "gate.weight": weights[ours + "router.weight"]}
    if fused:
        out.update({mlp + "experts.gate_up_proj": gate_up, mlp + "experts.down_proj": down})
    else:
        g, u, d = EXPERT.get(kind, ("gate_proj", "up_proj", "down_proj"))
        for e in range(gate_up.shape[0]):
            out[f"{mlp}experts.{e}.{g}.weight"], out[f"{mlp}experts.{e}.{u}.weight"] = gate_up[e].chunk(2)
            out[f"{mlp}experts.{e}.{d}.weight"] = down[e]
    if kind == "qwen2_moe":
        shared_down, gate = weights[ours + "shared.down_proj.weight"], weights.get(ours + "shared_gate.weight")
        if gate is None:
            shared_down, gate = 2 * shared_down, shared_down.new_zeros(1, shared_down.shape[0])
        out.update(zip([mlp + "shared_expert." + n for n in ("gate_proj.weight", "up_proj.weight")],
                       weights[ours + "shared.gate_up_proj.weight"].chunk(2)))
        out.update({mlp + "shared_expert.down_proj.weight": shared_down, mlp + "shared_expert_gate.weight": gate})
    return out


def from_llama(state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Names of any class in CAUSAL to ours: q/k/v and gate/up fused back, experts (one tensor each, or as
    transformers 5 holds them) stacked. A Qwen2-MoE whose shared-expert gates are all zero reads as a shared
    expert without a gate (model.moe.shared_gate=false), its output projection halved back."""
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in state
    moe = [_experts_in(state, f"model.layers.{i}.") for i in range(n_layer)]
    names = llama_names(n_layer, qk_norm, tied="lm_head.weight" not in state, moe=moe[0] is not None)
    out = {ours: state[theirs] for ours, theirs in names.items()}
    for i in range(n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        out[ours + "attn.qkv_proj.weight"] = torch.cat([state[theirs + n] for n in QKV])
        if moe[i] is None:
            out[ours + "mlp.gate_up_proj.weight"] = torch.cat([state[theirs + n] for n in GATE_UP])
        else:
            out.update({ours + "mlp." + k: v for k, v in moe[i].items()})
    gates = [k for k in out if k.endswith(".mlp.shared_gate.weight")]
    if gates and not any(out[k].any() for k in gates):
        for k in gates:
            del out[k]
            down = k.replace("shared_gate.weight", "shared.down_proj.weight")
            out[down] = 0.5 * out[down]
    return out


def _experts_in(state: dict[str, torch.Tensor], layer: str) -> Optional[dict[str, torch.Tensor]]:
    """One layer's mixture of experts in our names under blocks.i.mlp. (None: a dense layer)."""
    mlp = next((layer + s for s in ("block_sparse_moe.", "mlp.") if layer + s + "gate.weight" in state), None)
    if mlp is None:
        return None
    out = {"router.weight": state[mlp + "gate.weight"]}
    if mlp + "experts.gate_up_proj" in state:
        out.update(gate_up_weight=state[mlp + "experts.gate_up_proj"], down_weight=state[mlp + "experts.down_proj"])
    else:
        g, u, d = EXPERT["mixtral"] if f"{mlp}experts.0.w1.weight" in state else ("gate_proj", "up_proj", "down_proj")
        experts = range(out["router.weight"].shape[0])
        out["gate_up_weight"] = torch.stack([torch.cat([state[f"{mlp}experts.{e}.{g}.weight"],
                                                        state[f"{mlp}experts.{e}.{u}.weight"]]) for e in experts])
        out["down_weight"] = torch.stack([state[f"{mlp}experts.{e}.{d}.weight"] for e in experts])
    if mlp + "shared_expert.gate_proj.weight" in state:
        shared = mlp + "shared_expert."
        out["shared.gate_up_proj.weight"] = torch.cat([state[shared + n] for n in ("gate_proj.weight",
                                                                                  "up_proj.weight")])
        out["shared.down_proj.weight"] = state[shared + "down_proj.weight"]
        out["shared_gate.weight"] = state[mlp + "shared_expert_gate.weight"]
    return out


def write_llama_files(tmp: Path, cfg: ModelConfig, tokenizer, tok: Path, chat_template: Optional[str] = None,
                      stop_strings: Optional[list[str]] = None) -> None:
    """config.json, generation_config.json and the tokenizer beside a model.safetensors of the class `causal_type`
    picks (Llama, Qwen3, Mixtral, Qwen3-MoE, Qwen2-MoE); with a chat template (an SFT run), `apply_chat_template`
    renders its prompts and generation stops at its end marker."""
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
    if kind not in (*CAUSAL, "bert"):
        raise TrainlabError(f"init_from '{path}': model_type {kind!r} is not supported (causal LMs of the Llama, "
                            f"Qwen3, Mixtral, Qwen3-MoE and Qwen2-MoE architectures and BERT-architecture masked LMs "
                            f"are)")
    if kind == "bert" and config.get("position_embedding_type", "absolute") != "absolute":
        raise TrainlabError(f"init_from '{path}': position_embedding_type {config['position_embedding_type']!r} has "
                            f"no trainlab equivalent (absolute positions do)")
    if config.get("use_sliding_window") or (kind == "mixtral" and config.get("sliding_window") is not None):
        raise TrainlabError(f"init_from '{path}': sliding-window attention has no trainlab equivalent")
    if kind in CAUSAL and config.get("hidden_act", "silu") != "silu":
        raise TrainlabError(f"init_from '{path}': hidden_act {config['hidden_act']!r} has no trainlab equivalent "
                            f"(SwiGLU's silu does)")
    heads = config.get("num_attention_heads")
    kv = config.get("num_key_value_heads") or heads
    if heads and kv and heads % kv:
        raise TrainlabError(f"init_from '{path}': num_key_value_heads ({kv}) does not divide num_attention_heads "
                            f"({heads})")
    sparse_step, dense_layers = config.get("decoder_sparse_step", 1), config.get("mlp_only_layers")
    if kind in ("qwen2_moe", "qwen3_moe") and (sparse_step != 1 or dense_layers):
        raise TrainlabError(f"init_from '{path}': dense feed-forward layers among the expert layers "
                            f"(decoder_sparse_step {sparse_step}, mlp_only_layers {dense_layers}) have no trainlab "
                            f"equivalent")
    return config


def load_transformers_dir(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a local transformers directory, in trainlab's names: a causal LM of a class in CAUSAL (Llama,
    Qwen3, Mixtral, Qwen3-MoE, Qwen2-MoE; grouped-query attention included) or a BERT-architecture masked LM.
    The model config is the run's own: weights of another shape (n_kv_head, experts, widths) do not load."""
    from safetensors.torch import load_file

    path = Path(path)
    config = _read_config(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TrainlabError(f"init_from '{path}' holds no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if config["model_type"] == "bert":
        convert = from_bert
    else:
        convert = from_llama
        bias = next((k for k in sorted(state) if k.endswith(".bias")), None)
        if bias is not None:
            raise TrainlabError(f"init_from '{path}': weight {bias} is a bias, which trainlab's causal LMs do not have "
                                f"(attention_bias, qkv_bias or mlp_bias set)")
    try:
        return convert(state, int(config["num_hidden_layers"]))
    except KeyError as err:
        raise TrainlabError(f"init_from '{path}': weight {err} is missing") from None
