"""Candle series: a CSV of open, high, low, close, volume (and amount) cut into windows.

A window is `lookback + pred_len` consecutive rows. It is normalised with the mean and standard
deviation of its lookback rows only (the prediction rows must not leak into the statistics, the bug
Kronos fixed in its issues #227 and #307) and clipped to +-clip. The split is chronological: the
last `val_fraction` of the rows is validation, and no window crosses the boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainlab.config import DataConfig

if TYPE_CHECKING:  # the section is declared with its task, a layer above
    from trainlab.tasks.series_tokenizer import SeriesConfig
from trainlab.errors import DataError

REQUIRED = ("open", "high", "low", "close", "volume")


@dataclass
class Candles:
    timestamps: list[str]
    values: np.ndarray  # (rows, features) float64
    features: list[str]
    path: Path


def source_path(cfg: DataConfig) -> Path:
    from trainlab.data.corpora import CORPORA, default_cache_dir, get_corpus

    if cfg.source in CORPORA:
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        return get_corpus(cfg.source, cache)
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source '{cfg.source}' is neither a bundled corpus (btc-1h) nor an existing .csv file")
    return path


def read_candles(path: Path, features: list[str]) -> Candles:
    """Rows in file order (oldest first); `amount` is dropped from the features when the CSV lacks it."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read candles from '{path}': {err}") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"'{path}' lacks the column(s) {', '.join(missing)}; a candle CSV needs "
                        f"{', '.join(REQUIRED)} (and optionally amount)")
    use = [f for f in features if f in columns or f != "amount"]
    unknown = [f for f in use if f not in columns]
    if unknown:
        raise DataError(f"series.features names {', '.join(unknown)}, not a column of '{path}'")
    names = dict(zip(columns, reader.fieldnames or []))
    stamp_col = next((names[c] for c in ("timestamp", "date", "time", "datetime") if c in names), None)
    values = np.empty((len(rows), len(use)), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, f in enumerate(use):
            try:
                values[i, j] = float(row[names[f]])
            except (TypeError, ValueError):
                raise DataError(f"'{path}' line {i + 2}: {f} is {row[names[f]]!r}, not a number") from None
    if not np.isfinite(values).all():
        raise DataError(f"'{path}' holds non-finite values")
    stamps = [row[stamp_col] for row in rows] if stamp_col else [str(i) for i in range(len(rows))]
    return Candles(stamps, values, use, Path(path))


def normalise(window: np.ndarray, lookback: int, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised window, mean, std), statistics from the first `lookback` rows only."""
    head = window[..., :lookback, :]
    mean = head.mean(axis=-2, keepdims=True)
    std = head.std(axis=-2, keepdims=True) + 1e-5
    return np.clip((window - mean) / std, -clip, clip), mean, std


@dataclass
class SeriesData:
    candles: Candles
    split: int  # first validation row
    cfg: SeriesConfig

    @property
    def n_features(self) -> int:
        return len(self.candles.features)

    def starts(self, part: str) -> np.ndarray:
        """Window starts that stay inside the part (train: rows before the split, val: from it on, all: the
        whole file)."""
        n = len(self.candles.values)
        lo, hi = {"train": (0, self.split), "val": (self.split, n), "all": (0, n)}[part]
        return np.arange(lo, hi - self.cfg.window + 1, self.cfg.stride, dtype=np.int64)

    def combined(self) -> np.ndarray:
        """Window starts over the whole file (what `trainlab eval RUN --data FILE` scores)."""
        return self.starts("all")

    def window(self, start: int) -> np.ndarray:
        return self.candles.values[start:start + self.cfg.window]


def load(cfg: DataConfig, series: SeriesConfig) -> SeriesData:
    candles = read_candles(source_path(cfg), series.features)
    n = len(candles.values)
    split = int(round(n * (1 - cfg.val_fraction)))
    data = SeriesData(candles, split, series)
    for part in ("train", "val"):
        if len(data.starts(part)) < 1:
            raise DataError(f"the {part} part of '{cfg.source}' ({split if part == 'train' else n - split} rows) is "
                            f"shorter than one window of series.lookback + series.pred_len = {series.window} rows")
    return data
