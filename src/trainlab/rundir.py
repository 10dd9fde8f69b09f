"""Reading a run directory: the names of its entries, whether a folder holds a run, its saved config.

The trainer writes a run directory and every other command reads it; this module is what they share.
The layout (DESIGN.md's contract):

    config.yaml  env.json  metrics.jsonl  samples.jsonl  tokenizer.json  series.json
    diagnosis.json  report.html  checkpoints/  tb/  verify/  forecasts/  eval/  .lock
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainlab.config import RunConfig
from trainlab.errors import TrainlabError
from trainlab.presets import build_config

CONFIG, METRICS, SAMPLES, ENV, LOCK = "config.yaml", "metrics.jsonl", "samples.jsonl", "env.json", ".lock"
RUN_FILES = (CONFIG, ENV, METRICS, SAMPLES, "tokenizer.json", "series.json", "diagnosis.json", "report.html")
RUN_DIRS = ("checkpoints", "tb")
# everything a run directory may hold: a folder holding none of these is not a run directory
ENTRIES = RUN_FILES + RUN_DIRS + ("verify", "forecasts", "eval", "forecast_eval.json", LOCK)


def holds_run(run_dir: Path) -> bool:
    """Whether training started here: a config was written, metrics logged or a checkpoint saved."""
    return any((Path(run_dir) / name).exists() for name in (CONFIG, METRICS, "checkpoints"))


def is_foreign(run_dir: Path) -> bool:
    """A folder holding files but none of a run directory's entries (another tool's output, a project folder).
    Hidden files (.DS_Store, .gitkeep) do not count: a folder a file manager or git touched is still empty."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}
    return bool(names) and not names & set(ENTRIES) and not any(n.startswith("reconstruction-") for n in names)


def saved_tree(run_dir: Path) -> dict[str, Any]:
    """The run's config.yaml as a tree of keys."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise TrainlabError(f"run directory '{run_dir}' has no {CONFIG}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise TrainlabError(f"'{path}' is not a readable config") from None
    if not isinstance(tree, dict):
        raise TrainlabError(f"'{path}' is not a readable config")
    return tree


def saved_config(run_dir: Path) -> RunConfig:
    """The run's config.yaml, validated."""
    return build_config(saved_tree(run_dir))
