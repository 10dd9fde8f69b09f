"""Checkpoints: one folder per step, tensors in safetensors / weights-only torch files, JSON meta.

A checkpoint is written into a temporary folder, every file fsynced, `meta.json` (with the sha256
of every other file) written last, and the folder renamed into place; `last` and `best` are
relative symlinks replaced atomically. Loading verifies the checksums and never unpickles objects.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file

from trainlab.errors import CheckpointError
from trainlab.files import atomic_symlink, atomic_write, sha256_file, staged_dir

SCHEMA_VERSION = 1
STEP_PREFIX = "step-"


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int = 2, save_top_k: int = 1, log: Callable[[str], None] = print):
        self.root = Path(root)
        self.keep_last, self.save_top_k, self.log = keep_last, save_top_k, log

    # -- writing ----------------------------------------------------------------------------------
    def save(self, step: int, model_state: dict[str, torch.Tensor], train_state: dict[str, Any],
             meta: dict[str, Any], val_loss: Optional[float] = None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / step_dir_name(step)
        try:
            # a re-save of the same step (e.g. after a resume) replaces it
            with staged_dir(final, replace=True) as tmp:
                self._write(tmp, step, model_state, train_state, meta, val_loss)
        except OSError as err:
            raise CheckpointError(f"could not write checkpoint {final}: {err.strerror or err}; "
                                  f"earlier checkpoints are intact") from None
        atomic_symlink(self.root / "last", final.name)
        if val_loss is not None:
            best = self.best_meta()
            if best is None or best.get("val_loss") is None or val_loss < best["val_loss"]:
                atomic_symlink(self.root / "best", final.name)
        self.prune()
        return final

    @staticmethod
    def _write(folder: Path, step: int, model_state: dict[str, torch.Tensor], train_state: dict[str, Any],
               meta: dict[str, Any], val_loss: Optional[float]) -> None:
        """Tensors and state, each fsynced, then meta.json with their checksums, written last."""
        weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(weights, folder / "model.safetensors")
        torch.save(train_state, folder / "state.pt")
        files = {}
        for name in ("model.safetensors", "state.pt"):
            _fsync(folder / name)
            files[name] = sha256_file(folder / name)
        full_meta = {"schema_version": SCHEMA_VERSION, "step": step, "val_loss": val_loss, "files": files, **meta}
        atomic_write(folder / "meta.json", json.dumps(full_meta, indent=1), fsync=True)

    def prune(self) -> None:
        steps = self.valid_steps()
        keep = set(steps[-self.keep_last:])
        scored = sorted((m["val_loss"], s) for s, m in ((s, self.read_meta(s)) for s in steps)
                        if m and m.get("val_loss") is not None)
        keep.update(s for _, s in scored[: self.save_top_k])
        for link in ("last", "best"):
            target = self._link_step(link)
            if target is not None:
                keep.add(target)
        for s in steps:
            if s not in keep:
                shutil.rmtree(self.root / step_dir_name(s), ignore_errors=True)
        for stale in self.root.glob(f".{STEP_PREFIX}*"):  # temp folders of an interrupted save
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------
    def _link_step(self, name: str) -> Optional[int]:
        link = self.root / name
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        try:
            return int(target.rsplit("-", 1)[-1])
        except ValueError:
            return None

    def all_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.is_symlink() and p.name.startswith(STEP_PREFIX):
                try:
                    out.append(int(p.name[len(STEP_PREFIX):]))
                except ValueError:
                    pass
        return sorted(out)

    def valid_steps(self) -> list[int]:
        return [s for s in self.all_steps() if (self.root / step_dir_name(s) / "meta.json").exists()]

    def read_meta(self, step: int) -> Optional[dict]:
        try:
            return json.loads((self.root / step_dir_name(step) / "meta.json").read_text())
        except (OSError, ValueError):
            return None

    def best_meta(self) -> Optional[dict]:
        s = self._link_step("best")
        return self.read_meta(s) if s is not None else None

    def verify(self, step: int) -> Optional[str]:
        """None when the checkpoint is intact, else what is wrong with it."""
        folder = self.root / step_dir_name(step)
        meta = self.read_meta(step)
        if meta is None:
            return "meta.json is missing or unreadable"
        if meta.get("schema_version") != SCHEMA_VERSION:
            return f"schema version {meta.get('schema_version')} is not {SCHEMA_VERSION}"
        for name, digest in meta.get("files", {}).items():
            path = folder / name
            if not path.exists():
                return f"{name} is missing"
            if sha256_file(path) != digest:
                return f"{name} does not match its checksum"
        return None

    def latest_good(self) -> Optional[int]:
        """The newest intact checkpoint; a damaged newer one is reported in one line and skipped."""
        for step in reversed(self.all_steps()):
            problem = self.verify(step)
            if problem is None:
                return step
            self.log(f"warning: checkpoint {self.root / step_dir_name(step)} is damaged ({problem}); using an earlier one")
        return None

    def best_or_latest(self) -> Optional[int]:
        """The best checkpoint if intact, else the newest intact one (None when there is none)."""
        best = self._link_step("best")
        if best is not None and self.verify(best) is None:
            return best
        return self.latest_good()

    def load(self, step: int, device: str | torch.device = "cpu") -> tuple[dict, dict, dict]:
        folder = self.root / step_dir_name(step)
        problem = self.verify(step)
        if problem:
            raise CheckpointError(f"checkpoint {folder} is damaged: {problem}")
        weights = load_file(folder / "model.safetensors", device=str(device))
        try:
            state = torch.load(folder / "state.pt", map_location=device, weights_only=True)
        except Exception as err:  # weights_only refuses anything but tensors and plain containers
            raise CheckpointError(f"checkpoint {folder}/state.pt holds objects other than tensors and plain data; "
                                  f"refusing to load it ({type(err).__name__})") from None
        return weights, state, self.read_meta(step) or {}


def load_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=device)
