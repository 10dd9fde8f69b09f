"""Where metrics go: metrics.jsonl (the contract), TensorBoard, and the console."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

from trainlab.files import atomic_write

WALL_CLOCK_KEYS = ("elapsed_s", "tokens_per_s", "time", "step_time_s", "data_wait_frac", "mfu", "peak_memory_mb")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class JsonlSink:
    """Appends one JSON object per line, flushed at once so a killed run loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fh = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.fh.write(json.dumps({k: _clean(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
        self.fh.flush()

    def truncate_after(self, step: int, keep_events: bool = False) -> None:
        self.fh.close()
        truncate_after(self.path, step, keep_events)
        self.fh = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self.fh.close()


def truncate_after(path: Path, step: int, keep_events: bool = False) -> None:
    """Drop rows written after `step` (work lost by a kill or undone by a rollback); events can stay."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if row.get("step", 0) <= step or (keep_events and row.get("split") == "event"):
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, "".join(kept))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's .jsonl log; [] when it does not exist yet. A line cut short by a kill is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


class TensorBoardSink:
    def __init__(self, logdir: Path, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def write(self, row: dict[str, Any]) -> None:
        split, step = row.get("split"), row.get("step", 0)
        if split not in ("train", "val"):
            return
        for key, value in row.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class Console:
    """A live progress line on a terminal; plain log lines otherwise (CI, files, pipes)."""

    def __init__(self, total_hint: Optional[int], stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.total = total_hint
        self.last_val: Optional[float] = None
        self._last_plain = 0.0
        self._live = None
        if self.tty:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._live = Progress(TextColumn("[bold]step {task.completed}"), BarColumn(),
                                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                  console=RichConsole(file=self.stream), transient=False)
            self._task = self._live.add_task("train", total=total_hint, info="")
            self._live.start()

    def print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, row: dict[str, Any], fraction: float) -> None:
        val = f" val {self.last_val:.4f}" if self.last_val is not None else ""
        info = (f"loss {row['loss']:.4f}{val} lr {row['lr']:.2e} {row.get('tokens_per_s', 0):,.0f} tok/s")
        if self._live is not None:
            total = self.total or max(int(row["step"] / max(fraction, 1e-9)), row["step"])
            self._live.update(self._task, completed=row["step"], total=total, info=info)
        elif time.monotonic() - self._last_plain > 5 or fraction >= 1:
            self._last_plain = time.monotonic()
            self.print(f"step {row['step']:>6} | {info} | {100 * fraction:5.1f}%")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


class _Null:
    """What processes other than rank 0 write to: nothing."""

    last_val = None

    def write(self, row: dict[str, Any]) -> None:
        pass

    def truncate_after(self, step: int, keep_events: bool = False) -> None:
        pass

    def print(self, text: str) -> None:
        pass

    def update(self, row: dict[str, Any], fraction: float) -> None:
        pass

    def close(self) -> None:
        pass


class Sinks:
    """Everything a run writes as it trains: metrics.jsonl and TensorBoard (every row), samples.jsonl, and
    the console. Only the main process writes; the others get sinks that drop everything."""

    def __init__(self, run_dir: Path, total_steps: Optional[int], resumed_at: Optional[int] = None, main: bool = True):
        if main:
            self.metrics, self.samples = JsonlSink(run_dir / "metrics.jsonl"), JsonlSink(run_dir / "samples.jsonl")
            self.tb = TensorBoardSink(run_dir / "tb", purge_step=None if resumed_at is None else resumed_at + 1)
            self.console = Console(total_steps)
        else:
            self.metrics = self.samples = self.tb = self.console = _Null()

    def emit(self, row: dict[str, Any]) -> None:
        """A metrics row (train, val or event): to metrics.jsonl and TensorBoard."""
        self.metrics.write(row)
        self.tb.write(row)

    def sample(self, row: dict[str, Any]) -> None:
        self.samples.write(row)

    def say(self, text: str) -> None:
        self.console.print(text)

    def progress(self, row: dict[str, Any], fraction: float) -> None:
        self.console.update(row, fraction)

    def rewind(self, step: int) -> None:
        """Forget the rows after `step` (a rollback undid them); event rows stay."""
        for sink in (self.metrics, self.samples):
            sink.truncate_after(step, keep_events=True)

    def close(self) -> None:
        self.console.close()
        for sink in (self.metrics, self.samples, self.tb):
            sink.close()
