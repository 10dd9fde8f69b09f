"""A Kronos-style tokenizer for candle windows: transformer encoder, binary spherical quantisation
(BSQ) with two levels of bits, transformer decoder.

Each time step's encoding is projected to s1 + s2 dimensions, put on the unit sphere and quantised
coordinate by coordinate to +-1/sqrt(s1 + s2) (straight-through gradients). The decoder
reconstructs the window twice: from the coarse s1 bits alone ("pre") and from all bits ("all").
The quantiser's loss is a commitment term plus a factorised soft entropy: per-sample entropy
(confident codes) minus gamma x codebook entropy (every code used). The second term is subtracted,
so the quantiser loss, and the total, can be negative without anything being wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import ModelConfig
from trainlab.models.base import ModelBase

if TYPE_CHECKING:  # the section is declared with its task, a layer above
    from trainlab.tasks.series_tokenizer import SeriesConfig
from trainlab.models.gpt import Block, RMSNorm, rope_tables


class BSQ(nn.Module):
    def __init__(self, s: SeriesConfig, inv_temperature: float = 100.0):
        super().__init__()
        self.bits, self.group = s.s1_bits + s.s2_bits, s.group_bits
        self.s = s
        self.inv_temperature = inv_temperature
        self.groups = math.ceil(self.bits / self.group)
        corners = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=self.group)))
        self.register_buffer("corners", corners / math.sqrt(self.bits), persistent=False)

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype) / math.sqrt(self.bits)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes with straight-through gradients, quantiser loss, hard bits as 0/1)."""
        z = F.normalize(z.float(), dim=-1)
        q = self.quantise(z)
        zq = z + (q - z).detach()
        commit = (z - q.detach()).pow(2).sum(-1).mean()
        flat = F.pad(z.reshape(-1, self.bits), (0, self.groups * self.group - self.bits))
        logits = 2 * self.inv_temperature * flat.view(-1, self.groups, self.group) @ self.corners.t()
        p = logits.softmax(-1)
        per_sample = -(p * logits.log_softmax(-1)).sum(-1).sum(-1).mean()
        mean_p = p.mean(0)
        codebook = -(mean_p * (mean_p + 1e-10).log()).sum(-1).sum()
        loss = self.s.commit_weight * commit + self.s.entropy_weight * (per_sample - self.s.diversity_gamma * codebook)
        return zq, loss, (q > 0).long()


class SeriesTokenizer(ModelBase):
    def __init__(self, cfg: ModelConfig, s: SeriesConfig, n_features: int):
        super().__init__()
        self.cfg, self.s = cfg, s
        bits = s.s1_bits + s.s2_bits
        self.embed = nn.Linear(n_features, cfg.d_model)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.enc_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.to_code = nn.Linear(cfg.d_model, bits)
        self.bsq = BSQ(s)
        self.from_coarse = nn.Linear(s.s1_bits, cfg.d_model)
        self.from_all = nn.Linear(bits, cfg.d_model)
        self.decoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.dec_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, n_features)
        for block in self.decoder:
            block.attn.causal = False  # a window is reconstructed as a whole
        self.causal_encoder(s.causal)
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif p.ndim < 2:
                nn.init.zeros_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=self.cfg.init_std)
        if self.rope_cos.device.type != "meta":
            cos, sin = rope_tables(self.cfg.head_dim, self.cfg.seq_len, self.cfg.rope_theta)
            self.rope_cos.copy_(cos.to(self.rope_cos.device))
            self.rope_sin.copy_(sin.to(self.rope_sin.device))

    def causal_encoder(self, on: bool = True) -> None:
        """Whether a step's encoding (and so its codes) sees only the steps up to it."""
        for block in self.encoder:
            block.attn.causal = on

    def use_attention(self, kernel: str) -> None:
        for block in [*self.encoder, *self.decoder]:
            block.attn.kernel = kernel

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for block in blocks:
            x = block(x, cos, sin)
        return x

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes (B, T, bits) with straight-through gradients, quantiser loss, bits as 0/1)."""
        h = self.enc_norm(self._run(self.encoder, self.embed(x).float()))  # the residual stream stays fp32
        return self.bsq(self.to_code(h))

    def decode(self, codes: torch.Tensor, coarse_only: bool = False) -> torch.Tensor:
        h = (self.from_coarse(codes[..., :self.s.s1_bits]) if coarse_only else self.from_all(codes)).float()
        return self.head(self.dec_norm(self._run(self.decoder, h))).float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction from the coarse bits, from all bits, quantiser loss, bits)."""
        codes, quant_loss, bits = self.encode(x)
        return self.decode(codes, coarse_only=True), self.decode(codes), quant_loss, bits

    # -- what the trainer and the estimates ask of a model ------------------------------------------------
    def flops_per_token(self) -> int:
        """Per time step: 6 per weight (forward and backward; the decoder runs twice) plus attention."""
        decoder = sum(p.numel() for p in self.decoder.parameters()) + self.head.weight.numel()
        attention = 12 * 3 * self.cfg.n_layer * self.cfg.seq_len * self.cfg.d_model
        return 6 * (self.num_params() + decoder) + attention


