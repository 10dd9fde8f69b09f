"""A forecaster's finished run: sampled forecasts (`trainlab forecast`) and the walk-forward evaluation
against naive baselines (`trainlab eval` on a forecaster).

Calibration happens on the validation period only and is kept in RUN/calibration.json: the sampling
temperature that minimises the CRPS (relative to the random walk's MAE, over horizons 1, 6 and 24), then,
for each of the 80% and 90% central intervals, a scale of the samples' spread about their median: per step
ahead, the smallest scale under which the interval covers its nominal share of validation origins (a split-
conformal quantile, exact rather than searched), smoothed across steps as a power law in the step. Each
interval is widened by its own level's scale, so a sampled distribution whose centre and tails are off by
different amounts is still calibrated at both levels; the paths themselves (their mean, the CRPS, the 50%
band) are widened by the geometric mean of the two. The test period is never looked at to choose anything.
(Against one scale fitted to both levels at once, the per-level smoothed scales halved the worst coverage
miss when fitted on one half of the validation period and scored on the other: 2.6 and 3.7 points against
3.6 and 5.9.)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainlab import scores
from trainlab.data.series import parse_time
from trainlab.errors import TrainlabError
from trainlab.files import atomic_write, staged_dir
from trainlab.inference import load_run
from trainlab.tasks import task_class
from trainlab.tasks.base import LoadedRun

HORIZONS = (1, 6, 24)
DEFAULT_SAMPLES = 100
DEFAULT_STRIDE = 3
DEFAULT_ORIGINS = 400
TEMPERATURES = (0.7, 0.85, 1.0, 1.15, 1.3, 1.5)
CALIBRATION_ORIGINS, SCALE_ORIGINS, CALIBRATION_SAMPLES = 120, 480, 48
# the interval scales are fitted on as many paths as a forecast and the evaluation draw by default: a tail
# quantile of fewer samples is narrower, and scales fitted on 48 paths over-covered by 1-2 points at 100
SCALE_SAMPLES = DEFAULT_SAMPLES
QUANTILES = (0.05, 0.10, 0.25, 0.75, 0.90, 0.95)
LEVELS = (0.8, 0.9)  # the central intervals calibrated on validation, each with its own scale


def is_forecaster(run_dir: Path) -> bool:
    from trainlab.rundir import saved_config

    try:
        return bool(getattr(task_class(saved_config(Path(run_dir)).task), "forecasts", False))
    except TrainlabError:
        return False


def load(run_dir: Path, data_path: Optional[Path] = None, columns: Optional[dict[str, str]] = None):
    """(the run, its task module, the candles and codes): the run's own data, or another file read its way."""
    import importlib

    run = load_run(Path(run_dir))
    task = task_class(run.cfg.task)
    if not getattr(task, "forecasts", False):
        raise TrainlabError(f"'{run_dir}' is a {task.name} run; forecasts come from a forecaster's run "
                            f"(trainlab train --preset kronos-btc-forecast)")
    sf = importlib.import_module(task.__module__)  # the forecaster's own helpers: tokenizer, data, sampling
    if data_path is not None and not Path(data_path).is_file():
        raise TrainlabError(f"--data '{data_path}' does not exist")
    cfg = task.eval_config(run.cfg, Path(run_dir), data_path)
    if columns:
        cfg = cfg.updated({"series": {"columns": columns}})
    tok = sf.load_tokenizer(type(cfg), Path(run_dir) / "tokenizer", cfg.model.seq_len + max(HORIZONS) + 1)
    data = sf.load_data(cfg, tok, whole=data_path is not None)
    return run, sf, data


def check_horizon(data, steps: int, what: str = "--horizon") -> None:
    """A path is decoded with the candle at its origin, through the tokenizer's decoder, which reads at most
    lookback + pred_len candles at once (its series config's `window`): so at most window - 1 steps ahead."""
    s = data.tokenizer.s
    if steps >= s.window:
        raise TrainlabError(f"{what} {steps}: this forecaster's tokenizer decodes windows of {s.window} candles "
                            f"(its series.lookback {s.lookback} + series.pred_len {s.pred_len}), so it forecasts at "
                            f"most {s.window - 1} steps ahead")


