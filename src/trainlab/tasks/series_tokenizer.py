"""Kronos-style series tokenizer: reconstruct normalised candle windows through binary codes.

loss = (mse(pre) + mse(all) + quantiser loss) / 2, each part in the train rows. Validation adds the
reconstruction MSE from all bits (`mse`, normalised units), codebook usage and perplexity per level,
and a baseline: uniform scalar quantisation of each feature with the same bits per time step
(`mse_uniform`, and `mse_ratio` = mse_uniform / mse: above 1 the codes beat the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import RunConfig, build_config
from trainlab.data import series
from trainlab.tasks.base import Batch, Forward, Reduce, Task, chunks


def uniform_bits(total_bits: int, n_features: int) -> list[int]:
    """The time step's bits spread over the features as evenly as they go (the first get the remainder)."""
    return [total_bits // n_features + (1 if f < total_bits % n_features else 0) for f in range(n_features)]


def uniform_quantise(x: np.ndarray | torch.Tensor, bits: list[int], clip: float):
    """Each feature (last axis) on 2^bits equal cells over [-clip, clip], replaced by its cell's centre."""
    lib = torch if isinstance(x, torch.Tensor) else np
    levels = np.array([2.0 ** b for b in bits])
    step = 2 * clip / levels
    if lib is torch:
        levels, step = torch.as_tensor(levels, dtype=x.dtype), torch.as_tensor(step, dtype=x.dtype)
        cell = torch.minimum(torch.floor((x + clip) / step).clamp(min=0), levels - 1)
    else:
        cell = np.minimum(np.maximum(np.floor((x + clip) / step), 0), levels - 1)
    return (cell + 0.5) * step - clip


class SeriesTokenizer(Task):
    name = "series_tokenizer"

    def __init__(self, cfg: RunConfig, data: series.SeriesData, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        self.train_starts = data.starts("train")
        val = data.starts("val")
        count = min(len(val), cfg.train.eval_batches * cfg.train.batch_size * world)
        self.val_starts = val[np.linspace(0, len(val) - 1, count).astype(np.int64)]
        self.bits = uniform_bits(cfg.series.s1_bits + cfg.series.s2_bits, data.n_features)

    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> series.SeriesData:
        return series.load(cfg.data, cfg.series)

    @classmethod
    def configure(cls, cfg: RunConfig, data: series.SeriesData) -> RunConfig:
        tree = cfg.to_dict()
        tree["model"]["seq_len"] = cfg.series.window
        tree["series"]["features"] = data.candles.features
        return build_config(tree)

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.series import SeriesTokenizer as Model

        return Model(cfg.model, cfg.series, len(cfg.series.features))

    @property
    def examples_per_epoch(self) -> int:
        return len(self.train_starts)

    @property
    def tokens_per_example(self) -> int:
        return self.cfg.series.window

    # -- batches --------------------------------------------------------------------------------------
    def windows(self, starts: np.ndarray) -> np.ndarray:
        s = self.cfg.series
        raw = np.stack([self.data.window(int(i)) for i in starts])
        return series.normalise(raw, s.lookback, s.clip)[0].astype(np.float32)

    def _order(self, epoch: int) -> np.ndarray:
        if getattr(self, "_epoch", None) != epoch:
            self._perm = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.train_starts))
            self._epoch = epoch
        return self._perm

    def batch(self, indices: np.ndarray) -> Batch:
        """Windows in a seeded order per epoch; augmentation drawn from (seed, index) alone, so a resumed
        run sees exactly the batches an uninterrupted one would."""
        s, n = self.cfg.series, len(self.train_starts)
        starts, rngs = np.empty(len(indices), dtype=np.int64), []
        for j, i in enumerate(indices):
            epoch, pos = divmod(int(i), n)
            rng = np.random.default_rng([self.cfg.train.seed, int(i), 1])
            start = int(self.train_starts[self._order(epoch)[pos]])
            if s.time_shift:
                start = int(np.clip(start + rng.integers(-s.time_shift, s.time_shift + 1), 0, self.data.split - s.window))
            starts[j] = start
            rngs.append(rng)
        target = self.windows(starts)
        inputs = target.copy()
        for x, rng in zip(inputs, rngs):
            if s.noise_std:
                x += rng.normal(0.0, s.noise_std, x.shape).astype(np.float32)
            if s.feature_dropout:
                x[:, rng.random(x.shape[-1]) < s.feature_dropout] = 0.0
        return {"input": torch.from_numpy(inputs).to(self.device), "target": torch.from_numpy(target).to(self.device)}

    # -- loss and evaluation ----------------------------------------------------------------------------
    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pre, full, quant, _ = forward(batch["input"])
        mse_pre, mse_all = F.mse_loss(pre, batch["target"]), F.mse_loss(full, batch["target"])
        loss = (mse_pre + mse_all + quant) / 2
        return loss, {"loss_pre": mse_pre.detach(), "loss_all": mse_all.detach(), "loss_quant": quant.detach()}

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        s = self.cfg.series
        # squared errors (coarse, all bits, uniform baseline), values, quantiser loss x windows, windows
        sums = torch.zeros(6, dtype=torch.float64)
        codes: list[list[np.ndarray]] = [[], []]
        starts = self.val_starts if tokens is None else np.asarray(tokens)  # window starts, from `eval --data`
        for part in chunks(starts[self.rank::self.world], self.cfg.train.batch_size):
            x = torch.from_numpy(self.windows(part)).to(self.device)
            with autocast():
                pre, full, quant, bits = forward(x)
            baseline = uniform_quantise(x.double(), self.bits, s.clip)
            sums += torch.tensor([float((pre - x).pow(2).sum()), float((full - x).pow(2).sum()),
                                  float((baseline - x).pow(2).sum()), x.numel(), float(quant) * len(part), len(part)],
                                 dtype=torch.float64)
            weights = 1 << torch.arange(bits.shape[-1], device=bits.device)
            codes[0].append((bits[..., :s.s1_bits] * weights[:s.s1_bits]).sum(-1).flatten().cpu().numpy())
            codes[1].append((bits[..., s.s1_bits:] * weights[:s.s2_bits]).sum(-1).flatten().cpu().numpy())
        se_pre, se_all, se_uniform, values, quant_sum, windows = reduce(sums).tolist()
        mse_pre, mse_all, mse_uniform = (v / max(values, 1) for v in (se_pre, se_all, se_uniform))
        quant = quant_sum / max(windows, 1)
        row = {"loss": (mse_pre + mse_all + quant) / 2, "mse_pre": mse_pre, "mse_all": mse_all, "mse": mse_all,
               "loss_quant": quant, "mse_uniform": mse_uniform, "mse_ratio": mse_uniform / max(mse_all, 1e-12)}
        # codebook statistics over every process's codes: each fills its own slot of a shared buffer
        # (padded with -1) and the sum over processes gathers them
        slot = -(-len(starts) // self.world) * s.window
        for level, name, n_bits in ((0, "s1", s.s1_bits), (1, "s2", s.s2_bits)):
            if not n_bits:
                continue
            gathered = torch.zeros(self.world * slot, dtype=torch.float64)
            mine = gathered[self.rank * slot:(self.rank + 1) * slot]
            mine.fill_(-1)
            if codes[level]:
                local = torch.from_numpy(np.concatenate(codes[level])).double()
                mine[:len(local)] = local
            ids = reduce(gathered).numpy()
            ids = ids[ids >= 0]
            if not len(ids):
                continue
            _, counts = np.unique(ids, return_counts=True)
            p = counts / counts.sum()
            row[f"codebook_usage_{name}"] = len(counts) / min(len(ids), 2 ** n_bits)
            row[f"codebook_perplexity_{name}"] = float(np.exp(-(p * np.log(p)).sum()))
        return row

    # -- the run directory ------------------------------------------------------------------------------
    def save_files(self, run_dir: Path) -> None:
        c = self.data.candles
        (run_dir / "series.json").write_text(json.dumps(
            {"source": str(c.path), "features": c.features, "rows": len(c.values), "first_val_row": self.data.split,
             "train_windows": len(self.train_starts), "val_windows": len(self.data.starts("val"))}, indent=1))

    def describe(self) -> str:
        c = self.data.candles
        return (f"{len(c.values):,} rows x {len(c.features)} features ({', '.join(c.features)}) | "
                f"{len(self.train_starts):,} train windows, {len(self.data.starts('val')):,} val windows of "
                f"{self.cfg.series.window} steps")


def reconstruct(run_dir: Path, index: int = 0, out: Path | None = None) -> dict[str, Any]:
    """Reconstruct validation window `index` of a series run and plot it against the real candles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainlab.inference import load_run

    run = load_run(run_dir)
    cfg, s = run.cfg, run.cfg.series
    data = series.load(cfg.data, s)
    starts = data.starts("val")
    start = int(starts[index % len(starts)])
    raw = data.window(start)
    norm, mean, std = series.normalise(raw, s.lookback, s.clip)
    with torch.no_grad():
        _, full, _, _ = run.model(torch.from_numpy(norm.astype(np.float32))[None])
    rec = full[0].double().numpy()
    mse = float(((rec - norm) ** 2).mean())
    back = rec * std + mean
    close = data.candles.features.index("close") if "close" in data.candles.features else 0
    out = Path(out or Path(run_dir) / f"reconstruction-{start}.png")
    fig, ax = plt.subplots(figsize=(9, 4))
    t = np.arange(len(raw))
    ax.plot(t, raw[:, close], label="real close", color="black")
    ax.plot(t, back[:, close], label="reconstructed close", color="tab:orange")
    if {"high", "low"} <= set(data.candles.features):
        hi, lo = data.candles.features.index("high"), data.candles.features.index("low")
        ax.fill_between(t, raw[:, lo], raw[:, hi], color="grey", alpha=0.25, label="real low-high")
    ax.axvline(s.lookback - 0.5, color="grey", linestyle=":", label="end of lookback")
    ax.set_title(f"validation window from {data.candles.timestamps[start]} (mse {mse:.4f}, normalised)")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {"plot": str(out), "window_start": data.candles.timestamps[start], "mse": mse,
            "mse_uniform": float(((uniform_quantise(norm, uniform_bits(s.s1_bits + s.s2_bits, data.n_features), s.clip)
                                   - norm) ** 2).mean())}
