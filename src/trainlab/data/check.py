"""`trainlab data check`: exact and near duplicates, train/validation overlap, lengths, unseen characters.

Units are what the split keeps whole: documents of a .jsonl, files of a folder, paragraphs (blocks
between blank lines, or lines when a text has no blank lines) of a single text. Near duplicates are
found with MinHash signatures of character 5-gram shingles and banded locality-sensitive hashing;
a candidate pair counts when its estimated Jaccard similarity is at least 0.8.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from trainlab.config import DataConfig
from trainlab.data.prepare import Source, cache_dir_of
from trainlab.findings import Finding

MIN_CHARS = 32  # shorter units (stage directions, "Exit.") repeat naturally and are not counted
SHINGLE = 5
PERMS, BANDS = 64, 16  # 16 bands of 4 rows: pairs at Jaccard 0.8 collide with probability ~0.999
NEAR = 0.8
MAX_UNITS = 200_000  # per split; beyond this a check samples evenly
_rng = np.random.default_rng(0)
# multiply-shift hashing: odd 64-bit multipliers, arithmetic mod 2**64, keep the high 32 bits
_A = _rng.integers(0, 1 << 63, PERMS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _rng.integers(0, 1 << 63, PERMS, dtype=np.uint64)
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip().lower()


def units(source: Source, split: str) -> Iterator[str]:
    if source.kind != "text":
        for piece in source.pieces(split):
            yield piece.text
        return
    carry = ""
    for piece in source.pieces(split):
        text = carry + piece.text
        blocks = re.split(r"\n\s*\n", text)
        carry = blocks.pop()
        yield from blocks
    if carry:
        yield carry


def signature(text: str) -> np.ndarray:
    data = text.encode("utf-8", "surrogatepass")
    sh = np.array(sorted({zlib.crc32(data[i:i + SHINGLE]) for i in range(max(1, len(data) - SHINGLE + 1))}),
                  dtype=np.uint64)
    with np.errstate(over="ignore"):
        return ((_A[:, None] * sh[None, :] + _B[:, None]) >> np.uint64(32)).min(axis=1)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"units": 0}
    a = np.asarray(lengths)
    return {"units": int(len(a)), "chars": int(a.sum()), "min": int(a.min()), "median": float(np.median(a)),
            "mean": float(a.mean()), "p95": float(np.quantile(a, 0.95)), "max": int(a.max())}


def _read_split(source: Source, split: str) -> tuple[list[str], list[int], Counter]:
    """(normalised units long enough to count, every unit's length, character counts) of one split."""
    raw = list(units(source, split))
    if source.kind == "text" and len([u for u in raw if len(u) >= MIN_CHARS]) < 0.2 * max(1, len(raw)) + 10:
        raw = [line for u in raw for line in u.splitlines()]  # no paragraph structure: use lines
    return _measure(raw)


def _conversation_splits(cfg: DataConfig) -> Optional[dict[str, list[str]]]:
    """An instruction .jsonl (conversations in any format the sft task reads) split as that task splits it,
    each conversation's messages one unit; None when the file holds no conversation."""
    from trainlab.data.sft import is_val, read_conversations
    from trainlab.errors import DataError

    path = Path(cfg.source).expanduser()
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    try:
        conversations, _ = read_conversations(path, strict=False)
    except DataError:
        return None
    out: dict[str, list[str]] = {"train": [], "val": []}
    for messages in conversations:
        out["val" if is_val(messages, cfg.val_fraction) else "train"].append("\n".join(m["content"] for m in messages))
    return out


def _measure(raw: list[str]) -> tuple[list[str], list[int], Counter]:
    chars: Counter = Counter()
    for u in raw:
        chars.update(u)
    kept = [u for u in (normalise(u) for u in raw) if len(u) >= MIN_CHARS]
    if len(kept) > MAX_UNITS:
        kept = [kept[i] for i in np.linspace(0, len(kept) - 1, MAX_UNITS).astype(int)]
    return kept, [len(u) for u in raw], chars


def _near_duplicates(train: list[str], val: list[str], exact: Counter) -> dict[str, Any]:
    """Near duplicates within train, and validation units near a training unit, by banded MinHash."""
    train_sigs, rows = [signature(u) for u in train], PERMS // BANDS
    buckets: dict[tuple, list[int]] = {}
    for i, sig in enumerate(train_sigs):
        for b in range(BANDS):
            buckets.setdefault((b, sig[b * rows:(b + 1) * rows].tobytes()), []).append(i)
    near_dup: set[int] = set()
    examples: list[list[str]] = []
    for members in buckets.values():
        for j in members[1:]:
            i = members[0]
            if j in near_dup or train[i] == train[j]:
                continue
            if float(np.mean(train_sigs[i] == train_sigs[j])) >= NEAR:
                near_dup.add(j)
                if len(examples) < 3:
                    examples.append([train[i][:160], train[j][:160]])
    leak_near, leak_examples = 0, []
    for unit in val:
        if unit in exact:
            continue
        sig = signature(unit)
        cand = {i for b in range(BANDS) for i in buckets.get((b, sig[b * rows:(b + 1) * rows].tobytes()), [])}
        if any(float(np.mean(train_sigs[i] == sig)) >= NEAR for i in cand):
            leak_near += 1
            if len(leak_examples) < 3:
                leak_examples.append(unit[:160])
    return {"near_dup": len(near_dup), "examples": examples, "leak_near": leak_near, "leak_examples": leak_examples}


def check_source(cfg: DataConfig) -> dict[str, Any]:
    from trainlab.errors import DataError

    source = Source(cfg, cache_dir_of(cfg))
    kind, where = source.kind, str(source.path)
    try:
        splits = [_read_split(source, s) for s in ("train", "val")]
    except DataError:  # a .jsonl without the text field may be instruction data: its conversations are the units
        conversations = _conversation_splits(cfg)
        if conversations is None:
            raise
        kind, splits = "conversations", [_measure(conversations[s]) for s in ("train", "val")]
    (train, train_lengths, train_chars), (val, val_lengths, val_chars) = splits
    counts = Counter(train)  # exact duplicates, within train and across the split
    near = _near_duplicates(train, val, counts)
    n_train, n_val = max(1, len(train)), max(1, len(val))
    unseen = sum(c for ch, c in val_chars.items() if ch not in train_chars)
    return {"source": where, "kind": kind, "val_fraction": cfg.val_fraction,
            "min_unit_chars": MIN_CHARS,
            "lengths": {"train": _length_stats(train_lengths), "val": _length_stats(val_lengths)},
            "units_checked": {"train": len(train), "val": len(val)},
            "train_exact_duplicate_rate": sum(c - 1 for c in counts.values()) / n_train,
            "train_near_duplicate_rate": near["near_dup"] / n_train,
            "duplicate_examples": near["examples"],
            "val_in_train_exact_rate": sum(1 for u in val if u in counts) / n_val,
            "val_in_train_near_rate": near["leak_near"] / n_val,
            "leak_examples": near["leak_examples"],
            "val_unseen_char_rate": unseen / max(1, sum(val_chars.values())),
            "val_unseen_chars": "".join(sorted(ch for ch in val_chars if ch not in train_chars))[:40]}


def check_config(cfg: DataConfig, fetch: bool = True) -> Optional[dict[str, Any]]:
    """check_source, or None when the data is not at hand and fetch is False."""
    from trainlab.data import corpora, shakespeare_qa

    if cfg.source == shakespeare_qa.NAME:  # the instruction set built from a corpus: the built file
        built = shakespeare_qa.dataset_path(cache_dir_of(cfg))
        if not built.exists() and not fetch:
            return None
        return check_source(cfg.model_copy(update={"source": str(shakespeare_qa.get_dataset(cache_dir_of(cfg),
                                                                                             quiet=True))}))
    if not fetch:
        if cfg.source in corpora.CORPORA:
            if not corpora.corpus_path(cfg.source, cache_dir_of(cfg)).exists():
                return None
        elif not Path(cfg.source).expanduser().exists():
            return None
    return check_source(cfg)


def findings_from_check(report: dict[str, Any]) -> list[Finding]:
    out = []
    exact, near = report["train_exact_duplicate_rate"], report["train_near_duplicate_rate"]
    dup = exact + near
    if dup >= 0.05:
        ex = report["duplicate_examples"][:1]
        out.append(Finding(
            "data_duplicates", "high" if dup >= 0.2 else "medium",
            f"{exact:.1%} of the {report['units_checked']['train']:,} training units are exact duplicates and "
            f"{near:.1%} near duplicates (MinHash Jaccard >= {NEAR})" + (f", e.g. {ex[0][1][:80]!r}" if ex else "") + ".",
            "Duplicates make the model memorise them and inflate the apparent epoch count. Deduplicate the "
            "data (exactly, then near duplicates) before training.", {}))
    leak = report["val_in_train_exact_rate"] + report["val_in_train_near_rate"]
    if leak >= 0.01:
        out.append(Finding(
            "train_val_leakage", "high" if leak >= 0.1 else "medium",
            f"{report['val_in_train_exact_rate']:.1%} of the {report['units_checked']['val']:,} validation units appear "
            f"verbatim in training and {report['val_in_train_near_rate']:.1%} nearly so.",
            "The validation loss is optimistic: part of it measures memory, not generalisation. Remove the "
            "overlapping units from one side (or deduplicate before splitting).", {}))
    return out


def format_report(r: dict[str, Any]) -> str:
    lt, lv = r["lengths"]["train"], r["lengths"]["val"]
    lines = [f"{r['source']} ({r['kind']}, val_fraction {r['val_fraction']})",
             f"  units: train {lt.get('units', 0):,} (median {lt.get('median', 0):.0f} chars, p95 {lt.get('p95', 0):.0f}, "
             f"max {lt.get('max', 0):,}), val {lv.get('units', 0):,}; checked (>= {r['min_unit_chars']} chars): "
             f"train {r['units_checked']['train']:,}, val {r['units_checked']['val']:,}",
             f"  duplicates in train: exact {r['train_exact_duplicate_rate']:.2%}, near {r['train_near_duplicate_rate']:.2%}",
             f"  validation found in train: exact {r['val_in_train_exact_rate']:.2%}, near {r['val_in_train_near_rate']:.2%}",
             f"  validation characters unseen in train: {r['val_unseen_char_rate']:.3%}"
             + (f" ({r['val_unseen_chars']!r})" if r["val_unseen_chars"] else "")]
    for a, b in r["duplicate_examples"][:2]:
        lines.append(f"  e.g. duplicate: {b[:100]!r}")
    for a in r["leak_examples"][:2]:
        lines.append(f"  e.g. leaked: {a[:100]!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# candles


def check_candles(path: Path, columns: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """A candle CSV as the series tasks read it: rows, time span and spacing, gaps, and candles that cannot be
    (a high below its low, prices at or below zero), beside what the reader did (rows skipped, sorted, kept once)."""
    from trainlab.data.series import gap_stats, read_candles

    c = read_candles(Path(path), ["open", "high", "low", "close", "volume"], columns)
    v = {f: c.values[:, i] for i, f in enumerate(c.features)}
    report: dict[str, Any] = {"source": str(c.path), "kind": "candles", "rows": len(c.values),
                              "first": c.timestamps[0], "last": c.timestamps[-1], "notes": list(c.notes),
                              "high_below_low": int((v["high"] < v["low"]).sum()),
                              "outside_high_low": int(((v["close"] > v["high"]) | (v["close"] < v["low"])
                                                       | (v["open"] > v["high"]) | (v["open"] < v["low"])).sum()),
                              "non_positive_prices": int((c.values[:, :4] <= 0).any(axis=1).sum()),
                              "zero_volume_share": float((v["volume"] == 0).mean())}
    g = gap_stats(c.times) if c.times is not None else None
    return report | (g or {})


def format_candles(r: dict[str, Any]) -> str:
    from trainlab.data.series import duration

    lines = [f"{r['source']} (candles): {r['rows']:,} rows from {r['first']} to {r['last']}"]
    if "spacing_s" in r:
        lines.append(f"  spacing {duration(r['spacing_s'])}; {r['gaps']:,} gap(s) in it, {r['missing_rows']:,} row(s) "
                     f"missing in all, the largest {duration(r['largest_gap_s'])}")
    lines.append(f"  impossible candles: high below low {r['high_below_low']:,}, open or close outside high-low "
                 f"{r['outside_high_low']:,}, a price at or below zero {r['non_positive_prices']:,}; zero volume in "
                 f"{r['zero_volume_share']:.1%} of rows")
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)
