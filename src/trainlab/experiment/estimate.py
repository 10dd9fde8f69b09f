"""Estimates before a run: exact parameter counts, memory, FLOPs, tokens and time.

Counts come from the real model built on the meta device (no memory, no init), so they are exact
for any shape. Memory is weights + gradients + AdamW state + activations of one micro-batch, the
activations counted from what the block saves for backward. Time is the budget's tokens times
FLOPs per token over the machine's measured matmul peak at the run's precision, scaled by an
efficiency that grows with width (measured with bench/throughput.py on 2 CPU cores), or, with
`--measure`, over the throughput of a few real training steps.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from torch import nn

from trainlab.config import RunConfig

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def meta_model(cfg: RunConfig) -> nn.Module:
    from trainlab.tasks import build_model

    with torch.device("meta"):
        return build_model(cfg)


def param_counts(model: nn.Module) -> dict[str, int]:
    """Embedding parameters are the token tables (input, untied output and its per-entry bias);
    active ones are those a token passes through (a mixture of experts uses top_k of its experts)."""
    total = model.num_params()
    non_embedding = model.num_params(exclude_embedding=True)
    active = model.active_params() if hasattr(model, "active_params") else total
    return {"total": total, "embedding": total - non_embedding, "non_embedding": non_embedding, "active": active}


def ffn_width(cfg: RunConfig) -> int:
    """Hidden values a token's feed-forward keeps for backward: top_k experts (and a shared one) under MoE."""
    m = cfg.model
    if not m.moe.experts:
        return m.ffn_hidden_size
    hidden = m.moe.expert_hidden or m.ffn_hidden_size
    return hidden * (m.moe.top_k + int(m.moe.shared_expert)) + m.d_model * m.moe.top_k // 4


def activation_bytes(cfg: RunConfig, precision: str, checkpointing: bool = False) -> int:
    """Tensors one micro-batch keeps for backward, plus the gradients in flight during it.

    Per layer and token: the two RMSNorms' inputs and outputs (4 d), q/k/v (3 d), the rotated
    halves and rotary outputs of q and k (4 d), the attention output and its reshaped copy (2 d),
    the residual stream (1 d), gate/up output, SiLU output and their product (4 h): 14 d + 4 h
    values. During backward about one more layer's worth of gradients is alive. The logits add V
    values at the run's precision, and the loss three fp32 tensors of V per token that are alive
    together in backward: the saved log-softmax, the gradient of the log-probabilities (from the NLL)
    and the gradient of the logits. With
    activation checkpointing only each block's input is kept, plus one block recomputed at a time.
    Checked against measured peak RSS by bench/estimate_accuracy.py.
    """
    m, t = cfg.model, cfg.train
    tokens = t.batch_size * m.seq_len
    b = BYTES["bf16" if precision in ("bf16", "fp16") else "fp32"]
    per_layer = (14 * m.d_model + 4 * ffn_width(cfg)) * b
    layers = (m.n_layer * m.d_model * b + per_layer) if checkpointing else m.n_layer * per_layer
    in_flight = per_layer  # gradients of one layer's activations during backward
    logits = (m.vocab_size or 0) * (b + 3 * 4)
    return tokens * (layers + in_flight + logits + m.d_model * 4)


def memory(cfg: RunConfig, model: nn.Module, precision: str) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters())
    weights = 4 * trainable  # fp32 master weights; autocast casts on the fly
    gradients = 4 * trainable
    muon = 0
    if cfg.optim.name == "muon":
        from trainlab.train.optimizers import muon_parameter

        muon = sum(p.numel() for n, p in model.named_parameters() if muon_parameter(n, p))
    optimizer = 8 * (trainable - muon) + 4 * muon  # AdamW: two fp32 moments; Muon: one momentum buffer
    activations = activation_bytes(cfg, precision)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations,
            "activations_checkpointed": activation_bytes(cfg, precision, checkpointing=True),
            "total": weights + gradients + optimizer + activations}


def peak_flops(precision: str, device: torch.device, cache_dir: Optional[Path] = None) -> float:
    """The machine's matmul peak at this precision, measured once and cached."""
    from trainlab.data.corpora import default_cache_dir
    from trainlab.train import hardware

    key = f"{device.type}|{hardware.cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}|" \
          f"{torch.get_num_threads()}|{precision}"
    path = (cache_dir or default_cache_dir()) / "peak_flops.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if key in cached:
        return cached[key]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 8192 if device.type == "cuda" else (2048 if native(precision, device) else 512)  # slow paths: keep it short
    # a generator of its own: measuring must not move the global RNG (a run that measures would draw
    # different dropout masks from its resumed self, which finds the figure cached)
    g = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, dtype=dtype, device=device, generator=g) for _ in range(2))
    best = 0.0
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        elif device.type == "mps":
            torch.mps.synchronize()

    for _ in range(3):
        a @ b
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        sync()
        best = max(best, 6 * n**3 / (time.perf_counter() - t0))
    path.parent.mkdir(parents=True, exist_ok=True)
    cached[key] = best
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cached, indent=1))
    tmp.replace(path)
    return best


