"""MLflow: a file store (`mlruns/<experiment>/<run>/metrics/<key>`, lines of `timestamp value step`) or
the SQLite store (tables `runs`, `metrics`, `params`). Read through the `mlflow` client when it is
installed and accepts the store, else (and for a store the client refuses) read directly.

The SQLite store keeps NaN as `is_nan` with a value of 0, and infinities as the largest double; both
are turned back. A store with several runs is read at its newest run, and the diagnosis says so.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
import sys
from pathlib import Path
from typing import Any, Optional

from trainlab.doctor.readers.common import FORMATS, from_points
from trainlab.doctor.series import RunSeries
from trainlab.errors import TrainlabError

Points = dict[str, list[tuple[int, float]]]


def is_mlflow(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return _is_sqlite_store(path)
    return bool(_file_runs(path))


def read_mlflow(path: Path, client: bool = True) -> RunSeries:
    """One run of an MLflow store. `client=False` reads the files alone, as without mlflow installed."""
    path = Path(path)
    if path.is_file():
        if not _is_sqlite_store(path):
            raise TrainlabError(f"'{path}' is not an MLflow SQLite store; known formats: {', '.join(FORMATS)}")
        runs = _sqlite_runs(path)
        run = runs[-1][0] if runs else None
        got = (client and _via_client_sqlite(path, run)) or _sqlite_run(path, run)
    else:
        runs = _file_runs(path)
        if not runs:
            raise TrainlabError(f"'{path}' holds no MLflow run; known formats: {', '.join(FORMATS)}")
        run = runs[-1][0]
        store = run.parent.parent
        got = (client and _via_client(store.resolve().as_uri(), run.name)) or _file_run(run)
    series = from_points("mlflow", path, *got, f"'{path}': the MLflow run holds no loss metric")
    if len(runs) > 1:
        series.notes.append(f"the store holds {len(runs)} runs; this is the newest, '{runs[-1][1]}'")
    return series


def _via_client(uri: str, run_id: Optional[str]) -> Optional[tuple[Points, dict[str, str]]]:
    """The run through mlflow's own client, or None (not installed, or it refuses the store: a file store
    in maintenance mode, a read-only database it would migrate)."""
    if run_id is None or "mlflow" not in sys.modules and not _importable("mlflow"):
        return None
    import logging

    quiet = logging.getLogger("mlflow")
    level = quiet.level
    try:
        from mlflow.tracking import MlflowClient

        quiet.setLevel(logging.WARNING)  # set after mlflow's import configures it: its store setup logs at INFO
        c = MlflowClient(tracking_uri=uri)
        run = c.get_run(run_id)
        points = {key: [(m.step, _stored(m.value, False)) for m in sorted(c.get_metric_history(run_id, key),
                                                           key=lambda m: (m.step, m.timestamp))]
                  for key in run.data.metrics}
        return points, dict(run.data.params)
    except Exception:  # any refusal: the direct reading below needs nothing of mlflow
        return None
    finally:
        quiet.setLevel(level)


def _via_client_sqlite(path: Path, run_id: Optional[str]) -> Optional[tuple[Points, dict[str, str]]]:
    """The client on a snapshot of the database in a temporary folder: mlflow opens a SQLite store to write
    (it migrates an older schema and makes the file's folder, relative to the working directory for a
    `file:` URI), and the user's store is read, never written."""
    if run_id is None or "mlflow" not in sys.modules and not _importable("mlflow"):
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="trainlab-mlflow-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        try:
            with closing(_connect(path)) as src, closing(sqlite3.connect(copy)) as dst:
                src.backup(dst)  # a consistent snapshot, with what a write-ahead log still holds
        except sqlite3.Error:
            return None
        return _via_client(f"sqlite:///{copy}", run_id)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --------------------------------------------------------------------------------------------
# the file store


def _file_runs(path: Path) -> list[tuple[Path, str]]:
    """(run directory, name) of every active run at or under `path`, oldest first."""
    import yaml

    metas = [path / "meta.yaml"] + sorted(path.glob("*/meta.yaml")) + sorted(path.glob("*/*/meta.yaml")) + sorted(
        path.glob("mlruns/*/*/meta.yaml"))
    runs = []
    for meta in metas:
        if not meta.is_file() or not (meta.parent / "metrics").is_dir() or ".trash" in meta.parts:
            continue
        try:
            info = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if info.get("lifecycle_stage", "active") == "active":
            runs.append((info.get("start_time") or 0, meta.parent, str(info.get("run_name") or meta.parent.name)))
    return [(run, name) for _, run, name in sorted(runs, key=lambda r: (r[0], str(r[1])))]


def _file_run(run: Path) -> tuple[Points, dict[str, str]]:
    points: Points = {}
    for f in sorted(p for p in (run / "metrics").rglob("*") if p.is_file()):
        rows = []
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 3:  # timestamp value step
                rows.append((int(parts[2]), int(parts[0]), float(parts[1])))
        points[f.relative_to(run / "metrics").as_posix()] = [(s, v) for s, _, v in sorted(rows)]
    params = {p.relative_to(run / "params").as_posix(): p.read_text(encoding="utf-8").strip()
              for p in sorted((run / "params").rglob("*")) if p.is_file()} if (run / "params").is_dir() else {}
    return points, params


# --------------------------------------------------------------------------------------------
# the SQLite store


def _is_sqlite_store(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
        with _connect(path) as db:
            names = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    except (OSError, sqlite3.Error):
        return False
    return {"runs", "metrics"} <= names


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)


def _sqlite_runs(path: Path) -> list[tuple[str, str]]:
    with _connect(path) as db:
        rows = db.execute("select run_uuid, name from runs where lifecycle_stage = 'active' "
                          "order by start_time, run_uuid").fetchall()
    return [(r[0], r[1] or r[0]) for r in rows]


def _sqlite_run(path: Path, run: Optional[str]) -> tuple[Points, dict[str, str]]:
    if run is None:
        raise TrainlabError(f"'{path}': the MLflow store holds no active run")
    with _connect(path) as db:
        metrics = db.execute("select key, step, value, is_nan from metrics where run_uuid = ? "
                             "order by step, timestamp", (run,)).fetchall()
        params = db.execute("select key, value from params where run_uuid = ?", (run,)).fetchall()
    points: Points = {}
    for key, step, value, is_nan in metrics:
        points.setdefault(key, []).append((int(step), _stored(value, is_nan)))
    return points, {k: v for k, v in params}


def _stored(value: Any, is_nan: Any) -> float:
    """The SQLite store writes NaN as is_nan with 0, and +-inf as +-the largest double."""
    if is_nan:
        return math.nan
    value = float(value)
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value
