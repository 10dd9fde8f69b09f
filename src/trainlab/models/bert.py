"""Bidirectional encoder for masked language modelling, laid out as transformers' `BertForMaskedLM`.

Learned absolute positions and a two-entry token-type table, post-LayerNorm blocks (LayerNorm after
each residual add), exact (erf) GELU feed-forward, non-causal attention through SDPA, and BERT's MLM
head: dense, GELU, LayerNorm, then the decoder onto the vocabulary with an output bias. Every weight
maps one to one onto a `BertForMaskedLM` (q/k/v are fused here and split on export).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import ModelConfig
from trainlab.models.base import ModelBase

TYPE_VOCAB = 2  # BERT's sentence A / sentence B segments; trainlab feeds segment 0 only


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k and v in one matmul
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # every position sees every other; `mask` (B, 1, 1, T) hides padding keys where there is any
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden or 4 * cfg.d_model
        self.up_proj = nn.Linear(cfg.d_model, hidden)
        self.down_proj = nn.Linear(hidden, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))  # exact GELU, BERT's hidden_act "gelu"


class EncoderBlock(nn.Module):
    """Post-norm: x = LN(x + attn(x)); x = LN(x + ffn(x)), as the original Transformer and BERT."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, mask)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


class MLMHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(h))))


class BertMLM(ModelBase):
    """`predicted_fraction`: the share of positions the head runs on in training (the masked ones),
    for the FLOP count."""

    def __init__(self, cfg: ModelConfig, predicted_fraction: float = 1.0):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building the model")
        self.cfg, self.predicted_fraction = cfg, predicted_fraction
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.type_embed = nn.Embedding(TYPE_VOCAB, cfg.d_model)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.head = MLMHead(cfg)
        if cfg.tie_embeddings:
            self.head.decoder.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's init: normal(0, init_std) for matrices and tables, zero biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, idx: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hidden states (B, T, d_model); `padding` (B, T) is True at padding positions."""
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds model.seq_len={self.cfg.seq_len}")
        positions = torch.arange(T, device=idx.device)
        x = self.embed(idx) + self.type_embed.weight[0] + self.pos_embed(positions)
        x = self.drop(self.embed_norm(x))
        mask = None if padding is None else ~padding[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(self, idx: torch.Tensor, positions: Optional[torch.Tensor] = None,
                padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T); with `positions` (B, N), only at those positions
        (B, N, vocab), so training runs the head on the masked positions alone."""
        h = self.encode(idx, padding)
        if positions is not None:
            h = h.gather(1, positions[..., None].expand(-1, -1, h.shape[-1]))
        return self.head(h)

    def tied_keys(self) -> tuple[str, ...]:
        """State-dict entries that are the same tensor as another (left out of checkpoints)."""
        return ("head.decoder.weight",) if self.cfg.tie_embeddings else ()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's weights. A tied model's come without head.decoder.weight; an all-zero
        output bias (as a BERT directory always holds one) is dropped for a model without one."""
        weights = dict(weights)
        bias = weights.get("head.decoder.bias")
        if bias is not None and self.head.decoder.bias is None:
            if bool(bias.any()):
                raise ValueError("the weights hold an output bias; set model.output_bias=true")
            del weights["head.decoder.bias"]
        super().load_weights(weights)

    def embedding_params(self) -> int:
        """Token, position and segment tables, an untied decoder and the output bias."""
        n = sum(t.weight.numel() for t in (self.embed, self.pos_embed, self.type_embed))
        if not self.cfg.tie_embeddings:
            n += self.head.decoder.weight.numel()
        if self.head.decoder.bias is not None:
            n += self.head.decoder.bias.numel()
        return n

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embedding_params() if exclude_embedding else n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per weight a token passes through (forward + backward), the head
        only at the predicted share of positions, plus attention scores."""
        d, V = self.cfg.d_model, self.cfg.vocab_size
        head = d * d + d * V  # dense and decoder
        encoder = sum(p.numel() for p in self.blocks.parameters())
        # QK^T and AV over the full (bidirectional) square: 2 * 2 * seq_len * d_model per layer, x3 with backward
        attention = 12 * self.cfg.n_layer * self.cfg.seq_len * d
        return int(6 * encoder + 6 * head * self.predicted_fraction + attention)
