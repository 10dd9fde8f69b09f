"""Training throughput: trainlab's trainer against a plain eager fp32 PyTorch loop, side by side.

For each shape, both train the same model (same weights, same batches of real Shakespeare, same
AdamW settings) and we report tokens/s, their ratio, the MFU of each against this machine's
measured matmul peak, and the first losses of both (they should agree: same maths, different
execution). The plain loop runs in a process of its own, with a script's default settings; the two
take turns, never running at once. Run with nothing else on the machine; repeat it, identical runs
differ by 5-9%.

    python bench/throughput.py [--steps 30] [--shapes small,large]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.presets import build_config
from trainlab.data.prepare import prepare
from trainlab.presets import shakespeare_char
from trainlab import hardware
from trainlab.train.trainer import Trainer

SHAPES = {  # name: (n_layer, n_head, d_model, seq_len, batch)
    "small": (4, 4, 128, 64, 12),  # nanoGPT's documented CPU recipe
    "large": (6, 6, 384, 256, 16),
}


# --- the plain loop: a self-contained model, eager, fp32, no tricks ----------------------------------
class PlainAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        def heads(t):
            return t.view(B, T, self.h, C // self.h).transpose(1, 2)

        def rope(t):
            half = t.shape[-1] // 2
            return t * cos + torch.cat([-t[..., half:], t[..., :half]], -1) * sin

        q, k, v = rope(heads(self.q_proj(x))), rope(heads(self.k_proj(x))), heads(self.v_proj(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(B, T, C))


class PlainNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class PlainMLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainBlock(nn.Module):
    def __init__(self, d, h, hidden, eps):
        super().__init__()
        self.attn_norm, self.attn = PlainNorm(d, eps), PlainAttention(d, h)
        self.mlp_norm, self.mlp = PlainNorm(d, eps), PlainMLP(d, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class PlainGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg.model
        self.embed = nn.Embedding(m.vocab_size, m.d_model)
        self.blocks = nn.ModuleList(PlainBlock(m.d_model, m.n_head, m.ffn_hidden_size, m.norm_eps) for _ in range(m.n_layer))
        self.norm = PlainNorm(m.d_model, m.norm_eps)
        self.lm_head = nn.Linear(m.d_model, m.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight
        hd = m.d_model // m.n_head
        inv = 1.0 / (m.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
        f = torch.outer(torch.arange(m.seq_len).float(), inv)
        self.cos, self.sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x, self.cos[: idx.shape[1]], self.sin[: idx.shape[1]])
        return self.lm_head(self.norm(x))


def split_fused(state):
    """trainlab's fused qkv_proj / gate_up_proj weights as the plain model's separate matrices."""
    out = {}
    for k, v in state.items():
        if k.endswith("qkv_proj.weight"):
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[k.replace("qkv_proj", name)] = part
        elif k.endswith("gate_up_proj.weight"):
            for name, part in zip(("gate_proj", "up_proj"), v.chunk(2, dim=0)):
                out[k.replace("gate_up_proj", name)] = part
        else:
            out[k] = v
    return out


# --- measurement --------------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5, trials: int = 3) -> float:
    """Best of a few timed square matmuls: what the machine can do at this precision."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def plain_worker(conn, cfg_dict: dict, state: dict, batches: np.ndarray, threads: int) -> None:
    """The plain loop, in a process of its own: trainlab changes process-wide settings (glibc keeps freed
    memory, see hardware.keep_freed_memory), and the plain loop should run with a script's defaults.
    Answers each (first step, steps) request with (losses, seconds)."""
    torch.set_num_threads(threads)
    cfg = build_config(cfg_dict)
    plain = PlainGPT(cfg)
    plain.load_state_dict(state, strict=False)
    from trainlab.train.optimizers import param_groups

    opt = torch.optim.AdamW(param_groups(plain, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            eps=cfg.optim.eps)

    def step(i):
        rows = torch.from_numpy(batches[i])
        x, y = rows[:, :-1], rows[:, 1:]
        loss = F.cross_entropy(plain(x).view(-1, cfg.model.vocab_size), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    while (request := conn.recv()) is not None:
        first, n = request
        t = time.perf_counter()
        losses = [step(i) for i in range(first, first + n)]
        conn.send((losses, time.perf_counter() - t))


def bench_shape(name, shape, data, steps, warmup, attention="auto"):
    L, H, D, T, B = shape
    cfg = shakespeare_char().to_dict()
    cfg["model"].update(n_layer=L, n_head=H, d_model=D, seq_len=T, vocab_size=data.tokenizer.vocab_size, dropout=0.0,
                        attention=attention, qk_norm=False)  # the plain loop's Llama block
    cfg["train"].update(batch_size=B, max_seconds=None, max_steps=10_000, precision="auto", compile=True)
    cfg["schedule"].update(name="constant", warmup_steps=0)
    cfg["optim"].update(name="adamw", grad_clip=1.0)  # the plain loop's optimizer
    cfg = build_config(cfg)

    trainer = Trainer(cfg, data, run_dir="/tmp/trainlab-bench", log=lambda s: None)
    windows = trainer.task.windows  # the trainer's own batches, in its order
    batches = np.stack([windows.gather(windows.starts(np.arange(i * B, i * B + B))) for i in range(warmup + steps)])
    ctx = mp.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    worker = ctx.Process(target=plain_worker, args=(child_conn, cfg.to_dict(), split_fused(trainer.model.state_dict()),
                                                    batches, torch.get_num_threads()), daemon=True)
    worker.start()

    def plain(first, n):
        conn.send((first, n))
        return conn.recv()

    try:
        losses_t = [trainer.train_step()["loss"] for _ in range(warmup)]  # includes torch.compile's warm-up
        losses_p, _ = plain(0, warmup)
        tok = B * T * steps
        results = {"trainlab": [], "plain": []}
        for _ in range(2):  # interleave to even out drift on a shared machine
            t = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            results["trainlab"].append(tok / (time.perf_counter() - t))
            results["plain"].append(tok / plain(warmup, steps)[1])
    finally:
        conn.send(None)
        worker.join(timeout=60)
    return cfg, trainer, max(results["trainlab"]), max(results["plain"]), losses_t, losses_p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--shapes", default="small,large")
    ap.add_argument("--attention", default="auto", choices=["auto", "sdpa", "math"],
                    help="trainlab's attention kernel (model.attention); auto picks math for bf16 on a CPU")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    cfg = shakespeare_char()
    data = prepare(cfg.data, 256, log=lambda s: None)
    precision = hardware.resolve_precision("auto", torch.device("cpu"))
    peak32 = matmul_peak(torch.float32)
    peak_run = matmul_peak(torch.bfloat16) if precision == "bf16" else peak32
    print(f"cpu: {hardware.cpu_name()} | threads {torch.get_num_threads()} | bf16 fast path: "
          f"{hardware.cpu_has_fast_bf16()} | trainlab precision: {precision}")
    print(f"matmul peak: fp32 {peak32 / 1e9:.0f} GFLOP/s" +
          (f", bf16 {peak_run / 1e9:.0f} GFLOP/s" if precision == "bf16" else ""))
    print(f"{'shape':8s} {'params':>8s} {'trainlab tok/s':>15s} {'plain fp32 tok/s':>17s} {'ratio':>6s} "
          f"{'MFU trainlab':>13s} {'MFU plain':>10s}  first losses (trainlab / plain)")
    for name in args.shapes.split(","):
        cfg, trainer, t_tl, t_pl, lt, lp = bench_shape(name, SHAPES[name], data, args.steps, args.warmup, args.attention)
        fpt = trainer.model.flops_per_token()
        mfu_t, mfu_p = t_tl * fpt / peak_run, t_pl * fpt / peak32
        close = max(abs(a - b) for a, b in zip(lt, lp))
        print(f"{name:8s} {trainer.model.num_params() / 1e6:7.2f}M {t_tl:15,.0f} {t_pl:17,.0f} {t_tl / t_pl:5.2f}x "
              f"{100 * mfu_t:12.1f}% {100 * mfu_p:9.1f}%  "
              f"{' '.join(f'{a:.3f}' for a in lt)} / {' '.join(f'{b:.3f}' for b in lp)} (max diff {close:.1e})")


if __name__ == "__main__":
    main()