def parse_columns(text: Optional[str]) -> dict[str, str]:
    """`timestamp=Date,volume=VolumeFrom` -> {"timestamp": "Date", "volume": "VolumeFrom"}."""
    if not text:
        return {}
    fields = ("timestamp", "open", "high", "low", "close", "volume", "amount")
    out = {}
    for pair in text.split(","):
        name, sep, column = pair.partition("=")
        if not sep or name.strip().lower() not in fields or not column.strip():
            raise TrainlabError(f"--columns '{text}': give name=Column pairs separated by commas, names among "
                                f"{', '.join(fields)}")
        out[name.strip().lower()] = column.strip()
    return out


# -- calibration on validation ----------------------------------------------------------------------------------
def _spread(closes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Samples (origins, n, steps) with their spread about the median widened by scale[step]."""
    med = np.median(closes, axis=1, keepdims=True)
    return med + scale[None, None, :closes.shape[2]] * (closes - med)


def _needed_scale(closes: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """Per origin, the smallest widening of the samples (origins, n) about their median under which the central
    `level` interval holds the truth: quantiles move with the scale, so it is a ratio, one side or the other."""
    med = np.median(closes, axis=1)
    lo, hi = np.quantile(closes, [(1 - level) / 2, (1 + level) / 2], axis=1)
    up, down = truth - med, med - truth
    return np.where(up >= 0, up / np.maximum(hi - med, 1e-12), down / np.maximum(med - lo, 1e-12))


def _power_law(raw: np.ndarray) -> np.ndarray:
    """Scales per step smoothed as scale = a * step**b (least squares in logs); as they are below 3 steps."""
    steps = np.arange(1, len(raw) + 1)
    if len(raw) < 3:
        return raw
    b, a = np.polyfit(np.log(steps), np.log(raw), 1)
    return np.exp(a + b * np.log(steps))


def _scales(closes: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per step, the 80% and 90% intervals' scales: the conformal quantile of the scale each validation origin
    needs, smoothed across steps, kept within [0.05, 50]."""
    out = {}
    for level in LEVELS:
        raw = np.array([np.quantile(_needed_scale(closes[:, :, h], truth[:, h], level), level)
                        for h in range(closes.shape[2])])
        out[str(round(level * 100))] = np.clip(_power_law(np.clip(raw, 0.05, 50.0)), 0.05, 50.0)
    return out


def _validation_origins(data, count: int) -> np.ndarray:
    horizon = max(HORIZONS)
    eligible = np.arange(max(data.val_start, data.s.lookback - 1), data.test_start - horizon)
    if len(eligible) < 10:
        raise TrainlabError(f"the validation period has {len(eligible)} origins with {horizon} steps after them; "
                            f"calibration needs 10 (raise data.val_fraction)")
    return eligible[np.linspace(0, len(eligible) - 1, min(count, len(eligible))).astype(int)]


def calibration(run: LoadedRun, sf, data=None, seed: int = 0, log=print) -> dict[str, Any]:
    """RUN/calibration.json, made on the validation period of the run's own data the first time it is asked
    for (`data`: that data, when already loaded). The temperature is chosen on CALIBRATION_ORIGINS origins,
    the spread scales fitted on up to SCALE_ORIGINS (every validation origin, when there are fewer)."""
    path = run.run_dir / "calibration.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if data is None:
        data = load(run.run_dir)[2]
    check_horizon(data, max(HORIZONS), "calibration over horizons up to")
    horizon, values = max(HORIZONS), data.candles.values[:, data.s.features.index("close")]
    origins = _validation_origins(data, CALIBRATION_ORIGINS)
    truth = values[origins[:, None] + np.arange(1, horizon + 1)]
    rw_mae = np.abs(truth - values[origins][:, None]).mean(0)
    log(f"calibrating on validation origins ({data.candles.timestamps[origins[0]]} .. "
        f"{data.candles.timestamps[origins[-1]]}): {len(TEMPERATURES)} temperatures on {len(origins)} origins")
    best = None
    for t in TEMPERATURES:
        gen = torch.Generator().manual_seed(seed)
        closes = sf.sample_closes(run.model, data, origins, horizon, CALIBRATION_SAMPLES, t, 1.0, gen)
        score = float(np.mean([scores.crps_samples(closes[:, :, h - 1], truth[:, h - 1]).mean() / rw_mae[h - 1]
                               for h in HORIZONS]))
        if best is None or score < best[1]:
            best = (t, score)
    wide = _validation_origins(data, SCALE_ORIGINS)
    log(f"calibrating the spread on {len(wide)} validation origins at temperature {best[0]:g}")
    closes = sf.sample_closes(run.model, data, wide, horizon, SCALE_SAMPLES, best[0], 1.0,
                              torch.Generator().manual_seed(seed + 1))
    levels = _scales(closes, values[wide[:, None] + np.arange(1, horizon + 1)])
    scale = np.sqrt(levels["80"] * levels["90"])
    result = {"temperature": best[0], "relative_crps": best[1], "scale": scale.tolist(),
              "interval_scale": {k: v.tolist() for k, v in levels.items()}, "origins": len(origins),
              "scale_origins": len(wide), "samples": CALIBRATION_SAMPLES, "scale_samples": SCALE_SAMPLES, "temperatures": list(TEMPERATURES),
              "period": [data.candles.timestamps[wide[0]], data.candles.timestamps[wide[-1]]]}
    atomic_write(path, json.dumps(result, indent=1))
    return result


def scale_for(cal: dict[str, Any], steps: int, level: Optional[float] = None) -> np.ndarray:
    """The paths' spread scale per step (level None), or the central `level` interval's (0.8 or 0.9); a
    calibration.json from before per-level scales has one scale for all."""
    s = list(cal.get("interval_scale", {}).get(str(round(level * 100)), cal["scale"]) if level else cal["scale"])
    return np.array((s + [s[-1]] * steps)[:steps])


def quantiles(raw: np.ndarray, cal: Optional[dict[str, Any]], levels=QUANTILES) -> np.ndarray:
    """Quantiles (len(levels), ..., steps) of raw samples (..., n, steps) about their median, each widened by
    the calibrated scale of the interval it bounds: the 90% interval's for q05/q95, the 80%'s for q10/q90,
    the paths' for the rest. cal None: as sampled."""
    med = np.median(raw, axis=-2)
    out = []
    for p in levels:
        q = np.quantile(raw, p, axis=-2)
        if cal is not None:
            width = abs(1 - 2 * p)
            level = next((lv for lv in LEVELS if abs(lv - width) < 1e-9), None)
            q = med + scale_for(cal, raw.shape[-1], level) * (q - med)
        out.append(q)
    return np.stack(out)


# -- the walk-forward evaluation --------------------------------------------------------------------------------
def season_of(data, configured: Optional[int]) -> Optional[int]:
    """Steps in a season: the configured one, else 24 for hourly rows and 7 for daily rows."""
    if configured:
        return configured
    spacing = data.candles.spacing()
    if spacing is not None and abs(spacing - 3600) < 1:
        return 24
    if spacing is not None and abs(spacing - 86400) < 1:
        return 7
    return None


def _point_metrics(point: np.ndarray, y: np.ndarray, last: np.ndarray, block: int, seed: int) -> dict[str, Any]:
    err = np.abs(point - y)
    moved = np.sign(y - last) != 0
    hit = np.sign(point - last) == np.sign(y - last)
    return {"mae": float(err.mean()), "rmse": float(np.sqrt(((point - y) ** 2).mean())),
            "mae_rel": float((err / last).mean()),
            "direction_hit": float(hit[moved].mean()) if moved.any() and (point != last).any() else None,
            "mae_ci": scores.block_bootstrap_ci(err, block, seed)}


def _realised_vol(path: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Root mean square of the log returns of close paths (..., h) that start from `last`."""
    full = np.concatenate([np.broadcast_to(last, path.shape[:-1])[..., None], path], axis=-1)
    return np.sqrt((np.diff(np.log(np.maximum(full, 1e-12)), axis=-1) ** 2).mean(-1))


def _model_metrics(closes: np.ndarray, bounds: np.ndarray, truth: np.ndarray, last: np.ndarray, h: int, block: int,
                   seed: int):
    """Metrics at horizon h of the calibrated paths (origins, n, steps) and the calibrated q05, q10, q90 and q95
    (4, origins, steps); (metrics, CRPS per origin)."""
    x, y = closes[:, :, h - 1], truth[:, h - 1]
    q = bounds[..., h - 1]
    crps = scores.crps_samples(x, y)
    m = _point_metrics(np.median(x, axis=1), y, last, block, seed)
    vol = _realised_vol(closes[:, :, :h], last[:, None]).mean(1)
    m.update(crps=float(crps.mean()), coverage_80=scores.covered(q[1], q[2], y), coverage_90=scores.covered(
        q[0], q[3], y), vol_mae=float(np.abs(vol - _realised_vol(truth[:, :h], last)).mean()))
    return m, crps


def _baselines(values: np.ndarray, origins: np.ndarray, truth: np.ndarray, h: int, lookback: int,
               season: Optional[int], block: int, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """random_walk, drift, seasonal_naive and gaussian_vol at horizon h, from the lookback rows of each origin
    alone; (metrics by name, gaussian_vol's CRPS per origin)."""
    y, last = truth[:, h - 1], values[origins]
    first = values[origins - lookback + 1]
    real_vol = _realised_vol(truth[:, :h], last)
    out = {}
    rw = _point_metrics(last, y, last, block, seed)
    out["random_walk"] = {**rw, "direction_hit": None, "crps": rw["mae"], "coverage_80": None, "coverage_90": None,
                          "vol_mae": None}
    drift = _point_metrics(last + h * (last - first) / (lookback - 1), y, last, block, seed)
    out["drift"] = {**drift, "crps": drift["mae"], "coverage_80": None, "coverage_90": None, "vol_mae": None}
    if season is not None and season <= lookback:
        back = origins + h - season * math.ceil(h / season)
        paths = values[back[:, None] + np.arange(1 - h, 1)]
        sn = _point_metrics(paths[:, -1], y, last, block, seed)
        out["seasonal_naive"] = {**sn, "crps": sn["mae"], "coverage_80": None, "coverage_90": None,
                                 "vol_mae": float(np.abs(_realised_vol(paths, last) - real_vol).mean())}
    else:
        out["seasonal_naive"] = None
    window = values[origins[:, None] + np.arange(-lookback + 1, 1)]
    sigma = np.log(window[:, 1:] / window[:, :-1]).std(1)
    sd = last * sigma * math.sqrt(h)
    crps = scores.crps_gaussian(last, sd, y)
    gv = _point_metrics(last, y, last, block, seed)
    z80, z90 = 1.2815515655446004, 1.6448536269514722
    out["gaussian_vol"] = {**gv, "direction_hit": None, "crps": float(crps.mean()),
                           "coverage_80": scores.covered(last - z80 * sd, last + z80 * sd, y),
                           "coverage_90": scores.covered(last - z90 * sd, last + z90 * sd, y),
                           "vol_mae": float(np.abs(sigma - real_vol).mean())}
    return out, crps


def _origins(data, own: bool, horizon: int, stride: int, cap: int) -> np.ndarray:
    n, lookback = len(data.candles.values), data.s.lookback
    lo = data.test_start if own else lookback - 1
    origins = np.arange(max(lo, lookback - 1), n - horizon, stride)
    if cap and len(origins) > cap:
        origins = origins[np.linspace(0, len(origins) - 1, cap).astype(int)]
    if not len(origins):
        raise TrainlabError(f"no origin with {lookback} rows before it and {horizon} after it in "
                            f"'{data.candles.path}'" + (" (its test period)" if own else ""))
    return origins


def _tests(model_err: np.ndarray, rw_err: np.ndarray, model_crps: np.ndarray, gv_crps: np.ndarray,
           overlap: int) -> dict[str, Any]:
    a, b = scores.diebold_mariano(model_err, rw_err, overlap), scores.diebold_mariano(model_crps, gv_crps, overlap)
    return {"dm_stat": a["stat"], "dm_p": a["p"], "dm_crps_stat": b["stat"], "dm_crps_p": b["p"],
            "overlap": overlap, "one_sided": "forecaster better", "correction": "Harvey-Leybourne-Newbold"}


def _overlap_with_training(run: LoadedRun, data) -> Optional[bool]:
    """Whether another file's timestamps reach into the run's training period (None when either has none)."""
    info = json.loads((run.run_dir / "series.json").read_text(encoding="utf-8"))
    start, end = parse_time(info.get("first_timestamp", "")), parse_time(info.get("first_val_timestamp", ""))
    times = data.candles.times
    if end is None or times is None:
        return None
    return bool(times[0] < end and times[-1] >= (start if start is not None else -math.inf))


def walk_forward(run_dir: Path, data_path: Optional[Path] = None, columns: Optional[dict[str, str]] = None,
                 samples: int = DEFAULT_SAMPLES, stride: int = DEFAULT_STRIDE, max_origins: int = DEFAULT_ORIGINS,
                 seed: int = 0, horizons: tuple[int, ...] = HORIZONS, log=print) -> dict[str, Any]:
    """Score the forecaster and the naive baselines on the same origins; write forecast_eval.json."""
    run, sf, data = load(run_dir, data_path, columns)
    check_horizon(data, max(horizons), "the evaluation at horizon")
    own = data_path is None
    cal = calibration(run, sf, data if own else None, seed=seed, log=log)
    horizon = max(horizons)
    origins = _origins(data, own, horizon, stride, max_origins)
    close = data.s.features.index("close")
    values = data.candles.values[:, close]
    truth = values[origins[:, None] + np.arange(1, horizon + 1)]
    log(f"walk-forward: {len(origins)} origins ({data.candles.timestamps[origins[0]]} .. "
        f"{data.candles.timestamps[origins[-1]]}, every {stride} rows), {samples} paths each, temperature "
        f"{cal['temperature']:g}")
    gen = torch.Generator().manual_seed(seed)
    raw = sf.sample_closes(run.model, data, origins, horizon, samples, cal["temperature"], 1.0, gen)
    closes = _spread(raw, scale_for(cal, horizon))
    bounds = quantiles(raw, cal, (0.05, 0.1, 0.9, 0.95))  # each interval widened by its own level's scale
    season = season_of(data, run.cfg.series.season)
    result: dict[str, Any] = {"horizons": {}}
    for h in horizons:
        overlap = max(1, math.ceil(h / stride))
        block = max(overlap, round(len(origins) ** (1 / 3)))
        model, model_crps = _model_metrics(closes, bounds, truth, values[origins], h, block, seed)
        base, gv_crps = _baselines(values, origins, truth, h, data.s.lookback, season, block, seed)
        y, last = truth[:, h - 1], values[origins]
        tests = _tests(np.abs(np.median(closes[:, :, h - 1], axis=1) - y), np.abs(last - y), model_crps, gv_crps,
                       overlap)
        result["horizons"][str(h)] = {"model": model, "baselines": base, "tests": tests}
    result.update(_about(run, data, origins, stride, samples, seed, cal, season, own))
    return _write(run, data_path, result, sf, log)


def _about(run, data, origins, stride, samples, seed, cal, season, own) -> dict[str, Any]:
    about = {"data": str(data.candles.path), "origins": len(origins), "stride": stride, "samples": samples,
             "seed": seed, "first_origin": data.candles.timestamps[origins[0]],
             "last_origin": data.candles.timestamps[origins[-1]], "temperature": cal["temperature"],
             "spread_scale": {str(h): float(scale_for(cal, h)[-1]) for h in HORIZONS},
             "interval_scale": {str(h): {k: float(scale_for(cal, h, int(k) / 100)[-1]) for k in ("80", "90")}
                                for h in HORIZONS},
             "season": season, "step": run.step, "period": "test" if own else "file",
             "notes": list(data.candles.notes)}
    if not own:
        about["overlaps_training"] = _overlap_with_training(run, data)
    return about


def _write(run: LoadedRun, data_path: Optional[Path], result: dict[str, Any], sf, log) -> dict[str, Any]:
    if data_path is None:
        out = run.run_dir
    else:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(data_path).stem) or "data"
        out = run.run_dir / "eval" / stem
        out.mkdir(parents=True, exist_ok=True)
    if result.get("overlaps_training"):
        log(f"note: '{data_path}' overlaps the run's training period: its timestamps begin before the run's "
            f"validation period, so its scores are not all out of sample")
    atomic_write(out / sf.EVAL_FILE, json.dumps(result, indent=1))
    atomic_write(out / "forecast_eval.md", sf.eval_table(result) + "\n")
    result["path"] = str(out / sf.EVAL_FILE)
    return result


# -- one forecast --------------------------------------------------------------------------------------------------
def _row_at(data, at: Optional[str]) -> int:
    c = data.candles
    if at is None:
        return len(c.values) - 1
    if at in c.timestamps:
        return c.timestamps.index(at)
    when = parse_time(at)
    if when is not None and c.times is not None:
        hits = np.flatnonzero(np.abs(c.times - when) < 1e-6)
        if len(hits):
            return int(hits[0])
    raise TrainlabError(f"--at '{at}' is not a timestamp of '{c.path}' (rows {c.timestamps[0]} .. "
                        f"{c.timestamps[-1]})")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "forecast"


def forecast(run_dir: Path, horizon: int, data_path: Optional[Path] = None, columns: Optional[dict[str, str]] = None,
             at: Optional[str] = None, samples: int = DEFAULT_SAMPLES, temperature: Optional[float] = None,
             top_p: float = 1.0, seed: int = 0, out: Optional[Path] = None, log=print) -> dict[str, Any]:
    """Sample `samples` paths after row `at` (default: the file's last); write forecast.csv and forecast.png."""
    run, sf, data = load(run_dir, data_path, columns)
    check_horizon(data, horizon)
    row = _row_at(data, at)
    if row < data.s.lookback - 1:
        raise TrainlabError(f"--at '{data.candles.timestamps[row]}' has {row} rows before it; a forecast reads "
                            f"series.lookback = {data.s.lookback}")
    cal = calibration(run, sf, data if data_path is None else None, seed=seed, log=log)
    temp = cal["temperature"] if temperature is None else temperature
    gen = torch.Generator().manual_seed(seed)
    raw = sf.sample_closes(run.model, data, np.array([row]), horizon, samples, temp, top_p, gen)[0]
    used = cal if temperature is None else None  # a temperature of one's own: the paths as sampled
    closes = _spread(raw[None], scale_for(cal, horizon))[0] if used else raw
    stamps = _future_stamps(data, row, horizon)
    out = Path(out) if out else run.run_dir / "forecasts" / safe_name(data.candles.timestamps[row])
    q = quantiles(raw, used)
    lines = ["step,timestamp,mean,median," + ",".join(f"q{round(p * 100):02d}" for p in QUANTILES)]
    for h in range(horizon):
        cells = [closes[:, h].mean(), np.median(closes[:, h]), *q[:, h]]
        lines.append(f"{h + 1},{stamps[h]}," + ",".join(f"{v:.6g}" for v in cells))
    with staged_dir(out, replace=True) as tmp:
        (tmp / "forecast.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        plotted = _plot(data, row, closes, q, stamps, tmp / "forecast.png", temp)
    return {"out": str(out), "at": data.candles.timestamps[row], "horizon": horizon, "samples": samples,
            "temperature": temp, "plot": plotted, "median_last": float(np.median(closes[:, -1]))}


def _future_stamps(data, row: int, horizon: int) -> list[str]:
    """The file's own timestamps after `row` where it has them, else stepped on by the lookback's spacing."""
    c = data.candles
    have = c.timestamps[row + 1:row + 1 + horizon]
    if len(have) == horizon or c.times is None:
        return have + [f"+{h}" for h in range(len(have) + 1, horizon + 1)]
    from datetime import datetime, timezone

    seen = c.times[max(0, row - data.s.lookback + 1):row + 1]
    step = float(np.median(np.diff(seen))) if len(seen) > 1 else 3600.0
    more = [datetime.fromtimestamp(c.times[row] + step * h, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for h in range(len(have) + 1, horizon + 1)]
    return have + more


def _plot(data, row: int, closes: np.ndarray, q: np.ndarray, stamps: list[str], path: Path,
          temperature: float) -> bool:
    """History, the fan of quantiles, and the real closes where the file has them; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    close = data.s.features.index("close")
    L, H = data.s.lookback, closes.shape[1]
    history = data.candles.values[row - L + 1:row + 1, close]
    t_hist, t_fut = np.arange(-L + 1, 1), np.arange(1, H + 1)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t_hist, history, color="black", label="observed close")
    for lo, hi, alpha in ((0.05, 0.95, 0.15), (0.10, 0.90, 0.25), (0.25, 0.75, 0.35)):  # forecast.csv's own
        ax.fill_between(t_fut, q[QUANTILES.index(lo)], q[QUANTILES.index(hi)], color="tab:blue", alpha=alpha,
                        linewidth=0, label=f"{round((hi - lo) * 100)}% interval")
    ax.plot(t_fut, np.median(closes, axis=0), color="tab:blue", label="median")
    real = data.candles.values[row + 1:row + 1 + H, close]
    if len(real):
        ax.plot(t_fut[:len(real)], real, color="tab:red", label="real close")
    ax.axvline(0.5, color="grey", linestyle=":")
    ax.set_title(f"forecast from {data.candles.timestamps[row]} ({len(closes)} paths, temperature {temperature:g})")
    ax.set_xlabel("steps from the last observed row")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
