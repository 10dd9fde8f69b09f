"""Forecasting candles over the codes of a frozen series tokenizer (the Kronos predictor).

A run names a trained series_tokenizer run (`series.tokenizer_run`); its best checkpoint is copied into
RUN/tokenizer/ and never trained. Each candle is one position: the embeddings of its coarse (s1) and
fine (s2) codes, its hour of day and its weekday. The model predicts the next candle's s1, then its s2
given that s1 (the true one in training, the sampled one in generation); the loss is the mean of the two
cross-entropies.

Windows are `lookback + pred_len + 1` rows, normalised with their first `lookback` rows, and encoded
with the tokenizer's encoder made causal, so a candle's codes depend on no later row. The split is
chronological: train, validation (`data.val_fraction`), test (`series.test_fraction`, the last rows);
training windows end before validation, validation windows lie inside it, and the test rows are left
to the walk-forward evaluation (`trainlab eval`).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import RunConfig, load_yaml
from trainlab.data import series
from trainlab.data.prepare import EpochOrder
from trainlab.errors import ConfigError, DataError, TrainlabError
from trainlab.findings import Finding
from trainlab.models.generate import apply_top_p, check_finite
from trainlab.tasks.base import Batch, Forward, GenerationRequest, LoadedRun, Reduce, Task, TokenMetrics, chunks
from trainlab.tasks.series_tokenizer import SeriesConfig

FROM_TOKENIZER = ("lookback", "features", "clip", "s1_bits", "s2_bits", "group_bits")
"""What a forecaster takes from its tokenizer run: the codes' shape and how windows are normalised."""
EVAL_FILE = "forecast_eval.json"


# -- the frozen tokenizer ------------------------------------------------------------------------------------
@dataclass
class FrozenTokenizer:
    """A series tokenizer's weights and settings, its encoder causal."""

    cfg: RunConfig
    model: nn.Module
    path: Path  # the run (or RUN/tokenizer/) it was read from

    @property
    def s(self) -> SeriesConfig:
        return self.cfg.series

    def codes(self, norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s1 ids, s2 ids), each (N, T), of normalised windows (N, T, features), encoded causally."""
        s1, s2 = [], []
        with torch.no_grad():
            for part in chunks(np.arange(len(norm)), 256):
                _, _, bits = self.model.encode(torch.from_numpy(norm[part].astype(np.float32)))
                weights = 1 << torch.arange(bits.shape[-1])
                s1.append((bits[..., :self.s.s1_bits] * weights[:self.s.s1_bits]).sum(-1).numpy())
                s2.append((bits[..., self.s.s1_bits:] * weights[:self.s.s2_bits]).sum(-1).numpy())
        return np.concatenate(s1).astype(np.int64), np.concatenate(s2).astype(np.int64)

    def decode(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Normalised candles (N, T, features) from code ids (N, T); at most the tokenizer's window at once
        (the last steps), so the decoder sees sequences as long as it was trained on."""
        keep = min(s1.shape[1], self.s.window)
        s1, s2 = s1[:, -keep:], s2[:, -keep:]
        bits = torch.cat([(s1[..., None] >> torch.arange(self.s.s1_bits)) & 1,
                          (s2[..., None] >> torch.arange(self.s.s2_bits)) & 1], dim=-1).float()
        codes = (2 * bits - 1) / math.sqrt(self.s.s1_bits + self.s.s2_bits)
        with torch.no_grad():
            return self.model.decode(codes)


def _checkpoint_weights(run: Path) -> Path:
    for where in (run / "model.safetensors", run / "checkpoints" / "best" / "model.safetensors",
                  run / "checkpoints" / "last" / "model.safetensors"):
        if where.is_file():
            return where
    raise ConfigError(f"series.tokenizer_run '{run}' has no checkpoint (checkpoints/best or last); "
                      f"train one with: trainlab train --preset kronos-btc --run-dir {run}")


