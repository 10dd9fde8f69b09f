"""Readers: each turns one kind of log into a RunSeries with trainlab's metric names. `read` picks the
reader by what the path holds, or takes the one `--format` names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from trainlab.doctor.readers.common import FORMATS, classify
from trainlab.doctor.readers.console import read_console
from trainlab.doctor.readers.mlflow_store import is_mlflow, read_mlflow
from trainlab.doctor.readers.native import read_trainlab
from trainlab.doctor.readers.tools import read_hf_trainer_state, read_lightning_csv, read_tensorboard
from trainlab.doctor.readers.wandb_run import is_wandb, is_wandb_csv, read_wandb
from trainlab.doctor.series import RunSeries
from trainlab.errors import TrainlabError

__all__ = ["FORMATS", "classify", "detect", "read", "read_console", "read_hf_trainer_state", "read_lightning_csv",
           "read_mlflow", "read_tensorboard", "read_trainlab", "read_wandb"]

def _tensorboard(path: Path) -> RunSeries:
    return read_tensorboard(path if path.is_dir() else path.parent)


def _trainlab(path: Path) -> RunSeries:
    if not path.is_dir():
        return read_trainlab(path.parent)
    if (path / "metrics.jsonl").exists():
        return read_trainlab(path)
    runs = _trainlab_runs(path)
    if len(runs) != 1:
        raise TrainlabError(f"'{path}' holds {len(runs)} trainlab runs, not one: give one of them"
                            + (f", such as '{runs[0]}'" if runs else ""))
    series = read_trainlab(runs[0])
    series.notes.append(f"'{path}' holds one trainlab run; read '{runs[0]}'")
    return series


def _trainlab_runs(path: Path) -> list[Path]:
    """The trainlab run directories under a folder (a metrics.jsonl beside a config.yaml)."""
    return sorted(p.parent for p in path.rglob("metrics.jsonl") if (p.parent / "config.yaml").exists())


def _hf(path: Path) -> RunSeries:
    if not path.is_dir():
        return read_hf_trainer_state(path)
    if (path / "trainer_state.json").exists():
        return read_hf_trainer_state(path / "trainer_state.json")
    return _newest(path, "trainer_state.json", read_hf_trainer_state, "Trainer checkpoint (checkpoint-N/)")


def _lightning(path: Path) -> RunSeries:
    if not path.is_dir():
        return read_lightning_csv(path)
    if (path / "metrics.csv").exists():
        return read_lightning_csv(path / "metrics.csv")
    return _newest(path, "metrics.csv", read_lightning_csv, "Lightning version (version_N/)")


def _newest(path: Path, name: str, reader: Callable[[Path], RunSeries], each: str) -> RunSeries:
    """The newest `name` under a folder (a Trainer's output_dir of checkpoint-N/ folders, whose newest holds the
    whole log so far; a lightning_logs of version_N/ folders, one per start), saying so when there are several."""
    found = _nested(path, name)
    if not found:
        raise TrainlabError(f"'{path}' holds no {name}")
    newest = max(found, key=lambda f: f.stat().st_mtime)
    series = reader(newest)
    if len(found) > 1:
        series.notes.append(f"'{path}' holds {len(found)} {name} files (one per {each}); read the newest, "
                            f"'{newest}' (give another's folder to read it)")
    return series


def _nested(path: Path, name: str) -> list[Path]:
    """Files called `name` under a folder, one to three levels down."""
    return [f for depth in ("*", "*/*", "*/*/*") for f in path.glob(f"{depth}/{name}")]


READERS: dict[str, Callable[[Path], RunSeries]] = {
    "trainlab": _trainlab, "hf_trainer": _hf, "lightning": _lightning, "tensorboard": _tensorboard,
    "mlflow": read_mlflow, "wandb": read_wandb, "console": read_console,
}


def read(path: Path, fmt: Optional[str] = None) -> RunSeries:
    """The run at `path`, read by the reader `fmt` names, or by the one its contents call for."""
    path = Path(path)
    if not path.exists():
        raise TrainlabError(f"'{path}' does not exist")
    if fmt is not None and fmt not in READERS:
        raise TrainlabError(f"--format {fmt!r}: the known formats are {', '.join(FORMATS)}")
    return READERS[fmt or detect(path)](path)


def detect(path: Path) -> str:
    """The format a path holds, or one line naming the formats it could be."""
    path = Path(path)
    if path.is_dir():
        for marker, fmt in (("metrics.jsonl", "trainlab"), ("trainer_state.json", "hf_trainer"),
                            ("metrics.csv", "lightning")):
            if (path / marker).exists():
                return fmt
        if is_mlflow(path):
            return "mlflow"
        if is_wandb(path):
            return "wandb"
        nested = _trainlab_runs(path)
        if len(nested) > 1:  # an ablate or tune folder, or a folder of experiments: which one is meant?
            raise TrainlabError(f"'{path}' holds {len(nested)} trainlab runs, not one: give one of them, such as "
                                f"'{nested[0]}' (`trainlab ablate --report` compares a sweep's runs)")
        if nested:  # runs/ with one run in it: that run (its tb/ events would otherwise read as TensorBoard)
            return "trainlab"
        if next(path.rglob("events.out.tfevents.*"), None) is not None:
            return "tensorboard"
        if _nested(path, "trainer_state.json"):
            return "hf_trainer"
        if _nested(path, "metrics.csv"):
            return "lightning"
        raise TrainlabError(f"'{path}' holds no run this doctor reads; known formats: {', '.join(FORMATS)} "
                            f"(--format forces one)")
    name = path.name
    if name == "metrics.jsonl":
        return "trainlab"
    if name.startswith("events.out.tfevents."):
        return "tensorboard"
    if path.suffix == ".json":
        return "hf_trainer"
    if is_mlflow(path):
        return "mlflow"
    if is_wandb(path) or (path.suffix == ".csv" and is_wandb_csv(path)):
        return "wandb"
    if path.suffix == ".csv":
        return "lightning"
    if _is_text(path):
        return "console"
    raise TrainlabError(f"'{path}' is not a log this doctor reads; known formats: {', '.join(FORMATS)} "
                        f"(--format forces one)")


def _is_text(path: Path) -> bool:
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return b"\x00" not in head
