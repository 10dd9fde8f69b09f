"""Candle series: a CSV of open, high, low, close, volume (and amount) cut into windows.

A window is `lookback + pred_len` consecutive rows. It is normalised with the mean and standard
deviation of its lookback rows only (the prediction rows must not leak into the statistics, the bug
Kronos fixed in its issues #227 and #307) and clipped to +-clip. The split is chronological: the
last `val_fraction` of the rows is validation, and no window crosses the boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from trainlab.config import DataConfig

if TYPE_CHECKING:  # the section is declared with its task, a layer above
    from trainlab.tasks.series_tokenizer import SeriesConfig
from trainlab.errors import DataError

REQUIRED = ("open", "high", "low", "close", "volume")
QUOTES = ("usd", "usdt", "usdc", "eur", "gbp", "jpy", "krw", "quote", "to")
ALIASES = {
    "timestamp": ("timestamp", "date", "time", "datetime", "unix", "unix timestamp", "open time", "open_time"),
    "volume": ("volume", "volumefrom", "volume_from", "volume from", "vol"),
    "amount": ("amount", "volumeto", "volume_to", "volume to", "quote asset volume", "quote_volume",
               "quote volume", "turnover"),
}
STAMP_FORMATS = ("%Y-%m-%d %I-%p", "%Y-%m-%d %H:%M", "%Y-%m-%d %H-%M", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M",
                 "%d.%m.%Y")


@dataclass
class Candles:
    timestamps: list[str]
    values: np.ndarray  # (rows, features) float64
    features: list[str]
    path: Path
    times: Optional[np.ndarray] = None  # unix seconds of each row (float64), None when the stamps do not parse
    notes: list[str] = field(default_factory=list)  # what the reader decided (newest-first reversed, amount filled)

    def calendar(self) -> tuple[np.ndarray, np.ndarray]:
        """(hour of day 0-23, weekday 0-6, Monday 0) of each row, UTC; zeros without parsed timestamps."""
        if self.times is None:
            zeros = np.zeros(len(self.values), dtype=np.int64)
            return zeros, zeros
        seconds = np.floor(self.times).astype(np.int64)
        return (seconds // 3600) % 24, ((seconds // 86400) + 3) % 7  # 1970-01-01 was a Thursday

    def spacing(self) -> Optional[float]:
        """The median time between rows in seconds (None without timestamps)."""
        if self.times is None or len(self.times) < 2:
            return None
        return float(np.median(np.diff(self.times)))


def _column_kind(name: str) -> Optional[str]:
    """The candle field a header names by itself (aliases, any case), or None."""
    if name in ("", "unnamed: 0"):
        return "timestamp"
    for kind, names in ALIASES.items():
        if name in names:
            return kind
    if name in ("open", "high", "low", "close"):
        return name
    for sep in ("_", " "):  # CryptoDataDownload's `Volume BTC` / `Volume USD`, `volume_btc`
        if name.startswith("volume" + sep):
            return "amount" if name[7:].strip() in QUOTES else "base_volume"
    return None


def map_columns(header: list[str], columns: Optional[dict[str, str]], path: Path) -> dict[str, int]:
    """Candle field -> column index: `columns` (name=Column) first, then the aliases. A plain `volume` beside
    a base-currency volume column (`volume_btc`, as in older CryptoDataDownload files) is the quote amount."""
    lower = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for name, column in (columns or {}).items():
        if column.strip().lower() not in lower:
            raise DataError(f"--columns/series.columns maps {name} to '{column}', not a column of '{path}' "
                            f"(columns: {', '.join(h for h in header if h) or 'none'})")
        found[name] = lower.index(column.strip().lower())
    kinds = [_column_kind(h) for h in lower]
    if "base_volume" in kinds and "volume" in kinds and "amount" not in kinds:
        kinds[kinds.index("volume")] = "amount"
    for i, kind in enumerate(kinds):
        kind = "volume" if kind == "base_volume" else kind
        if kind and kind not in found and i not in found.values():
            found[kind] = i
    return found


def _header_at(lines: list[str], columns: Optional[dict[str, str]]) -> int:
    """The first line that holds a close column (a banner such as CryptoDataDownload's comes before it)."""
    wanted = {(columns or {}).get("close", "close").strip().lower()}
    for i, line in enumerate(lines[:5]):
        if wanted & {c.strip().lower() for c in next(csv.reader([line]), [])}:
            return i
    return 0


def parse_time(text: str) -> Optional[float]:
    """Unix seconds from ISO 8601, CryptoDataDownload's `2019-10-17 09-AM`, a few common layouts, or a number
    of seconds or milliseconds; None when nothing fits. Naive times are taken as UTC."""
    text = text.strip()
    try:
        number = float(text)
        return number / 1000.0 if number > 1e11 else number
    except ValueError:
        pass
    stamp = None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        for form in STAMP_FORMATS:
            try:
                stamp = datetime.strptime(text, form)
                break
            except ValueError:
                continue
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def source_path(cfg: DataConfig) -> Path:
    from trainlab.data.corpora import CORPORA, default_cache_dir, get_corpus

    if cfg.source in CORPORA:
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        return get_corpus(cfg.source, cache)
    path = Path(cfg.source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source '{cfg.source}' is neither a bundled corpus (btc-1h) nor an existing .csv file")
    return path


def _read_rows(path: Path, columns: Optional[dict[str, str]]) -> tuple[list[str], list[list[str]]]:
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read candles from '{path}': {err}") from None
    lines = lines[_header_at(lines, columns):]
    rows = [r for r in csv.reader(lines) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"'{path}' is empty; a candle CSV needs a header and rows")
    return rows[0], rows[1:]


def read_candles(path: Path, features: list[str], columns: Optional[dict[str, str]] = None,
                 strict: bool = False) -> Candles:
    """Rows oldest first (a newest-first file is reversed, an unordered one sorted, a repeated timestamp kept
    once: its last row); column names in any case with the common aliases, or as `columns` maps them; a missing
    amount becomes volume x mean(open, high, low, close). A row with a needed value missing or not a number is
    skipped and counted (with `strict`, an error naming its line). What was decided is in `notes`."""
    header, rows = _read_rows(path, columns)
    where = map_columns(header, columns, path)
    missing = [c for c in REQUIRED if c not in where]
    if missing:
        raise DataError(f"'{path}' lacks the column(s) {', '.join(missing)}; a candle CSV needs "
                        f"{', '.join(REQUIRED)} (and optionally amount; --columns maps other names)")
    unknown = [f for f in features if f not in where and f not in ALIASES and f not in REQUIRED]
    if unknown:
        raise DataError(f"series.features names {', '.join(unknown)}, not a column of '{path}'")
    read = [f for f in features if f in where]
    notes: list[str] = []
    values, rows = _numbers(rows, where, read, Path(path), strict, notes)
    if "amount" in features and "amount" not in where:
        ohlc = values[:, [read.index(c) for c in ("open", "high", "low", "close")]].mean(1)
        values = np.concatenate([values, (values[:, read.index("volume")] * ohlc)[:, None]], axis=1)
        read.append("amount")
        notes.append("amount is volume x mean(open, high, low, close): the file has no amount column")
    stamps = [row[where["timestamp"]] if where["timestamp"] < len(row) else "" for row in rows] \
        if "timestamp" in where else [str(i) for i in range(len(rows))]
    times = _times(stamps) if "timestamp" in where else None
    if times is not None:
        values, stamps, times = _in_time_order(values, stamps, times, notes)
    order = [read.index(f) for f in features if f in read]
    return Candles(stamps, values[:, order], [read[k] for k in order], Path(path), times, notes)


def _numbers(rows: list[list[str]], where: dict[str, int], read: list[str], path: Path, strict: bool,
             notes: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    """The rows' needed values as floats, and the rows kept: a row with a value missing, not a number or not
    finite is skipped and counted (exchange exports have such rows), or with `strict` is an error."""
    values = np.full((len(rows), len(read)), np.nan)
    skipped: list[int] = []
    for i, row in enumerate(rows):
        for j, f in enumerate(read):
            cell = row[where[f]] if where[f] < len(row) else ""
            try:
                values[i, j] = float(cell)
            except ValueError:
                pass
            if not np.isfinite(values[i, j]):
                if strict:
                    raise DataError(f"'{path}' line {i + 2}: {f} is {cell!r}, not a finite number (data.strict=true; "
                                    f"set it false to skip such rows)")
                skipped.append(i)
                break
    if skipped:
        keep = np.ones(len(rows), dtype=bool)
        keep[skipped] = False
        values, rows = values[keep], [r for r, k in zip(rows, keep) if k]
        notes.append(f"{len(skipped)} row(s) with a value missing or not a number were skipped (first at line(s) "
                     f"{', '.join(str(i + 2) for i in skipped[:3])})")
    if not len(values):
        raise DataError(f"no row of '{path}' has a number in every column it needs ({', '.join(read)})")
    return values, rows


def _in_time_order(values: np.ndarray, stamps: list[str], times: np.ndarray,
                   notes: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Oldest first: a newest-first file reversed, an unordered one sorted (stable); a timestamp that repeats
    keeps its last row."""
    if len(times) > 1 and times[0] > times[-1]:
        values, stamps, times = values[::-1].copy(), stamps[::-1], times[::-1].copy()
        notes.append("rows were newest first; read oldest first")
    if np.any(np.diff(times) < 0):
        order = np.argsort(times, kind="stable")
        values, stamps, times = values[order], [stamps[i] for i in order], times[order]
        notes.append("rows were out of time order; sorted by timestamp")
    last = np.ones(len(times), dtype=bool)
    last[:-1] = times[:-1] != times[1:]  # after sorting, a repeat sits right before its later copy
    if not last.all():
        notes.append(f"{int((~last).sum())} repeated timestamp(s); kept the last row of each")
        values, stamps, times = values[last], [st for st, k in zip(stamps, last) if k], times[last]
    g = gap_stats(times)
    if g and g["gaps"]:
        notes.append(f"{g['gaps']} gap(s) in the {duration(g['spacing_s'])} spacing ({g['missing_rows']} row(s) "
                     f"missing); a window across one reads the rows on either side as consecutive")
    return values, stamps, times


def gap_stats(times: np.ndarray) -> Optional[dict[str, Any]]:
    """The rows' usual spacing (the median step), the steps over 1.5x it (gaps), the rows they miss and the
    largest step; None for fewer than three rows."""
    if len(times) < 3:
        return None
    steps = np.diff(times)
    spacing = float(np.median(steps))
    gaps = steps > 1.5 * spacing
    return {"spacing_s": spacing, "gaps": int(gaps.sum()),
            "missing_rows": int(np.round(steps[gaps] / spacing).sum() - gaps.sum()) if gaps.any() else 0,
            "largest_gap_s": float(steps.max())}


def duration(seconds: float) -> str:
    """Seconds in the largest whole unit: 3600 -> '1 h'."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _times(stamps: list[str]) -> Optional[np.ndarray]:
    parsed = [parse_time(s) for s in stamps]
    return None if any(p is None for p in parsed) else np.array(parsed, dtype=np.float64)


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
    candles = read_candles(source_path(cfg), series.features, series.columns, strict=cfg.strict)
    n = len(candles.values)
    split = int(round(n * (1 - cfg.val_fraction)))
    data = SeriesData(candles, split, series)
    for part in ("train", "val"):
        if len(data.starts(part)) < 1:
            raise DataError(f"the {part} part of '{cfg.source}' ({split if part == 'train' else n - split} rows) is "
                            f"shorter than one window of series.lookback + series.pred_len = {series.window} rows")
    return data
