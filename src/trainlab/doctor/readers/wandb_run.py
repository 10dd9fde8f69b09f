"""Weights & Biases: an offline run directory (`wandb/offline-run-*/run-<id>.wandb`) as wandb writes it,
or a run's history exported as CSV from the web page.

The .wandb file is a LevelDB-style log: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
32 KiB blocks of chunks (crc32, length, type: full, first, middle, last) holding protobuf `Record`s.
wandb itself (0.31) has no public reader of these files any more, so they are read here; each record is
decoded with wandb's own message classes when wandb is installed, else by the small wire-format decoder
below, which knows the fields the doctor needs: the history rows (record field 2: items of key and
value, and the step) and the run's config (field 5, and the config inside the run record, field 17).
"""

from __future__ import annotations

import csv
import json
import math
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

from trainlab.doctor.readers.common import FORMATS, csv_rows, from_points, number
from trainlab.doctor.series import RunSeries
from trainlab.errors import TrainlabError

BLOCK, HEADER = 32768, 7
# the training step where a logger records it beside wandb's own `_step` (which counts log calls)
STEP_KEYS = ("train/global_step", "trainer/global_step", "global_step")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def is_wandb(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".wandb"
    return _run_file(path) is not None


def is_wandb_csv(path: Path) -> bool:
    """A history CSV from the web page: a `_step` column, or `Step` with `<run> - <metric>` columns."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "_step" in header or ("Step" in header and any(" - " in h for h in header))


def _run_file(path: Path) -> Optional[Path]:
    """The .wandb file of a run directory, or of the newest offline run under a `wandb/` directory."""
    files = sorted(path.glob("run-*.wandb")) or sorted(path.glob("*/run-*.wandb")) or sorted(
        path.glob("wandb/*/run-*.wandb"))
    return files[-1] if files else None


def read_wandb(path: Path) -> RunSeries:
    path = Path(path)
    if path.suffix == ".csv":
        return read_wandb_csv(path)
    run = path if path.is_file() else _run_file(path)
    if run is None:
        raise TrainlabError(f"'{path}' holds no W&B run file (run-<id>.wandb); known formats: {', '.join(FORMATS)}")
    points: dict[str, list[tuple[int, float]]] = {}
    config: dict[str, str] = {}
    for record in _records(run):
        kind, body = _decode(record)
        if kind == "history":
            step, items = body
            step = _step(items, step)
            for key, value in items.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not key.startswith("_"):
                    points.setdefault(key, []).append((step, float(value)))
        elif kind == "config":
            config.update({k: str(v) for k, v in body.items() if not isinstance(v, dict)})
    return from_points("wandb", path, points, config, f"'{run}': its history holds no loss")


def read_wandb_csv(path: Path) -> RunSeries:
    rows = csv_rows(path)
    step_col = next((k for k in STEP_KEYS + ("_step", "Step") if rows and k in rows[0]), "Step")
    points: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = number(row.get(step_col) or "")
        if step is None or not math.isfinite(step):
            continue
        for name, text in row.items():
            if name is None or not isinstance(text, str) or not text:  # cells beyond the header's; empty cells
                continue
            if name in (step_col, "_step") or name.endswith(("__MIN", "__MAX")) or name.startswith("_"):
                continue
            value = number(text)
            if value is not None:  # a chart's export names columns "<run> - <metric>"
                points.setdefault(name.split(" - ", 1)[-1], []).append((int(step), value))
    return from_points("wandb", path, points, {}, f"'{path}': no loss column in this W&B export")


def _step(items: dict[str, Any], step: Optional[int]) -> int:
    for key in STEP_KEYS:
        if isinstance(items.get(key), (int, float)):
            return int(items[key])
    return int(items.get("_step", step or 0) if step is None else step)


# --------------------------------------------------------------------------------------------
# the .wandb file


def _records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B" or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise TrainlabError(f"'{path}' is not a W&B run file (no :W&B header)")
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        chunk = data[pos + HEADER: pos + HEADER + length]
        if kind == 0 and length == 0:  # zero padding to the end of a block
            pos += left
            continue
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            break  # a record cut short by a crash ends the readable history
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            yield parts + chunk


def _decode(record: bytes) -> tuple[Optional[str], Any]:
    """('history', (step, {key: value})) or ('config', {key: value}) or (None, None)."""
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError:
        return _decode_wire(record)
    rec = pb.Record()
    rec.ParseFromString(record)
    which = rec.WhichOneof("record_type")
    if which == "history":
        items = {i.key or "/".join(i.nested_key): _json(i.value_json) for i in rec.history.item}
        return "history", (rec.history.step.num if rec.history.HasField("step") else None, items)
    updates = rec.config.update if which == "config" else rec.run.config.update if which == "run" else None
    if updates is None:
        return None, None
    return "config", {i.key or "/".join(i.nested_key): _json(i.value_json) for i in updates}


def _decode_wire(record: bytes) -> tuple[Optional[str], Any]:
    fields = _fields(record)
    if 2 in fields:  # history
        history = _fields(fields[2][0])
        step = _fields(history[2][0]).get(1, [0])[0] if 2 in history else None
        items = dict(_item(item) for item in history.get(1, []))
        return "history", (step, items)
    config = fields.get(5) or [c for run in fields.get(17, []) for c in _fields(run).get(4, [])]
    if not config:
        return None, None
    return "config", dict(_item(item) for c in config for item in _fields(c).get(1, []))


def _item(raw: bytes) -> tuple[str, Any]:
    f = _fields(raw)
    key = f[1][0].decode() if 1 in f else "/".join(k.decode() for k in f.get(2, []))
    return key, _json(f[16][0].decode()) if 16 in f else None


def _fields(buf: bytes) -> dict[int, list]:
    """A protobuf message's fields: varints as ints, length-delimited as bytes, fixed as raw numbers."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number_, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos: pos + length], pos + length
        elif wire == 1:
            value, pos = struct.unpack("<d", buf[pos: pos + 8])[0], pos + 8
        elif wire == 5:
            value, pos = struct.unpack("<f", buf[pos: pos + 4])[0], pos + 4
        else:
            break
        out.setdefault(number_, []).append(value)
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _json(text: str) -> Any:
    """wandb writes NaN and Infinity as JSON's non-standard tokens, which json.loads accepts."""
    try:
        return json.loads(text)
    except ValueError:
        return re.sub(r"^\"|\"$", "", text)
