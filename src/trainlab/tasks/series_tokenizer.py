"""Kronos-style series tokenizer: reconstruct normalised candle windows through binary codes.

loss = (mse(pre) + mse(all) + quantiser loss) / 2, each part in the train rows. Validation adds the
reconstruction MSE from all bits (`mse`, normalised units), codebook usage and perplexity per level,
and a baseline: uniform scalar quantisation of each feature with the same bits per time step
(`mse_uniform`, and `mse_ratio` = mse_uniform / mse: above 1 the codes beat the baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field

from trainlab.config import RunConfig, Section
from trainlab.data import series
from trainlab.data.prepare import EpochOrder
from trainlab.errors import ConfigError
from trainlab.tasks.base import Batch, Forward, GenerationRequest, LoadedRun, Reduce, Task, chunks


class SeriesConfig(Section):
    """Candle windows and the quantiser of the series tokenizer (task series_tokenizer)."""

    lookback: int = Field(90, ge=2)
    """Time steps of context in a window; they alone set the window's normalisation."""
    pred_len: int = Field(10, ge=0)
    """Time steps after the lookback in a window (normalised with the lookback's statistics)."""
    features: list[str] = Field(default_factory=lambda: ["open", "high", "low", "close", "volume", "amount"])
    """CSV columns the tokenizer encodes (amount is left out when a CSV has none)."""
    clip: float = Field(5.0, gt=0)
    """Normalised values are clipped to +-clip."""
    stride: int = Field(1, ge=1)
    """Steps between the starts of consecutive windows."""
    s1_bits: int = Field(10, ge=1, le=30)
    """Coarse bits per time step (binary spherical quantisation, first level)."""
    s2_bits: int = Field(10, ge=0, le=30)
    """Fine bits per time step (second level)."""
    commit_weight: float = Field(0.05, ge=0)
    """Weight of the commitment term (distance between encoding and its code)."""
    entropy_weight: float = Field(0.05, ge=0)
    """Weight of the entropy terms: per-sample entropy minus diversity_gamma x codebook entropy. The
    codebook term is subtracted, so the quantiser loss (and the total) can go negative."""
    diversity_gamma: float = Field(1.0, ge=0)
    """How strongly codebook usage is rewarded against per-sample confidence."""
    group_bits: int = Field(4, ge=1, le=8)
    """Bits per group in the factorised soft entropy (2^group_bits codes per group)."""
    noise_std: float = Field(0.0, ge=0)
    """Augmentation: Gaussian noise (normalised units) on training inputs."""
    feature_dropout: float = Field(0.0, ge=0, lt=1)
    """Augmentation: probability of zeroing a feature's column in a training input."""
    time_shift: int = Field(0, ge=0)
    """Augmentation: training windows start up to this many steps earlier or later."""
    causal: bool = False
    """The encoder attends only to earlier steps, so a candle's codes depend on no later row (what a
    forecaster reads; series_forecast always encodes this way)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """CSV columns by candle field, for names the aliases miss: {"timestamp": "Date", "volume": "VolumeFrom"}."""
    tokenizer_run: Optional[str] = None
    """series_forecast: the series_tokenizer run whose frozen codes it forecasts (no default; train one with
    `--preset kronos-btc`)."""
    test_fraction: float = Field(0.05, ge=0, lt=1)
    """series_forecast: the last rows held out for the walk-forward evaluation (validation is the
    data.val_fraction of rows just before them)."""
    season: Optional[int] = Field(None, ge=1)
    """series_forecast: steps in one season for the seasonal-naive baseline (default: 24 for hourly rows,
    7 for daily rows)."""

    @property
    def window(self) -> int:
        return self.lookback + self.pred_len



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
    sections = {"series": SeriesConfig}

    def __init__(self, cfg: RunConfig, data: series.SeriesData, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        self.train_starts = data.starts("train")
        self.order = EpochOrder(len(self.train_starts), cfg.train.seed)
        val = data.starts("val")
        count = min(len(val), cfg.train.eval_batches * cfg.train.batch_size * world)
        self.val_starts = val[np.linspace(0, len(val) - 1, count).astype(np.int64)]
        self.bits = uniform_bits(cfg.series.s1_bits + cfg.series.s2_bits, data.n_features)

    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> series.SeriesData:
        return series.load(cfg.data, cfg.series)

    @classmethod
    def configure(cls, cfg: RunConfig, data: series.SeriesData) -> RunConfig:
        return cfg.updated({"model": {"seq_len": cfg.series.window}, "series": {"features": data.candles.features}})

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.series import SeriesTokenizer as Model

        return Model(cfg.model, cfg.series, len(cfg.series.features))

    @property
    def examples_per_epoch(self) -> int:
        return len(self.train_starts)

    @classmethod
    def example_tokens(cls, cfg: RunConfig) -> tuple[float, float]:
        """Time steps of a window: all of them are reconstructed."""
        return float(cfg.series.window), float(cfg.series.window)

    # -- batches --------------------------------------------------------------------------------------
    def windows(self, starts: np.ndarray) -> np.ndarray:
        s = self.cfg.series
        raw = np.stack([self.data.window(int(i)) for i in starts])
        return series.normalise(raw, s.lookback, s.clip)[0].astype(np.float32)

    def batch(self, indices: np.ndarray) -> Batch:
        """Windows in a seeded order per epoch; augmentation drawn from (seed, index) alone, so a resumed
        run sees exactly the batches an uninterrupted one would."""
        s = self.cfg.series
        starts, rngs = np.empty(len(indices), dtype=np.int64), []
        for j, (i, which) in enumerate(zip(indices, self.order.ids(indices))):
            rng = np.random.default_rng([self.cfg.train.seed, int(i), 1])
            start = int(self.train_starts[which])
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

    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """A validation window reconstructed through the codes (`--seed` picks the window), against uniform
        quantisation at the same bits, and its plot."""
        if request.prompt:
            raise ConfigError("--prompt applies to text runs; a series tokenizer's generate reconstructs a validation "
                              "window (--seed picks which)")
        r = reconstruct(run, index=request.seed or 0)
        plot = f"plot: {r['plot']}" if r["plot"] else "plot: skipped, matplotlib is missing (pip install 'trainlab[plots]')"
        return (f"validation window from {r['window_start']}: reconstruction mse {r['mse']:.4f} (normalised units), "
                f"uniform scalar quantisation at the same bits {r['mse_uniform']:.4f}\n{plot}")

    def describe(self) -> str:
        c = self.data.candles
        return (f"{len(c.values):,} rows x {len(c.features)} features ({', '.join(c.features)}) | "
                f"{len(self.train_starts):,} train windows, {len(self.data.starts('val')):,} val windows of "
                f"{self.cfg.series.window} steps" + "".join(f" | {note}" for note in c.notes))


def reconstruct(run: LoadedRun, index: int = 0, out: Path | None = None) -> dict[str, Any]:
    """Reconstruct validation window `index` of a series run; with matplotlib (the `plots` extra), plot it
    against the real candles (`plot` is None without it)."""
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
    uniform = uniform_quantise(norm, uniform_bits(s.s1_bits + s.s2_bits, data.n_features), s.clip)
    result = {"plot": None, "window_start": data.candles.timestamps[start], "mse": mse,
              "mse_uniform": float(((uniform - norm) ** 2).mean())}
    try:
        import matplotlib
    except ImportError:
        return result
    matplotlib.use("Agg")
    out = Path(out or run.run_dir / f"reconstruction-{start}.png")
    _plot_reconstruction(data, raw, rec * std + mean, s.lookback, f"validation window from "
                         f"{data.candles.timestamps[start]} (mse {mse:.4f}, normalised)", out)
    return {**result, "plot": str(out)}


def _plot_reconstruction(data: series.SeriesData, raw: np.ndarray, back: np.ndarray, lookback: int, title: str,
                         out: Path) -> None:
    import matplotlib.pyplot as plt

    features = data.candles.features
    close = features.index("close") if "close" in features else 0
    fig, ax = plt.subplots(figsize=(9, 4))
    t = np.arange(len(raw))
    ax.plot(t, raw[:, close], label="real close", color="black")
    ax.plot(t, back[:, close], label="reconstructed close", color="tab:orange")
    if {"high", "low"} <= set(features):
        hi, lo = features.index("high"), features.index("low")
        ax.fill_between(t, raw[:, lo], raw[:, hi], color="grey", alpha=0.25, label="real low-high")
    ax.axvline(lookback - 0.5, color="grey", linestyle=":", label="end of lookback")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
