"""Decoder-only transformer: RMSNorm, rotary positions, SwiGLU, attention through SDPA.

The layout follows Llama's (pre-norm, rotate-half RoPE, gate/up/down feed-forward, grouped-query
attention with `n_kv_head`), so weights map one to one onto a transformers `LlamaForCausalLM`, or with
`qk_norm` onto a `Qwen3ForCausalLM`; a mixture of experts onto Mixtral, Qwen3-MoE or Qwen2-MoE (models/hf.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import ModelConfig
from trainlab.models.base import ModelBase


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under autocast q and k arrive in bf16 while the weight stays fp32; a weight of the input's dtype
        # keeps torch on its fused kernel (a mismatch falls back with a "Mismatch dtype" warning every run)
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # rotate-half layout, as in Llama
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, D); cos/sin: (T, D)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding, n_kv_head heads each (grouped-query
    attention repeats them per group after reading); `length` tokens are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> "KVCache":
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)])

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, n_kv_head, T, D) keys or values as (B, n_kv_head * groups, T, D): key/value head j serves query
    heads j * groups .. (j + 1) * groups - 1, as transformers' `repeat_kv` (repeat_interleave on the heads)."""
    if groups == 1:
        return x
    B, K, T, D = x.shape
    return x[:, :, None].expand(B, K, groups, T, D).reshape(B, K * groups, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # q, k and v in one matmul: fewer, larger matmuls run faster on small shapes. Rows: n_head query
        # heads, then n_kv_head key heads, then n_kv_head value heads, head_dim rows each
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.kernel = "sdpa"  # or "math"; chosen for the device and precision by `GPT.use_attention`
        self.causal = True  # an encoder (the series tokenizer's) attends both ways
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x, cos, sin, cache: Optional[KVCache] = None, layer: int = 0):
        B, T, C = x.shape
        H, K = self.n_head, self.n_kv_head
        # (B, H + 2K, T, D) split into views: with K == H the same strides as a (3, B, H, T, D) permute
        q, k, v = self.qkv_proj(x).view(B, T, H + 2 * K, self.head_dim).transpose(1, 2).split([H, K, K], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if cache is not None:
            start = cache.length
            cache.keys[layer][:, :, start:start + T] = k
            cache.values[layer][:, :, start:start + T] = v
            k = cache.keys[layer][:, :, :start + T]
            v = cache.values[layer][:, :, :start + T]
            if start > 0:
                # query i sits at position start+i and sees keys 0..start+i
                causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        # the cache holds K heads; both kernels see every query head's keys and values
        k, v = repeat_kv(k, H // K), repeat_kv(v, H // K)
        drop = self.dropout if self.training else 0.0
        causal = causal and self.causal
        if self.kernel == "math" and cache is None:
            y = math_attention(q, k, v, drop, causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                               dropout_p=drop)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0,
                   causal: bool = True) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V written out (causal unless told), as a few large batched matmuls around a
    softmax. Without dropout it is `trainlab::blocked_attention`, an operator torch.compile leaves whole (its
    backward too), in which causal attention runs in blocks of queries that skip the keys they cannot see: on
    a CPU under bf16 the compiled form of these lines spends about 3x as long in its softmax kernels as torch's
    own softmax, and scaled_dot_product_attention's flash kernel is slower still at the short sequences small
    models use (bench/throughput.py --attention)."""
    if not dropout:
        # contiguous (B, H, T, D) inputs: under torch.compile the rotary kernel writes q and k in this layout
        # at no extra cost, where the operator would otherwise copy them (and again in backward)
        return torch.ops.trainlab.blocked_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal)[0]
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores + _causal_mask(q.shape[-2], torch.float32, q.device)
    return F.dropout(scores.softmax(-1).to(v.dtype), dropout) @ v


_MASKS: dict = {}


def _causal_mask(T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (T, dtype, device)
    if key not in _MASKS:
        _MASKS[key] = torch.zeros(T, T, dtype=dtype, device=device).masked_fill(
            torch.ones(T, T, dtype=torch.bool, device=device).triu(1), float("-inf"))
    return _MASKS[key]


ATTENTION_BLOCK = 64  # causal attention runs in blocks of this many queries, each against the keys it sees


def _query_blocks(T: int, causal: bool) -> list[tuple[int, int, int]]:
    """(first query, end of queries, keys seen) per block. Causal: blocks of ATTENTION_BLOCK queries, block
    i seeing keys [0, its end), which skips most of the masked upper triangle (62.5% of the work at
    T=256); otherwise one block seeing every key."""
    if not causal:
        return [(0, T, T)]
    return [(r0, min(T, r0 + ATTENTION_BLOCK), min(T, r0 + ATTENTION_BLOCK)) for r0 in range(0, T, ATTENTION_BLOCK)]


def _probs_size(BH: int, T: int, causal: bool) -> int:
    return BH * sum((r1 - r0) * n for r0, r1, n in _query_blocks(T, causal))


def _probs_blocks(probs: torch.Tensor, BH: int, T: int, causal: bool) -> list[tuple[int, int, int, torch.Tensor]]:
    """(first query, end of queries, keys seen, its (BH, queries, keys) view of the packed probabilities)."""
    out, offset = [], 0
    for r0, r1, n in _query_blocks(T, causal):
        size = BH * (r1 - r0) * n
        out.append((r0, r1, n, probs[offset:offset + size].view(BH, r1 - r0, n)))
        offset += size
    return out


# Rename the operators when their outputs or the backward change: torch.compile's caches key on the forward
# graph, not on a fake implementation or a registered backward, so a graph compiled for the old ones would be
# replayed from the cache against the new ones.
@torch.library.custom_op("trainlab::blocked_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, attention probabilities) for (B, H, T, D) inputs. The probabilities, kept for backward, are
    packed one query block after another: block (r0, r1, n) is a contiguous (B*H, r1-r0, n) array.
    The softmax runs in the inputs' precision (torch's kernel accumulates in fp32)."""
    B, H, T, D = q.shape
    q3, k3, v3 = q.reshape(B * H, T, D), k.reshape(B * H, T, D), v.reshape(B * H, T, D)
    out = torch.empty_like(q3)
    probs = q.new_empty(_probs_size(B * H, T, causal))
    mask = _causal_mask(T, q.dtype, q.device) if causal else None
    for r0, r1, n, p in _probs_blocks(probs, B * H, T, causal):
        kt = k3[:, :n].transpose(1, 2)
        if causal:  # the mask is added inside the matmul
            scores = torch.baddbmm(mask[r0:r1, :n].expand(B * H, r1 - r0, n), q3[:, r0:r1], kt, alpha=D ** -0.5)
        else:
            scores = torch.bmm(q3[:, r0:r1], kt).mul_(D ** -0.5)
        torch.ops.aten._softmax.out(scores, -1, False, out=p)
        if r1 - r0 == T:
            torch.bmm(p, v3, out=out)
        else:
            out[:, r0:r1] = torch.bmm(p, v3[:, :n])
    return out.view(B, H, T, D), probs


@_attention.register_fake
def _(q, k, v, causal):
    B, H, T, D = q.shape
    return q.new_empty(B, H, T, D), q.new_empty(_probs_size(B * H, T, causal))


def _attention_setup(ctx, inputs, output):
    q, k, v, causal = inputs
    ctx.causal = causal
    ctx.save_for_backward(q, k, v, output[1])


@torch.library.custom_op("trainlab::blocked_attention_backward", mutates_args=())
def _attention_grads(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probs: torch.Tensor,
                     causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of q, k and v for blocked_attention. An operator of its own, so torch.compile calls it whole:
    traced into the backward graph, its writes into slices of dq, dk and dv became concatenations and copies in
    compiled kernels (with this and contiguous inputs, a training step at the demo's shape runs about 20% faster)."""
    B, H, T, D = q.shape
    q3, k3, v3 = q.reshape(B * H, T, D), k.reshape(B * H, T, D), v.reshape(B * H, T, D)
    g = grad_out.reshape(B * H, T, D)
    dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    # the last block sees every key: it writes dk and dv, the others add
    for r0, r1, n, p in reversed(_probs_blocks(probs, B * H, T, causal)):
        gi = g[:, r0:r1]
        dp = torch.bmm(gi, v3[:, :n].transpose(1, 2))
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype).mul_(D ** -0.5)
        dq[:, r0:r1] = torch.bmm(ds, k3[:, :n])
        if n == T:
            torch.bmm(ds.transpose(1, 2), q3[:, r0:r1], out=dk)
            torch.bmm(p.transpose(1, 2), gi, out=dv)
        else:  # keys and values sum their gradients over the query blocks that see them
            dk[:, :n].baddbmm_(ds.transpose(1, 2), q3[:, r0:r1])
            dv[:, :n].baddbmm_(p.transpose(1, 2), gi)
    return dq.view(B, H, T, D), dk.view(B, H, T, D), dv.view(B, H, T, D)


@_attention_grads.register_fake
def _(grad_out, q, k, v, probs, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_backward(ctx, grad_out, grad_probs):
    # the probabilities are an output for backward's sake only; their gradient is not followed
    q, k, v, probs = ctx.saved_tensors
    return (*torch.ops.trainlab.blocked_attention_backward(grad_out, q, k, v, probs, ctx.causal), None)


_attention.register_autograd(_attention_backward, setup_context=_attention_setup)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig, hidden: Optional[int] = None):
        super().__init__()
        hidden = hidden or cfg.ffn_hidden_size
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * hidden, bias=False)  # gate and up in one matmul
        self.down_proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts, optionally with a shared expert every token passes through (with
    `shared_gate`, scaled per token by sigmoid(x . w), as Qwen2-MoE's).

    Dispatch has fixed shapes, so torch.compile builds one graph: each expert takes at most
    `capacity` tokens per batch (capacity_factor x its fair share while training; every token in
    evaluation), gathered into an (experts, capacity, d_model) buffer and run as two batched matmuls.
    First choices fill the buffers before second choices; an assignment past an expert's capacity is
    dropped (the token keeps its residual path and shared expert). `balance` is Switch Transformer's
    load-balancing term, experts x sum_e (share of assignments to e) x (mean router probability of e):
    1 when balanced.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.n_experts, self.top_k, self.norm_topk, self.capacity_factor = m.experts, m.top_k, m.norm_topk, m.capacity_factor
        hidden = m.expert_hidden or cfg.ffn_hidden_size
        self.router = nn.Linear(cfg.d_model, m.experts, bias=False)
        self.gate_up_weight = nn.Parameter(torch.empty(m.experts, 2 * hidden, cfg.d_model))
        self.down_weight = nn.Parameter(torch.empty(m.experts, cfg.d_model, hidden))
        for w in (self.gate_up_weight, self.down_weight):  # the GPT around it re-initialises with depth scaling
            nn.init.normal_(w, std=cfg.init_std)
        self.shared = SwiGLU(cfg, m.expert_hidden) if m.shared_expert else None
        self.shared_gate = nn.Linear(cfg.d_model, 1, bias=False) if m.shared_gate else None

    def capacity(self, n_tokens: int) -> int:
        if not self.training:
            return n_tokens
        return min(n_tokens, math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts))

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e alone on tokens x (for tests and reading)."""
        gate, up = F.linear(x, self.gate_up_weight[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_weight[e])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Output, balance term, each expert's share of the assignments, share of assignments dropped."""
        shape, E, k = x.shape, self.n_experts, self.top_k
        x = x.reshape(-1, shape[-1])
        N, C = x.shape[0], self.capacity(x.shape[0])
        probs = self.router(x).float().softmax(-1)
        weight, chosen = probs.topk(k, dim=-1)
        if self.norm_topk:
            weight = weight / weight.sum(-1, keepdim=True)
        # assignments in priority order: every token's first choice, then every second choice, ...
        expert = chosen.t().reshape(-1)  # (k N,)
        token = torch.arange(N, device=x.device).repeat(k)
        onehot = F.one_hot(expert, E)
        position = ((onehot.cumsum(0) - 1) * onehot).sum(-1)  # place in its expert's buffer
        kept = position < C
        slot = torch.where(kept, expert * C + position, E * C)  # E * C: a spare row for the dropped
        # which token fills each buffer slot (N: an all-zero row for slots left empty)
        filler = torch.full((E * C + 1,), N, dtype=torch.long, device=x.device).scatter(0, slot, token)
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])])
        h = padded[filler[:-1]].view(E, C, -1)
        gate, up = torch.bmm(h, self.gate_up_weight.transpose(1, 2).to(h.dtype)).chunk(2, dim=-1)
        y = torch.bmm(F.silu(gate) * up, self.down_weight.transpose(1, 2).to(h.dtype)).reshape(E * C, -1)
        y = torch.cat([y, y.new_zeros(1, y.shape[1])])[slot]
        scale = (weight.t().reshape(-1) * kept).to(y.dtype)
        out = torch.zeros_like(x, dtype=torch.float32).index_add_(0, token, (y * scale[:, None]).float()).to(x.dtype)
        if self.shared is not None:
            shared = self.shared(x)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(x)) * shared
            out = out + shared
        load = onehot.sum(0).float() / expert.numel()
        balance = E * (load * probs.mean(0)).sum()
        return out.reshape(shape), balance, load, 1.0 - kept.float().mean()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.moe.experts else SwiGLU(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, stats: Optional[list] = None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer))
        if isinstance(self.mlp, MoE):
            y, balance, load, dropped = self.mlp(self.mlp_norm(x))
            if stats is not None:
                stats.append((balance, load, dropped))
            return x + self.drop(y)
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class GPT(ModelBase):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building the model")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.output_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        # GPT-2's scaled init: outputs that add into the residual stream shrink with depth.
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or p.ndim < 2:
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "down_weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)
        if self.rope_cos.device.type != "meta":  # a meta model (for estimates) has no values
            cos, sin = rope_tables(self.cfg.head_dim, self.cfg.seq_len, self.cfg.rope_theta)
            self.rope_cos.copy_(cos.to(self.rope_cos.device))
            self.rope_sin.copy_(sin.to(self.rope_sin.device))

    def forward(self, idx: torch.Tensor, cache: Optional[KVCache] = None, with_aux: bool = False):
        """Logits (B, T, vocab) for token ids (B, T). With a cache, positions continue after it.

        with_aux (mixture of experts): (logits, weighted load-balancing loss, expert load (layers, experts),
        share of assignments dropped at capacity (layers,))."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.seq_len={self.cfg.seq_len}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.drop(self.embed(idx))
        stats: list = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, stats)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.norm(x))
        if not with_aux:
            return logits
        if not stats:
            zero = logits.new_zeros((), dtype=torch.float32)
            return logits, zero, logits.new_zeros((0, 0), dtype=torch.float32), zero
        aux = self.cfg.moe.aux_loss_weight * torch.stack([s[0] for s in stats]).mean()
        return (logits, aux, torch.stack([s[1] for s in stats]).detach(),
                torch.stack([s[2] for s in stats]).detach())

    def use_attention(self, kernel: str) -> None:
        for block in self.blocks:
            block.attn.kernel = kernel

    def tied_keys(self) -> tuple[str, ...]:
        """State-dict entries that are the same tensor as another (left out of checkpoints)."""
        return ("lm_head.weight",) if self.cfg.tie_embeddings else ()

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
            if self.lm_head.bias is not None:
                n -= self.lm_head.bias.numel()
        return n

    def active_params(self) -> int:
        """Parameters a token passes through: the routed experts count top_k times, not experts times."""
        n = self.num_params()
        m = self.cfg.moe
        if m.experts:
            per_expert = 3 * self.cfg.d_model * (m.expert_hidden or self.cfg.ffn_hidden_size)
            n -= self.cfg.n_layer * (m.experts - m.top_k) * per_expert
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per active weight (forward + backward) plus attention scores."""
        non_embedding = self.active_params() - self.embed.weight.numel() + self.lm_head.weight.numel()
        if not self.cfg.tie_embeddings:
            non_embedding -= self.lm_head.weight.numel()
        if self.lm_head.bias is not None:
            non_embedding -= self.lm_head.bias.numel()
        # QK^T and AV: 2 * 2 * seq_len * d_model per layer forward, x3 with backward (PaLM's convention,
        # counting the full square rather than the causal half). Grouped-query attention leaves it as is:
        # every query head still scores seq_len keys (shared keys and values shrink only the projections).
        attention = 12 * self.cfg.n_layer * self.cfg.seq_len * self.cfg.d_model
        return 6 * non_embedding + attention


def init_hint(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> str:
    """A hint ("; set model.KEY=VALUE as its source has", or "") when another model's weights do not fit a GPT
    of this config for a reason the weights show: their key/value heads (read from the fused q/k/v rows at
    this config's n_head and head_dim), or a shared expert's gate."""
    qkv = weights.get("blocks.0.attn.qkv_proj.weight")
    if qkv is not None and qkv.ndim == 2 and qkv.shape[0] % cfg.head_dim == 0:
        twice = qkv.shape[0] // cfg.head_dim - cfg.n_head
        kv = twice // 2
        if twice > 0 and twice % 2 == 0 and cfg.n_head % kv == 0 and kv != cfg.kv_heads:
            return f"; set model.n_kv_head={kv} as its source has"
    gated = any(k.endswith(".mlp.shared_gate.weight") for k in weights)
    shared = any(".mlp.shared." in k for k in weights)
    if shared and cfg.moe.shared_expert and gated != cfg.moe.shared_gate:
        return f"; set model.moe.shared_gate={str(gated).lower()} as its source has"
    return ""