def native(precision: str, device: torch.device) -> bool:
    """Whether this machine runs matmuls at `precision` at full speed (so its peak can be measured)."""
    from trainlab.train import hardware

    here = "cuda" if torch.cuda.is_available() else "cpu"
    if device.type != here:
        return False  # not this machine's device: nothing to measure here
    if device.type != "cpu":
        return True
    return precision == "fp32" or (precision == "bf16" and hardware.cpu_has_fast_bf16())


def efficiency(cfg: RunConfig) -> float:
    """Share of the matmul peak a training step reaches: small widths waste more on overhead.

    Measured on 2 CPU cores (bench/throughput.py): about 0.55 at d_model 128, 0.7 at 384.
    """
    return min(0.75, max(0.3, 0.55 + 0.14 * math.log2(cfg.model.d_model / 128)))


def budget_tokens(cfg: RunConfig, train_tokens: Optional[int]) -> Optional[int]:
    t, per_step = cfg.train, cfg.tokens_per_step
    candidates = []
    if t.max_steps:
        candidates.append(t.max_steps * per_step)
    if t.max_tokens:
        candidates.append(math.ceil(t.max_tokens / per_step) * per_step)
    if t.epochs and train_tokens:
        candidates.append(math.ceil(t.epochs * train_tokens / per_step) * per_step)
    return min(candidates) if candidates else None


def estimate(cfg: RunConfig, precision: str, device: torch.device, train_tokens: Optional[int] = None,
             tokens_per_s: Optional[float] = None) -> dict[str, Any]:
    model = meta_model(cfg)
    params = param_counts(model)
    flops = model.flops_per_token()
    source = "measured"
    if tokens_per_s is None and native(precision, device):
        tokens_per_s = peak_flops(precision, device) * efficiency(cfg) / flops
        source = "peak x efficiency"
    elif tokens_per_s is None:
        source = (f"not estimated: this machine cannot time {precision} on {device.type}; "
                  f"run `trainlab estimate --measure` on the target machine")
    tokens = budget_tokens(cfg, train_tokens)
    seconds = tokens / tokens_per_s if tokens and tokens_per_s else None
    if tokens_per_s and cfg.train.max_seconds and (seconds is None or seconds > cfg.train.max_seconds):
        seconds = cfg.train.max_seconds
        tokens = int(seconds * tokens_per_s)
    return {"params": params, "memory_bytes": memory(cfg, model, precision), "flops_per_token": flops,
            "tokens_per_step": cfg.tokens_per_step, "tokens": tokens,
            "tokens_per_param": (tokens / params["total"]) if tokens else None,
            "tokens_per_s": tokens_per_s, "throughput_source": source, "estimated_seconds": seconds,
            "precision": precision, "device": str(device)}


def format_table(result: dict[str, Any]) -> str:
    def mib(n):
        return f"{n / 2**20:,.1f} MiB"

    p, m = result["params"], result["memory_bytes"]
    lines = [f"parameters   total {p['total']:,}  (embedding {p['embedding']:,}, non-embedding {p['non_embedding']:,}, "
             f"active {p['active']:,})",
             f"memory       weights {mib(m['weights'])} + gradients {mib(m['gradients'])} + optimizer {mib(m['optimizer'])}"
             f" + activations {mib(m['activations'])} = {mib(m['total'])}",
             f"             activations with checkpointing: {mib(m['activations_checkpointed'])}",
             f"compute      {result['flops_per_token'] / 1e6:,.2f} MFLOP per token, {result['tokens_per_step']:,} tokens per step"
             f" ({result['precision']} on {result['device']})",
             "throughput   " + (f"{result['tokens_per_s']:,.0f} tokens/s ({result['throughput_source']})"
                                 if result["tokens_per_s"] else result["throughput_source"])]
    if result["tokens"]:
        lines.append(f"budget       {result['tokens']:,} tokens = {result['tokens_per_param']:.2f} tokens per parameter "
                     f"(compute-optimal is about 20)")
        if result["estimated_seconds"]:
            lines.append(f"time         {result['estimated_seconds']:,.0f} s")
    return "\n".join(lines)
