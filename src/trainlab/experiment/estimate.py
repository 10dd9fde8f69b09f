"""Estimates before a run: exact parameter counts, memory, FLOPs, tokens and time.

Counts come from the real model built on the meta device (no memory, no init), so they are exact
for any shape. Time and memory on this machine come from a probe (trainlab.experiment.probe): real
training steps of the config at depth 1 and 3, in its precision, compiled or not, with its optimizer
and attention kernel, extended linearly to its depth; the step time, the evaluations and samples the
run makes inside its clock, the training memory rise and the process baseline. `--measure` times the
full config instead. For a device this machine lacks (a T4 from a laptop) time comes from the
device's spec sheet and an assumed efficiency, and memory from the counted parts (weights, gradients,
optimizer state, autocast's low-precision copies, the activations the blocks save): both say so.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from torch import nn

from trainlab import hardware
from trainlab.config import RunConfig
from trainlab.errors import TrainlabError
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
    """The counted parts: fp32 master weights and gradients, the optimizer's state (AdamW's two moments,
    Muon's one momentum buffer for the blocks' matrices), under bf16/fp16 autocast the low-precision copies
    of the weights it caches for the step, and the activations of one micro-batch."""
    trainable = sum(p.numel() for p in model.parameters())
    weights = 4 * trainable  # fp32 master weights; autocast casts on the fly
    gradients = 4 * trainable
    muon = 0
    if cfg.optim.name == "muon":
        from trainlab.train.optimizers import muon_parameter

        muon = sum(p.numel() for n, p in model.named_parameters() if muon_parameter(n, p))
    optimizer = 8 * (trainable - muon) + 4 * muon
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    copies = 2 * matrices if precision in ("bf16", "fp16") else 0
    activations = activation_bytes(cfg, precision)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "autocast_copies": copies,
            "activations": activations,
            "activations_checkpointed": activation_bytes(cfg, precision, checkpointing=True),
            "total": weights + gradients + optimizer + copies + activations}


def efficiency(cfg: RunConfig) -> float:
    """Share of the measured matmul peak a CPU step is assumed to reach when the config was not probed
    (--no-probe): small widths waste more on overhead. An assumption, and said so."""
    return min(0.75, max(0.3, 0.55 + 0.14 * math.log2(cfg.model.d_model / 128)))


def spec_efficiency(cfg: RunConfig) -> float:
    """Share of a GPU's spec-sheet tensor peak a small model's eager step is assumed to reach: 15% at
    d_model 512, more with width. Spec peaks assume boost clocks a 70 W T4 does not hold, and small
    matmuls, kernel launches and the optimizer fill much of a step. Seed 001's own measurement (MiniMind's
    MoE, 1.41M samples of 512 tokens an epoch, 5 hours an epoch on two T4s: about 20k tokens/s per T4)
    sits below it, as its expert loop would. An assumption, and said so."""
    return min(0.4, max(0.08, 0.15 + 0.05 * math.log2(cfg.model.d_model / 512)))


def step_size(cfg: RunConfig, task: Optional[Task] = None, world: int = 1) -> StepSize:
    """The step's tokens as the trainer will count them: from the task's data when it is prepared, else
    from the config alone (exact for fixed-size examples, an upper bound for SFT's)."""
    if task is not None:
        return StepSize.of(cfg, task.tokens_per_example, task.loss_tokens_per_example, world)
    return StepSize.of(cfg, *task_class(cfg.task).example_tokens(cfg), world)


def target(cfg: RunConfig, gpu: Optional[str], here: torch.device) -> tuple[torch.device, str, Optional[str]]:
    """The device, precision and spec-sheet GPU (its canonical name, or None) a config is estimated for: this
    machine, the config's train.device, or `gpu` from hardware.GPU_SPECS. An explicit precision is taken as
    given, so a T4's fp16 run can be estimated from a laptop; `auto` resolves as the trainer would there."""
    from trainlab.errors import ConfigError

    # a device this machine lacks is estimated without timing it here
    device = here if cfg.train.device in ("auto", here.type) else torch.device(cfg.train.device)
    if gpu is not None:
        names = {name.lower(): name for name in hardware.GPU_SPECS}
        if gpu.lower() not in names:
            raise ConfigError(f"--gpu {gpu}: not a GPU with a known spec sheet; known: {', '.join(hardware.GPU_SPECS)}")
        gpu, device = names[gpu.lower()], torch.device("cuda")
    if cfg.train.precision != "auto":
        return device, cfg.train.precision, gpu
    if gpu is not None:  # compute capability 8.0+ has bf16 tensor cores; below it, fp16 with a scaler
        return device, "bf16" if float(hardware.GPU_SPECS[gpu]["capability"]) >= 8.0 else "fp16", gpu
    return device, hardware.resolve_precision("auto", device), gpu


def evaluations(cfg: RunConfig, steps: int, eval_at_start: bool) -> int:
    """Evaluations a run of `steps` steps makes inside its training time (elapsed_s): every eval_interval
    steps, one at the end unless it falls on one, and one before the first step where the task asks; a
    compiled run's first evaluation compiles and is left out of elapsed_s, as its first step is."""
    t = cfg.train
    n = steps // t.eval_interval + int(steps % t.eval_interval != 0) + int(eval_at_start)
    return max(0, n - int(t.compile))


def _time_basis(cfg: RunConfig, precision: str, device: torch.device, step_flops: float,
                tokens_per_s: Optional[float], timing: Optional[dict[str, Any]],
                gpu: Optional[str]) -> tuple[str, Optional[float], Optional[float]]:
    """(where the time comes from, seconds a step, seconds an evaluation with its sample), best basis first:
    the full config timed, the probe, a GPU's spec sheet, this machine's matmul peak, or nothing."""
    if tokens_per_s is not None:
        return "measured: real steps of this config (--measure)", None, None
    if timing is not None:
        depth = ", ".join(str(d) for d in timing["probed_depths"])
        return (f"probe: real {precision}{' compiled' if cfg.train.compile else ''} steps of this config at "
                f"depth {depth} on this machine, linear in depth"), timing["step_s"], timing["eval_s"] + timing["sample_s"]
    if gpu is not None:
        peak = hardware.GPU_SPECS[gpu]["flops"].get(precision)
        if not peak:
            return f"not estimated: a {gpu} has no {precision} tensor cores", None, None
        return (f"not measured: {gpu} spec-sheet {precision} peak {peak / 1e12:.0f} TFLOP/s x an assumed "
                f"{spec_efficiency(cfg):.0%} efficiency"), step_flops / (peak * spec_efficiency(cfg)), None
    if hardware.native(precision, device):
        return (f"not measured at this shape: the matmul peak x an assumed {efficiency(cfg):.0%} efficiency "
                f"(`trainlab estimate` probes the config itself)"),\
            step_flops / (hardware.peak_flops(precision, device) * efficiency(cfg)), None
    return (f"not estimated: this machine cannot time {precision} on {device.type}; "
            f"run `trainlab estimate` on the target machine"), None, None


def estimate(cfg: RunConfig, precision: str, device: torch.device, task: Optional[Task] = None,
             tokens_per_s: Optional[float] = None, world: int = 1, timing: Optional[dict[str, Any]] = None,
             gpu: Optional[str] = None) -> dict[str, Any]:
    """Parameters, memory, FLOPs, tokens and time of a run. `task`: the task over its prepared data (for
    epochs, and for SFT's mean example length); `world`: processes under torchrun; `timing`: a probe of the
    config on this machine (trainlab.experiment.probe), the measured basis of time and memory; `gpu`: a GPU
    named in hardware.GPU_SPECS to estimate from its spec sheet, from a machine without it;
    `tokens_per_s`: measured by timing the full config (--measure)."""
    model = meta_model(cfg)
    params = param_counts(model)
    flops = model.flops_per_token()
    step = step_size(cfg, task, world)
    mem = memory(cfg, model, precision)
    source, step_s, eval_s = _time_basis(cfg, precision, device, step.tokens * flops, tokens_per_s, timing, gpu)
    if timing is not None:
        mem["training_rise"], mem["process_baseline"] = int(timing["rise_bytes"]), int(timing["baseline_bytes"])
    if tokens_per_s is not None:
        step_s = step.tokens / tokens_per_s
    elif step_s is not None:
        tokens_per_s = step.tokens / step_s
    steps = total_steps(cfg, step, task.examples_per_epoch if task is not None else None)
    eval_at_start = bool(task.eval_at_start) if task is not None else False  # a task's own choice (SFT's)
    seconds = None
    if step_s is not None and cfg.train.max_seconds:  # the run's clock stops it first, or its other budget does
        per_step = step_s + (eval_s or 0.0) / cfg.train.eval_interval
        by_clock = int(cfg.train.max_seconds / per_step)
        steps = min(steps, by_clock) if steps else by_clock
    tokens = steps * step.tokens if steps else None
    if step_s is not None and steps:
        seconds = steps * step_s + evaluations(cfg, steps, eval_at_start) * (eval_s or 0.0)
        if cfg.train.max_seconds:
            seconds = min(seconds, cfg.train.max_seconds)
    result = {"params": params, "memory_bytes": mem, "flops_per_token": flops,
              "tokens_per_step": step.tokens, "loss_tokens_per_step": step.loss_tokens, "tokens": tokens,
              "tokens_per_param": (tokens / params["total"]) if tokens else None,
              "tokens_per_s": tokens_per_s, "throughput_source": source, "step_seconds": step_s,
              "eval_seconds": eval_s, "estimated_seconds": seconds, "precision": precision, "device": str(device),
              "compiled": cfg.train.compile, "processes": world}
    if gpu is not None:
        result["gpu"] = {"name": gpu, "memory_bytes": int(hardware.GPU_SPECS[gpu]["memory_gib"] * 2**30),
                         "note": "torch.cuda.max_memory_allocated is predicted by memory_bytes.total; the CUDA "
                                 "context (about 0.3-0.5 GiB) comes on top"}
    return result


def format_table(result: dict[str, Any]) -> str:
    def mib(n):
        return f"{n / 2**20:,.1f} MiB"

    p, m = result["params"], result["memory_bytes"]
    copies = f" + autocast copies {mib(m['autocast_copies'])}" if m.get("autocast_copies") else ""
    lines = [f"parameters   total {p['total']:,}  (embedding {p['embedding']:,}, non-embedding {p['non_embedding']:,}, "
             f"active {p['active']:,})",
             f"memory       weights {mib(m['weights'])} + gradients {mib(m['gradients'])} + optimizer {mib(m['optimizer'])}"
             f"{copies} + activations {mib(m['activations'])} = {mib(m['total'])} (counted)",
             f"             activations with checkpointing: {mib(m['activations_checkpointed'])}"]
    if "training_rise" in m:
        lines.append(f"             probed: training adds {mib(m['training_rise'])} to a process of "
                     f"{mib(m['process_baseline'])} (torch, the model and the data loaded), "
                     f"{mib(m['training_rise'] + m['process_baseline'])} at peak")
    if "gpu" in result:
        g = result["gpu"]
        fits = "fits in" if m["total"] < g["memory_bytes"] * 0.95 else "does NOT fit in"
        lines.append(f"             {fits} the {g['name']}'s {g['memory_bytes'] / 2**30:.0f} GiB; {g['note']}")
    lines += [f"compute      {result['flops_per_token'] / 1e6:,.2f} MFLOP per token, {result['tokens_per_step']:,} tokens per step"
              f" ({result['loss_tokens_per_step']:,.0f} carry loss)"
              f" ({result['precision']}{', compiled' if result.get('compiled') else ''} on {result['device']})",
              "throughput   " + (f"{result['tokens_per_s']:,.0f} tokens/s, {result['step_seconds']:.3f} s a step "
                                  f"({result['throughput_source']})" if result["tokens_per_s"] else result["throughput_source"])]
    if result["tokens"]:
        lines.append(f"budget       {result['tokens']:,} tokens = {result['tokens_per_param']:.2f} tokens per parameter "
                     f"(compute-optimal is about 20)")
        if result["estimated_seconds"]:
            evals = f", evaluations {result['eval_seconds']:.2f} s each" if result.get("eval_seconds") else ""
            lines.append(f"time         {result['estimated_seconds']:,.0f} s of training (elapsed_s, without start-up "
                         f"and compilation{evals})")
    return "\n".join(lines)


SELF_CHECK_TOLERANCE = 0.25


def self_check(series: Any, cache_dir: Optional[Any] = None, log: Any = lambda s: None) -> dict[str, Any]:
    """A fresh estimate of a finished trainlab run's config, on this machine, against what the run measured:
    its median tokens/s over the logged training rows and its peak memory. `agrees` is False when either
    differs by more than SELF_CHECK_TOLERANCE; the doctor notes it, which keeps the estimator honest on
    hosts nobody measured. Not run (`ran: False` and the reason) for a run made on another machine."""
    import json

    from trainlab.rundir import saved_config

    path = series.path
    try:
        env = json.loads((path / "env.json").read_text())
        cfg = saved_config(path)
    except (OSError, ValueError, TrainlabError) as err:
        return {"ran": False, "reason": f"the run's config or env.json is unreadable ({err})"}
    device = hardware.resolve_device(cfg.train.device)
    kind, machine = str(env.get("device", "?")).split(":")[0], env.get("hardware") or {}
    ran_on = machine.get("cpu") if kind == "cpu" else (machine.get("cuda_devices") or [kind])[0]
    if kind != device.type or (kind in ("cpu", "cuda") and ran_on != hardware.device_name(device)):
        return {"ran": False, "reason": f"the run trained on {ran_on}, not on this machine"}
    if int(env.get("world_size", 1)) > 1:
        return {"ran": False, "reason": "the run trained in several processes; the probe times one"}
    precision = env.get("precision") or hardware.resolve_precision(cfg.train.precision, device)
    if not hardware.native(precision, device):
        return {"ran": False, "reason": f"this machine has no fast {precision}"}
    _, rates = series.col("tokens_per_s")
    _, peaks = series.col("peak_memory_mb")
    if not len(rates):
        return {"ran": False, "reason": "the run logged no tokens/s"}
    from trainlab.experiment.probe import probe

    timing = probe(cfg, precision, device, cache_dir=cache_dir, log=log)
    est = estimate(cfg, precision, device, timing=timing)
    out: dict[str, Any] = {"ran": True, "tolerance": SELF_CHECK_TOLERANCE}
    measured_rate = float(np.median(rates))
    out["tokens_per_s"] = {"measured": measured_rate, "estimated": est["tokens_per_s"],
                           "ratio": est["tokens_per_s"] / measured_rate}
    if len(peaks):
        peak = est["memory_bytes"]["training_rise"] + est["memory_bytes"]["process_baseline"]
        measured_peak = float(np.max(peaks)) * 2**20
        out["peak_memory_mb"] = {"measured": measured_peak / 2**20, "estimated": peak / 2**20,
                                 "ratio": peak / measured_peak}
    out["agrees"] = all(abs(v["ratio"] - 1) <= SELF_CHECK_TOLERANCE for k, v in out.items()
                        if isinstance(v, dict))
    return out


def self_check_note(check: dict[str, Any]) -> str:
    """One line for the doctor's notes."""
    if not check.get("ran"):
        return f"estimate self-check not run: {check['reason']}"
    label = {"tokens_per_s": "tokens/s", "peak_memory_mb": "peak memory (MiB)"}
    parts = [f"{label[k]} {v['measured']:,.0f} measured against {v['estimated']:,.0f} estimated "
             f"({v['ratio']:.2f}x)" for k, v in check.items() if isinstance(v, dict)]
    verdict = ("agrees within 25%" if check["agrees"] else
               "DIFFERS by more than 25%: `trainlab estimate --measure` times the full config; please report "
               "the host and config")
    return f"estimate self-check: {'; '.join(parts)}: {verdict}"
