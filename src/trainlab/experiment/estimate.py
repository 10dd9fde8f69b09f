"""Estimates before a run: exact parameter counts, memory, FLOPs, tokens and time.

Counts come from the real model built on the meta device (no memory, no init), so they are exact
for any shape. Memory is weights + gradients + AdamW state + activations of one micro-batch, the
activations counted from what the block saves for backward. Time is the budget's tokens times
FLOPs per token over the machine's measured matmul peak at the run's precision, scaled by an
efficiency that grows with width (measured with bench/throughput.py on 2 CPU cores), or, with
`--measure`, over the throughput of a few real training steps.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from torch import nn

from trainlab import hardware
from trainlab.config import RunConfig
from trainlab.models.base import param_counts
from trainlab.tasks import Task, meta_model, task_class
from trainlab.train.budget import StepSize, total_steps

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def ffn_width(cfg: RunConfig) -> int:
    """Hidden values a token's feed-forward keeps for backward: top_k experts (and a shared one) under MoE."""
    m = cfg.model
    if not m.moe.experts:
        return m.ffn_hidden_size
    hidden = m.moe.expert_hidden or m.ffn_hidden_size
    return hidden * (m.moe.top_k + int(m.moe.shared_expert)) + m.d_model * m.moe.top_k // 4


def qkv_width(cfg: RunConfig) -> int:
    """Values a token's q, k and v keep for backward: (n_head + 2 n_kv_head) head_dim, 3 d without grouped-query
    attention; with fewer key/value heads, plus the keys and values repeated to every query head (2 d)."""
    m = cfg.model
    return (m.n_head + 2 * m.kv_heads) * m.head_dim + (2 * m.d_model if m.kv_heads < m.n_head else 0)


def activation_bytes(cfg: RunConfig, precision: str, checkpointing: bool = False) -> int:
    """Tensors one micro-batch keeps for backward, plus the gradients in flight during it.

    Per layer and token: the two RMSNorms' inputs and outputs (4 d), q/k/v (3 d; `qkv_width` with
    grouped-query attention), the rotated halves and rotary outputs of q and k (4 d), the attention
    output and its reshaped copy (2 d), the residual stream (1 d), gate/up output, SiLU output and
    their product (4 h): 14 d + 4 h values. During backward about one more layer's worth of gradients
    is alive. The logits add V values at the run's precision, and the loss three fp32 tensors of V per
    token that are alive together in backward: the saved log-softmax, the gradient of the
    log-probabilities (from the NLL) and the gradient of the logits. With activation checkpointing
    only each block's input is kept, plus one block recomputed at a time.
    Checked against measured peak RSS by bench/estimate_accuracy.py.
    """
    m, t = cfg.model, cfg.train
    tokens = t.batch_size * m.seq_len
    b = BYTES["bf16" if precision in ("bf16", "fp16") else "fp32"]
    per_layer = (11 * m.d_model + qkv_width(cfg) + 4 * ffn_width(cfg)) * b
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


def efficiency(cfg: RunConfig) -> float:
    """Share of the matmul peak a training step reaches: small widths waste more on overhead.

    Measured on 2 CPU cores (bench/throughput.py): about 0.55 at d_model 128, 0.7 at 384.
    """
    return min(0.75, max(0.3, 0.55 + 0.14 * math.log2(cfg.model.d_model / 128)))


def step_size(cfg: RunConfig, task: Optional[Task] = None, world: int = 1) -> StepSize:
    """The step's tokens as the trainer will count them: from the task's data when it is prepared, else
    from the config alone (exact for fixed-size examples, an upper bound for SFT's)."""
    if task is not None:
        return StepSize.of(cfg, task.tokens_per_example, task.loss_tokens_per_example, world)
    return StepSize.of(cfg, *task_class(cfg.task).example_tokens(cfg), world)


def estimate(cfg: RunConfig, precision: str, device: torch.device, task: Optional[Task] = None,
             tokens_per_s: Optional[float] = None, world: int = 1) -> dict[str, Any]:
    """Parameters, memory, FLOPs, tokens and time of a run. `task`: the task over its prepared data (for
    epochs, and for SFT's mean example length); `world`: processes under torchrun."""
    model = meta_model(cfg)
    params = param_counts(model)
    flops = model.flops_per_token()
    source = "measured"
    if tokens_per_s is None and hardware.native(precision, device):
        tokens_per_s = hardware.peak_flops(precision, device) * efficiency(cfg) / flops
        source = "peak x efficiency"
    elif tokens_per_s is None:
        source = (f"not estimated: this machine cannot time {precision} on {device.type}; "
                  f"run `trainlab estimate --measure` on the target machine")
    step = step_size(cfg, task, world)
    steps = total_steps(cfg, step, task.examples_per_epoch if task is not None else None)
    tokens = steps * step.tokens if steps else None
    seconds = tokens / tokens_per_s if tokens and tokens_per_s else None
    if tokens_per_s and cfg.train.max_seconds and (seconds is None or seconds > cfg.train.max_seconds):
        seconds = cfg.train.max_seconds
        tokens = int(seconds * tokens_per_s)
    return {"params": params, "memory_bytes": memory(cfg, model, precision), "flops_per_token": flops,
            "tokens_per_step": step.tokens, "loss_tokens_per_step": step.loss_tokens, "tokens": tokens,
            "tokens_per_param": (tokens / params["total"]) if tokens else None,
            "tokens_per_s": tokens_per_s, "throughput_source": source, "estimated_seconds": seconds,
            "precision": precision, "device": str(device), "processes": world}


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
             f" ({result['loss_tokens_per_step']:,.0f} carry loss)"
             f" ({result['precision']} on {result['device']})",
             "throughput   " + (f"{result['tokens_per_s']:,.0f} tokens/s ({result['throughput_source']})"
                                 if result["tokens_per_s"] else result["throughput_source"])]
    if result["tokens"]:
        lines.append(f"budget       {result['tokens']:,} tokens = {result['tokens_per_param']:.2f} tokens per parameter "
                     f"(compute-optimal is about 20)")
        if result["estimated_seconds"]:
            lines.append(f"time         {result['estimated_seconds']:,.0f} s")
    return "\n".join(lines)