class SeriesForecaster(ModelBase):
    """An autoregressive decoder over a tokenizer's codes, one position per candle.

    A position's input is the sum of embeddings of its coarse (s1) and fine (s2) codes, its hour of day and
    its weekday. The causal blocks' output predicts the next candle's s1; s2 is predicted from that output
    and the next s1 (the true one in training, the sampled one in generation), as Kronos does.
    """

    def __init__(self, cfg: ModelConfig, s: SeriesConfig):
        super().__init__()
        self.cfg, self.s = cfg, s
        d = cfg.d_model
        self.embed_s1 = nn.Embedding(2 ** s.s1_bits, d)
        self.embed_s2 = nn.Embedding(2 ** s.s2_bits, d)
        self.embed_hour = nn.Embedding(24, d)
        self.embed_wday = nn.Embedding(7, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.head_s1 = nn.Linear(d, 2 ** s.s1_bits, bias=False)
        self.cond_s1 = nn.Embedding(2 ** s.s1_bits, d)  # the next s1, as s2's head sees it
        self.cond_norm = RMSNorm(d, cfg.norm_eps)
        self.cond_proj = nn.Linear(d, d)
        self.head_s2 = nn.Linear(d, 2 ** s.s2_bits, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    reset_parameters = SeriesTokenizer.reset_parameters

    def tables(self) -> int:
        """Parameters that are only looked up: the code, calendar and conditioning embeddings."""
        return sum(e.weight.numel() for e in (self.embed_s1, self.embed_s2, self.embed_hour, self.embed_wday,
                                              self.cond_s1))

    def num_params(self, exclude_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.tables() if exclude_embedding else total

    def use_attention(self, kernel: str) -> None:
        for block in self.blocks:
            block.attn.kernel = kernel

    def extend(self, length: int) -> None:
        """Rotary tables for at least `length` positions (generation past the training window)."""
        if length > self.rope_cos.shape[0]:
            cos, sin = rope_tables(self.cfg.head_dim, length, self.cfg.rope_theta)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)

    def hidden(self, s1: torch.Tensor, s2: torch.Tensor, hour: torch.Tensor, wday: torch.Tensor,
               cache=None) -> torch.Tensor:
        """The normalised output of the blocks at each position (B, T, d); with a KV cache, the new positions."""
        x = self.embed_s1(s1) + self.embed_s2(s2) + self.embed_hour(hour) + self.embed_wday(wday)
        start = cache.length if cache is not None else 0
        T = x.shape[1]
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def logits_s2(self, h: torch.Tensor, next_s1: torch.Tensor) -> torch.Tensor:
        z = self.cond_norm(h + self.cond_s1(next_s1))
        return self.head_s2(z + F.gelu(self.cond_proj(z)))

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, hour: torch.Tensor, wday: torch.Tensor,
                next_s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the next s1, logits of the next s2 given `next_s1`), each (B, T, codes)."""
        h = self.hidden(s1, s2, hour, wday)
        return self.head_s1(h).float(), self.logits_s2(h, next_s1).float()

    def flops_per_token(self) -> int:
        """6 per weight that multiplies (the embeddings only look up) plus attention, as the GPT counts it."""
        attention = 12 * self.cfg.n_layer * self.cfg.seq_len * self.cfg.d_model
        return 6 * self.num_params(exclude_embedding=True) + attention
