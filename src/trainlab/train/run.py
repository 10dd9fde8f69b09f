"""A run directory's life: create or reopen it, lock it, write config and env, train, report."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

from trainlab import __version__, hardware
from trainlab.config import RunConfig
from trainlab.errors import ConfigError, TrainlabError
from trainlab.files import atomic_write
from trainlab.monitor.sinks import truncate_after
from trainlab.rundir import CONFIG, RUN_DIRS, RUN_FILES, holds_run, is_foreign, saved_config
from trainlab.tasks import task_class
from trainlab.train import distributed
from trainlab.train.checkpoint import CheckpointManager
from trainlab.train.trainer import Trainer


def new_run_dir(preset: Optional[str]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{preset or 'run'}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@contextmanager
def run_lock(run_dir: Path):
    """One trainer per run directory; the kernel drops the lock when its owner dies."""
    path = run_dir / ".lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise TrainlabError(f"run directory '{run_dir}' is in use by process {owner}; wait for it or use another --run-dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_env(run_dir: Path, extra: dict) -> None:
    import numpy
    import torch

    env = {"trainlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "command": sys.argv, "cwd": os.getcwd(), "git_commit": git_commit(),
           "hardware": hardware.describe(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    (run_dir / "env.json").write_text(json.dumps(env, indent=1))


def prepare_run_dir(run_dir: Path, resume: bool, fresh: bool) -> None:
    """Check the run directory against the flags; writes nothing. `--resume` continues whatever there is to
    continue and otherwise starts; it refuses only a folder that is not a run directory at all."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainlabError(f"--run-dir '{run_dir}' is a file; give a directory")
    if is_foreign(run_dir):  # a run written among another tool's output or a project's files mixes the two
        raise TrainlabError(f"{'--resume given but ' if resume else ''}'{run_dir}' holds files that are not a "
                            f"trainlab run; give an empty or new --run-dir")
    if holds_run(run_dir) and not (resume or fresh):
        raise TrainlabError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it "
                            f"or --fresh to start over")


def clear_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


def check_resume_compatible(saved: RunConfig, new: RunConfig, run_dir: Path) -> None:
    for section in ("model", "data"):
        a, b = getattr(saved, section).model_dump(), getattr(new, section).model_dump()
        for key in a:
            if a[key] != b[key] and not (section == "model" and key == "vocab_size" and b[key] is None):
                raise ConfigError(f"cannot resume '{run_dir}' with {section}.{key}={b[key]!r}: the run was "
                                  f"trained with {a[key]!r}; use --fresh or another --run-dir")
    if saved.optim.name != new.optim.name:  # the checkpoint's optimizer state is the other optimizer's
        raise ConfigError(f"cannot resume '{run_dir}' with optim.name={new.optim.name!r}: the run was trained with "
                          f"{saved.optim.name!r}; use --fresh, or init_from the run with a new --run-dir")


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, fresh: bool = False,
          log: Callable[[str], None] = print, on_eval: Optional[Callable[[int, dict], bool]] = None) -> dict:
    """Check everything, then train. Bad input is found before anything is written or removed.

    Under torchrun every process runs this; rank 0 alone checks and writes the run directory."""
    dist = distributed.from_env()
    distributed.init(dist, hardware.resolve_device(cfg.train.device).type)
    if not dist.main:
        log = lambda s: None  # noqa: E731
    try:
        result = _train(cfg, Path(run_dir), resume, fresh, log, on_eval, dist)
        # all leave together: a process that tears gloo down while rank 0 still writes its last files can
        # abort ("terminate called without an active exception") and fail a finished job
        distributed.barrier(dist)
        return result
    finally:
        distributed.shutdown(dist)


def _train(cfg, run_dir: Path, resume: bool, fresh: bool, log, on_eval, dist) -> dict:
    t = cfg.train
    if not (t.max_steps or t.max_tokens or t.epochs or t.max_seconds):
        raise ConfigError("the run has no budget, so it would never end and its schedule would never decay: set one "
                          "of train.max_steps, train.max_tokens, train.epochs or train.max_seconds")
    task = task_class(cfg.task)
    if dist.main:
        prepare_run_dir(run_dir, resume, fresh)
        if resume and (run_dir / CONFIG).exists():
            check_resume_compatible(saved_config(run_dir), cfg, run_dir)
        data = task.prepare(cfg, log=log)
    distributed.barrier(dist)  # the others find the data cache ready
    if not dist.main:
        data = task.prepare(cfg, log=log)
    cfg = task.configure(cfg, data)
    init_weights = load_init_weights(cfg.init_from) if cfg.init_from else None
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    created = not run_dir.exists()
    started = False
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(dist)
    try:
        with (run_lock(run_dir) if dist.main else contextlib.nullcontext()):
            trainer = _open_trainer(cfg, data, run_dir, resume, init_weights, log, dist)
            trainer.on_eval = on_eval
            started = True
            result = trainer.fit(resumed=trainer.resumed)
    except TrainlabError:
        if created and not started:  # bad input found before training: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    result["run_dir"] = str(run_dir)
    return result


