"""Sampling on token ids: temperature (0 = greedy), top-k, top-p, repetition penalty, KV cache.

The logits processors follow the definitions of the transformers library (and are tested against
it): the repetition penalty divides positive and multiplies negative logits of tokens already in
the sequence; top-p keeps the smallest set whose probability reaches p, always at least one token.
"""

from __future__ import annotations

from typing import Optional

import torch

from trainlab.errors import NonFiniteOutput
from trainlab.models.gpt import GPT, KVCache


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0:
        return logits
    picked = torch.gather(logits, 1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(1, seen, picked)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach p; the first is always kept
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def check_finite(logits: torch.Tensor) -> None:
    """Raise NonFiniteOutput when a row of logits holds NaN or +inf, or nothing above -inf (a diverged model)."""
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any() or not torch.isfinite(logits).any(-1).all()):
        raise NonFiniteOutput("the model's outputs are not finite (its weights diverged): there is nothing to sample; "
                              "`trainlab doctor` on the run says why")


def process_logits(logits: torch.Tensor, seen: Optional[torch.Tensor], temperature: float, top_k: int,
                   top_p: float, repetition_penalty: float) -> torch.Tensor:
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature > 0:
        logits = logits / temperature
    logits = apply_top_k(logits, top_k)
    return apply_top_p(logits, top_p)


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, repetition_penalty: float = 1.0, seed: Optional[int] = None,
             use_cache: bool = True, eos_id: Optional[int] = None, stop: Optional[list[int]] = None) -> torch.Tensor:
    """Continue `prompt` (B, T) by up to `max_new_tokens`; returns the new tokens (B, N). Generation ends
    early at `eos_id`, or once every row's new tokens end with the sequence `stop` (a multi-token end marker)."""
    was_training = model.training
    model.eval()
    device = prompt.device
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    limit = model.cfg.seq_len
    seq = prompt
    out = []
    cache: Optional[KVCache] = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(seq[:, -limit:])[:, -1, :]
        elif cache is None or cache.length >= limit:
            # (re)fill the cache from the last seq_len tokens: the same window a full recomputation sees
            cache = KVCache.empty(model.cfg, seq.shape[0], limit, device, model.embed.weight.dtype)
            logits = model(seq[:, -limit:], cache)[:, -1, :]
        else:
            logits = model(seq[:, -1:], cache)[:, -1, :]
        logits = process_logits(logits.float(), seq, temperature, top_k, top_p, repetition_penalty)
        check_finite(logits)
        if temperature <= 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = logits.softmax(dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen).to(device)
        seq = torch.cat([seq, nxt], dim=1)
        out.append(nxt)
        if eos_id is not None and bool((nxt == eos_id).all()):
            break
        if stop and len(out) >= len(stop) and bool((torch.cat(out[-len(stop):], 1) == torch.tensor(stop, device=device)).all()):
            break
    model.train(was_training)
    return torch.cat(out, dim=1) if out else prompt[:, :0]
