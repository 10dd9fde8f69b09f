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
        for block in [*self.encoder, *self.decoder]:
            block.attn.causal = False  # a window is reconstructed as a whole
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