def _open_trainer(cfg: RunConfig, data, run_dir: Path, resume: bool, init_weights: Optional[dict], log,
                  dist) -> Trainer:
    """The trainer, continued from the newest intact checkpoint when resuming, with the run directory's
    files written (a start) or cut back to the checkpoint's step (a resume)."""
    trainer = Trainer(cfg, data, run_dir, log=log, dist=dist)
    if resume and (run_dir / CONFIG).exists():
        trainer.task.check_resume(run_dir)
    trainer.resumed = trainer.resume() if resume else False
    if resume and not trainer.resumed:
        log(f"--resume: '{run_dir}' has no intact checkpoint yet; starting from step 0")
    distributed.barrier(dist)
    if not trainer.resumed and init_weights is not None:  # every process, so all start from the same weights
        _load_init(trainer, cfg, init_weights)
    if dist.main and not trainer.resumed:
        clear_run(run_dir)
        atomic_write(run_dir / CONFIG, cfg.to_yaml())  # a kill leaves it whole or absent, never empty
        trainer.task.save_files(run_dir)
    elif dist.main:
        truncate_after(run_dir / "metrics.jsonl", trainer.progress.step)
        truncate_after(run_dir / "samples.jsonl", trainer.progress.step)
    if dist.main:
        write_env(run_dir, {"device": str(trainer.device), "precision": trainer.precision,
                            "data_cache": str(getattr(data, "directory", "")), "world_size": dist.world})
    distributed.barrier(dist)
    log(f"run {run_dir} | {cfg.task} | {trainer.model.num_params() / 1e6:.2f}M parameters | device "
        f"{trainer.device} | precision {trainer.precision}"
        + (f" | vocab {cfg.model.vocab_size}" if cfg.model.vocab_size else ""))
    log(f"{trainer.task.describe()} | effective batch "
        f"{cfg.train.batch_size} x {cfg.train.grad_accum} x {trainer.task.tokens_per_example:g}"
        + (f" x {dist.world} processes" if dist.active else "") + f" = {trainer.tokens_per_step:,} tokens/step")
    return trainer


def _load_init(trainer: Trainer, cfg: RunConfig, weights: dict) -> None:
    try:
        trainer.load_model_state(weights)
    except (ValueError, RuntimeError):
        hint = ""
        if any(".q_norm." in k for k in weights) != cfg.model.qk_norm:
            hint = f"; set model.qk_norm={str(not cfg.model.qk_norm).lower()} as its source has"
        from trainlab.models.gpt import init_hint  # n_kv_head, moe.shared_gate
        hint = hint or init_hint(weights, cfg.model) or _first_difference(weights, trainer.model.trainable_state())
        raise ConfigError(f"init_from '{cfg.init_from}': its weights do not fit this model's shape{hint}") from None


def _first_difference(theirs: dict, ours: dict) -> str:
    """Where two state dicts first differ, as a hint: a weight of another shape, or one only one side has."""
    for key, value in theirs.items():
        if key in ours and tuple(value.shape) != tuple(ours[key].shape):
            return f"; {key} is {list(value.shape)} there and {list(ours[key].shape)} here"
    extra = [k for k in theirs if k not in ours]
    missing = [k for k in ours if k not in theirs]
    if extra:
        return f"; it has {extra[0]}, which this model lacks"
    return f"; it lacks this model's {missing[0]}" if missing else ""


def load_init_weights(source: str) -> dict:
    """The best (else newest intact) weights of another run, or of a local transformers directory of a
    Llama- or Qwen3-architecture (causal LM) or BERT-architecture (masked LM) model, to start a new run from."""
    src = Path(source)
    if not src.is_dir():
        raise TrainlabError(f"init_from '{source}' is not a run directory")
    if (src / "config.json").exists() and not (src / "checkpoints").exists():
        from trainlab.models.hf import load_transformers_dir

        return load_transformers_dir(src)
    manager = CheckpointManager(src / "checkpoints", log=lambda s: None)
    step = manager.best_or_latest()
    if step is None:
        raise TrainlabError(f"init_from '{source}' holds no intact checkpoint")
    weights, _, _ = manager.load(step)
    return weights