def load_tokenizer(cls_cfg: type[RunConfig], run: Path, max_len: int = 0) -> FrozenTokenizer:
    """The tokenizer run at `run` (a series_tokenizer run, or a forecaster's RUN/tokenizer/), with rotary
    tables long enough for `max_len` steps."""
    from safetensors.torch import load_file

    from trainlab.models.series import SeriesTokenizer as Model

    run = Path(run).expanduser()
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"series.tokenizer_run '{run}' is not a run directory (no config.yaml); train a "
                          f"tokenizer with: trainlab train --preset kronos-btc")
    cfg = cls_cfg.build(load_yaml(run / "config.yaml"))
    if cfg.task != "series_tokenizer":
        raise ConfigError(f"series.tokenizer_run '{run}' is a {cfg.task} run, not a series_tokenizer run "
                          f"(trainlab train --preset kronos-btc makes one)")
    model = Model(cfg.model.model_copy(update={"seq_len": max(cfg.model.seq_len, max_len)}), cfg.series,
                  len(cfg.series.features))
    try:
        model.load_weights(load_file(str(_checkpoint_weights(run))))
    except (ValueError, RuntimeError, OSError):
        raise ConfigError(f"the checkpoint of series.tokenizer_run '{run}' does not fit its config.yaml") from None
    model.causal_encoder(True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FrozenTokenizer(cfg, model, run)


# -- the data --------------------------------------------------------------------------------------------------
@dataclass
class ForecastData:
    candles: series.Candles
    tokenizer: FrozenTokenizer
    s: SeriesConfig  # the run's series settings with the tokenizer's filled in
    val_start: int  # first validation row
    test_start: int  # first test row
    hour: np.ndarray
    wday: np.ndarray
    train_starts: np.ndarray
    val_starts: np.ndarray
    codes: dict[int, tuple[np.ndarray, np.ndarray]]  # window start -> (s1, s2) ids of its rows

    @property
    def rows(self) -> int:
        return self.s.lookback + self.s.pred_len + 1

    def encode(self, starts: np.ndarray) -> None:
        """Codes of the windows at these starts (each normalised with its own lookback), kept."""
        todo = np.array([int(i) for i in starts if int(i) not in self.codes], dtype=np.int64)
        if not len(todo):
            return
        raw = np.stack([self.candles.values[i:i + self.rows] for i in todo])
        s1, s2 = self.tokenizer.codes(series.normalise(raw, self.s.lookback, self.s.clip)[0])
        for j, start in enumerate(todo):
            self.codes[int(start)] = (s1[j], s2[j])


def split_rows(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(first validation row, first test row) of n rows."""
    return int(round(n * (1 - val_fraction - test_fraction))), int(round(n * (1 - test_fraction)))


def with_tokenizer(cfg: RunConfig, tok: FrozenTokenizer) -> RunConfig:
    """The config with the tokenizer's lookback, features and code sizes, and the model's context."""
    take = {k: getattr(tok.s, k) for k in FROM_TOKENIZER}
    return cfg.updated({"series": take, "model": {"seq_len": take["lookback"] + cfg.series.pred_len}})


def _check_after_tokenizer(cfg: RunConfig, tok: FrozenTokenizer, candles: series.Candles, val_start: int) -> None:
    """On the tokenizer's own file, validation and test must lie after the rows the tokenizer trained on."""
    same = tok.cfg.data.source == cfg.data.source
    if not same:
        try:
            same = series.source_path(tok.cfg.data).resolve() == candles.path.resolve()
        except TrainlabError:
            same = False
    tok_end = int(round(len(candles.values) * (1 - tok.cfg.data.val_fraction)))
    if same and val_start < tok_end:
        raise ConfigError(f"the forecaster's validation starts at row {val_start}, inside the rows its tokenizer "
                          f"trained on (to row {tok_end}); raise data.val_fraction + series.test_fraction to at "
                          f"least the tokenizer's data.val_fraction ({tok.cfg.data.val_fraction})")


def load_data(cfg: RunConfig, tok: Optional[FrozenTokenizer] = None, whole: bool = False) -> ForecastData:
    """The run's candles and codes; `whole`: another file scored from end to end (no split is checked)."""
    if tok is None:
        if not cfg.series.tokenizer_run:
            raise ConfigError("series.tokenizer_run is not set: train a tokenizer first (trainlab train --preset "
                              "kronos-btc --run-dir runs/tok) and pass --set series.tokenizer_run=runs/tok")
        tok = load_tokenizer(type(cfg), Path(cfg.series.tokenizer_run), cfg.model.seq_len + 1)
    cfg = with_tokenizer(cfg, tok)
    s = cfg.series
    candles = series.read_candles(series.source_path(cfg.data), s.features, s.columns, strict=cfg.data.strict)
    if candles.features != list(s.features):
        raise DataError(f"'{candles.path}' gives the features {candles.features}; the tokenizer reads {s.features}")
    n = len(candles.values)
    val_start, test_start = split_rows(n, cfg.data.val_fraction, s.test_fraction)
    rows = s.lookback + s.pred_len + 1
    train = np.arange(0, val_start - rows + 1, s.stride, dtype=np.int64)
    val = np.arange(val_start, test_start - rows + 1, s.stride, dtype=np.int64)
    if whole and n < s.lookback + 1:
        raise DataError(f"'{candles.path}' has {n} rows; a forecast needs series.lookback = {s.lookback} rows "
                        f"and one to score")
    if not whole:
        _check_after_tokenizer(cfg, tok, candles, val_start)
    for part, starts, have in (("train", train, val_start), ("validation", val, test_start - val_start)):
        if not whole and not len(starts):
            raise DataError(f"the {part} rows of '{cfg.data.source}' ({have}) are fewer than one window of "
                            f"lookback + pred_len + 1 = {rows} rows")
    hour, wday = candles.calendar()
    return ForecastData(candles, tok, s, val_start, test_start, hour, wday, train, val, {})


# -- the task --------------------------------------------------------------------------------------------------
class SeriesForecast(Task):
    name = "series_forecast"
    sections = {"series": SeriesConfig}
    forecasts = True  # `trainlab forecast` and the walk-forward `trainlab eval` apply

    def __init__(self, cfg: RunConfig, data: ForecastData, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        self.train_starts = data.train_starts
        self.order = EpochOrder(len(self.train_starts), cfg.train.seed)
        val = data.val_starts
        count = min(len(val), cfg.train.eval_batches * cfg.train.batch_size * world)
        self.val_starts = val[np.linspace(0, len(val) - 1, count).astype(np.int64)]
        data.encode(self.train_starts)
        data.encode(self.val_starts)

    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> ForecastData:
        return load_data(cfg)

    @classmethod
    def configure(cls, cfg: RunConfig, data: ForecastData) -> RunConfig:
        return with_tokenizer(cfg, data.tokenizer)

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.series import SeriesForecaster

        return SeriesForecaster(cfg.model, cfg.series)

    @property
    def examples_per_epoch(self) -> int:
        return len(self.train_starts)

    @classmethod
    def example_tokens(cls, cfg: RunConfig) -> tuple[float, float]:
        """Every position of a window predicts the next candle's codes."""
        return float(cfg.model.seq_len), float(cfg.model.seq_len)

    def rows_batch(self, starts: np.ndarray) -> Batch:
        d = self.data
        s1 = np.stack([d.codes[int(i)][0] for i in starts])
        s2 = np.stack([d.codes[int(i)][1] for i in starts])
        idx = starts[:, None] + np.arange(d.rows)[None]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        return {"input": t(s1[:, :-1]), "s2": t(s2[:, :-1]), "hour": t(d.hour[idx][:, :-1]),
                "wday": t(d.wday[idx][:, :-1]), "next_s1": t(s1[:, 1:]), "next_s2": t(s2[:, 1:])}

    def batch(self, indices: np.ndarray) -> Batch:
        """Windows in a seeded order per epoch: a pure function of (seed, index)."""
        return self.rows_batch(self.train_starts[self.order.ids(indices)])

    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        l1, l2 = forward(batch["input"], batch["s2"], batch["hour"], batch["wday"], batch["next_s1"])
        ce1 = F.cross_entropy(l1.flatten(0, 1), batch["next_s1"].flatten())
        ce2 = F.cross_entropy(l2.flatten(0, 1), batch["next_s2"].flatten())
        with torch.no_grad():
            acc1 = (l1.argmax(-1) == batch["next_s1"]).float().mean()
            acc2 = (l2.argmax(-1) == batch["next_s2"]).float().mean()
        return (ce1 + ce2) / 2, {"loss_s1": ce1.detach(), "loss_s2": ce2.detach(), "acc_s1": acc1, "acc_s2": acc2}

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        metrics = [TokenMetrics(), TokenMetrics()]
        starts = self.val_starts if tokens is None else np.asarray(tokens)
        self.data.encode(starts)
        for part in chunks(starts[self.rank::self.world], self.cfg.train.batch_size):
            b = self.rows_batch(part)
            with autocast():
                l1, l2 = forward(b["input"], b["s2"], b["hour"], b["wday"], b["next_s1"])
            metrics[0].add(l1.flatten(0, 1), b["next_s1"].flatten())
            metrics[1].add(l2.flatten(0, 1), b["next_s2"].flatten())
        m1, m2 = (m.finish(reduce) for m in metrics)
        loss = (m1["loss"] + m2["loss"]) / 2
        row = {"loss": loss, "ppl": math.exp(min(loss, 700))}
        for name, m in (("s1", m1), ("s2", m2)):
            row.update({f"loss_{name}": m["loss"], f"ppl_{name}": m["ppl"], f"acc_{name}": m["acc"],
                        f"top5_{name}": m["top5"]})
        return row

    # -- the run directory ------------------------------------------------------------------------------
    def save_files(self, run_dir: Path) -> None:
        """The frozen tokenizer (config and weights) in RUN/tokenizer/, and where the split lies."""
        tok, d = self.data.tokenizer, self.data
        here = run_dir / "tokenizer"
        if tok.path.resolve() != here.resolve():
            staging = run_dir / "tokenizer.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            shutil.copyfile(tok.path / "config.yaml", staging / "config.yaml")
            shutil.copyfile(_checkpoint_weights(tok.path), staging / "model.safetensors")
            (staging / "source.json").write_text(json.dumps({"tokenizer_run": str(tok.path)}, indent=1))
            shutil.rmtree(here, ignore_errors=True)
            staging.rename(here)
        c = d.candles
        (run_dir / "series.json").write_text(json.dumps(
            {"source": str(c.path), "features": c.features, "rows": len(c.values), "first_timestamp": c.timestamps[0],
             "first_val_row": d.val_start,
             "first_test_row": d.test_start, "first_val_timestamp": c.timestamps[d.val_start],
             "first_test_timestamp": c.timestamps[d.test_start], "train_windows": len(self.train_starts),
             "val_windows": len(d.val_starts), "notes": c.notes}, indent=1))

    def describe(self) -> str:
        d, c = self.data, self.data.candles
        return (f"{len(c.values):,} rows x {len(c.features)} features | {len(self.train_starts):,} train windows "
                f"(rows before {c.timestamps[d.val_start]}), {len(d.val_starts):,} validation windows, test from "
                f"{c.timestamps[d.test_start]} | tokenizer {d.tokenizer.path} (frozen, encoded causally)"
                + "".join(f" | {note}" for note in c.notes)
                + ("" if d.tokenizer.s.causal else
                   " | WARNING: the tokenizer was trained with its encoder seeing whole windows (series.causal="
                   "false), so the causal codes a forecaster needs are not the ones it learned; retrain it with "
                   "--set series.causal=true"))

    # -- a finished run -------------------------------------------------------------------------------------
    @classmethod
    def eval_config(cls, cfg: RunConfig, run_dir: Path, data_path: Optional[Path]) -> RunConfig:
        tree: dict[str, Any] = {"series": {"tokenizer_run": str(Path(run_dir) / "tokenizer")}}
        if data_path is not None:
            tree["data"] = {"source": str(data_path)}
        return cfg.updated(tree)

    doctor_checks = frozenset()

    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """A forecast from the last row of the run's data: the median close and its 80% interval for the next
        `--max-new-tokens` steps (at most 24; `trainlab forecast` writes the full table and plot)."""
        if request.prompt:
            raise ConfigError("--prompt applies to text runs; a forecaster's generate forecasts from the last row of "
                              "its data (`trainlab forecast --at` starts from another)")
        tok = load_tokenizer(type(run.cfg), run.run_dir / "tokenizer", run.cfg.model.seq_len + 25)
        data = load_data(cls.eval_config(run.cfg, run.run_dir, None), tok)
        horizon = min(request.max_new_tokens, 24)
        at = len(data.candles.values) - 1
        gen = torch.Generator().manual_seed(request.seed or 0)
        paths = sample_closes(run.model, data, np.array([at]), horizon, 100, request.temperature, request.top_p,
                              gen)[0]
        q = np.quantile(paths, [0.1, 0.5, 0.9], axis=0)
        lines = [f"forecast from {data.candles.timestamps[at]} (close "
                 f"{data.candles.values[at, data.s.features.index('close')]:g}), 100 paths at temperature "
                 f"{request.temperature:g}:"]
        lines += [f"  +{h + 1:>2}: median {q[1, h]:.2f}  80% [{q[0, h]:.2f}, {q[2, h]:.2f}]" for h in range(horizon)]
        return "\n".join(lines)

    @classmethod
    def doctor_findings(cls, run_dir: Path) -> tuple[list[Finding], list[dict[str, Any]]]:
        """`no_better_than_naive` from the walk-forward evaluation (RUN/forecast_eval.json); without one, the
        check is listed as not run, with the command that makes it."""
        return naive_finding(Path(run_dir))


# -- sampling ----------------------------------------------------------------------------------------------------
def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One id per row from logits (N, V): softmax at the temperature, cut to the top-p nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    # the nucleus as text generation cuts it: the most likely id always stays (top_p 0 is greedy)
    logits = apply_top_p(logits.float() / temperature, top_p)
    check_finite(logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


def future_calendar(data: ForecastData, at: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Hour and weekday of rows at+1 .. at+horizon, stepped on from row `at` by the median spacing of the
    lookback's rows (no row after `at` is read)."""
    c = data.candles
    if c.times is None:
        zeros = np.zeros(horizon, dtype=np.int64)
        return zeros, zeros
    seen = c.times[max(0, at - data.s.lookback + 1):at + 1]
    step = float(np.median(np.diff(seen))) if len(seen) > 1 else 3600.0
    seconds = np.floor(c.times[at] + step * np.arange(1, horizon + 1)).astype(np.int64)
    return (seconds // 3600) % 24, ((seconds // 86400) + 3) % 7


@torch.no_grad()
def sample_paths(model: nn.Module, data: ForecastData, origins: np.ndarray, horizon: int, n: int,
                 temperature: float, top_p: float, gen: torch.Generator) -> np.ndarray:
    """Sampled candles (origins, n, horizon, features) in price units after each origin row (the last row
    observed). Only the `lookback` rows up to the origin are read: they alone set the normalisation and the
    codes. The decoded path is anchored to the last observed candle: the tokenizer's reconstruction error
    at the origin is taken off every step."""
    from trainlab.models.gpt import KVCache

    s, L = data.s, data.s.lookback
    raw = np.stack([data.candles.values[o - L + 1:o + 1] for o in origins])
    norm, mean, std = series.normalise(raw, L, s.clip)
    s1, s2 = data.tokenizer.codes(norm)
    idx = origins[:, None] + np.arange(-L + 1, 1)[None]
    future = [future_calendar(data, int(o), horizon) for o in origins]
    hours = np.concatenate([data.hour[idx], np.stack([f[0] for f in future])], 1)
    wdays = np.concatenate([data.wday[idx], np.stack([f[1] for f in future])], 1)
    B, cfg = len(origins), model.cfg
    rep = lambda a: torch.from_numpy(np.repeat(a, n, axis=0))  # noqa: E731  (each origin's rows n times)
    s1_all, s2_all, hour, wday = rep(s1), rep(s2), rep(hours), rep(wdays)
    model.extend(L + horizon)
    cache = KVCache.empty(cfg, B, L + horizon, "cpu", torch.float32)
    h = model.hidden(torch.from_numpy(s1), torch.from_numpy(s2), torch.from_numpy(hours[:, :L]),
                     torch.from_numpy(wdays[:, :L]), cache)[:, -1]
    cache.keys = [k.repeat_interleave(n, 0) for k in cache.keys]
    cache.values = [v.repeat_interleave(n, 0) for v in cache.values]
    h = h.repeat_interleave(n, 0)
    new1, new2 = [], []
    for step in range(horizon):
        a = _sample(model.head_s1(h), temperature, top_p, gen)
        b = _sample(model.logits_s2(h, a), temperature, top_p, gen)
        new1.append(a), new2.append(b)
        if step + 1 < horizon:
            h = model.hidden(a[:, None], b[:, None], hour[:, L + step:L + step + 1], wday[:, L + step:L + step + 1],
                             cache)[:, -1]
    dec = data.tokenizer.decode(torch.cat([s1_all, torch.stack(new1, 1)], 1),
                                torch.cat([s2_all, torch.stack(new2, 1)], 1)).double().numpy()
    dec = dec.reshape(B, n, dec.shape[1], -1) * std[:, None] + mean[:, None]
    offset = raw[:, None, -1] - dec[:, :, -horizon - 1]  # the reconstruction's error at the origin
    return dec[:, :, -horizon:] + offset[:, :, None]


def sample_closes(model: nn.Module, data: ForecastData, origins: np.ndarray, horizon: int, n: int,
                  temperature: float, top_p: float, gen: torch.Generator, chunk: int = 16) -> np.ndarray:
    """The close of sampled paths (origins, n, horizon), a few origins at a time."""
    close = data.s.features.index("close")
    out = [sample_paths(model, data, part, horizon, n, temperature, top_p, gen)[..., close]
           for part in chunks(np.asarray(origins), chunk)]
    return np.concatenate(out)


# -- the walk-forward evaluation, as the doctor and the report read it ------------------------------------------
METRICS = ("mae", "rmse", "mae_rel", "direction_hit", "crps", "coverage_80", "coverage_90", "vol_mae")


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def eval_table(result: dict[str, Any]) -> str:
    """forecast_eval.json as a markdown table: per horizon, the model and each baseline, then the tests."""
    lines = ["| h | forecaster | " + " | ".join(METRICS) + " | mae 95% CI |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for h, block in result["horizons"].items():
        for name, m in [("model", block["model"]), *block["baselines"].items()]:
            ci = m.get("mae_ci")
            lines.append(f"| {h} | {name} | " + " | ".join(_cell(m.get(k)) for k in METRICS) + " | "
                         + (f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-") + " |")
    lines += ["", "| h | DM stat (abs error vs random_walk) | p | DM stat (CRPS vs gaussian_vol) | p |",
              "|---|---|---|---|---|"]
    for h, block in result["horizons"].items():
        t = block["tests"]
        lines.append(f"| {h} | {_cell(t['dm_stat'])} | {_cell(t['dm_p'], 3)} | {_cell(t['dm_crps_stat'])} | "
                     f"{_cell(t['dm_crps_p'], 3)} |")
    return "\n".join(lines)


def beats_naive(result: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """The horizons (and how) at which the forecaster beats a naive baseline at Diebold-Mariano p < alpha."""
    wins = []
    for h, block in result["horizons"].items():
        t = block["tests"]
        if t.get("dm_p") is not None and t["dm_p"] < alpha:
            wins.append(f"h={h}: MAE below the random walk's (p={t['dm_p']:.3g})")
        if t.get("dm_crps_p") is not None and t["dm_crps_p"] < alpha:
            wins.append(f"h={h}: CRPS below gaussian_vol's (p={t['dm_crps_p']:.3g})")
    return wins


def naive_finding(run_dir: Path) -> tuple[list[Finding], list[dict[str, Any]]]:
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return [], [{"id": "no_better_than_naive", "ran": False,
                     "reason": f"no walk-forward evaluation yet: run `trainlab eval {run_dir}` (writes {EVAL_FILE})"}]
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        wins = beats_naive(result)
        table = eval_table(result)
    except (ValueError, KeyError, TypeError):
        return [], [{"id": "no_better_than_naive", "ran": False,
                     "reason": f"{path} is unreadable: run `trainlab eval {run_dir}` again"}]
    check = [{"id": "no_better_than_naive", "ran": True, "reason": "; ".join(wins) or "no horizon beats naive"}]
    if wins:
        return [], check
    horizons = ", ".join(result["horizons"])
    return [Finding(
        "no_better_than_naive", "high",
        f"at no horizon ({horizons}) does the forecaster beat the random walk on MAE or gaussian_vol on CRPS at "
        f"Diebold-Mariano p < 0.05, however far its training loss fell (walk-forward on the test period, "
        f"{path}):\n{table}",
        "do not act on these forecasts: the last price (or a Gaussian with the trailing volatility) forecasts as "
        "well. Try more data or context (series.lookback in the tokenizer), a longer training budget, or accept "
        "that these candles hold little predictable signal at these horizons.",
        data={"horizons": result["horizons"]})], check
