"""A finished (or running) run, loaded for evaluation and generation. What differs by task is behind
the task's hooks (`load_assets`, `generate`, `eval_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from trainlab.errors import TrainlabError
from trainlab.rundir import saved_config
from trainlab.tasks import task_class
from trainlab.tasks.base import GenerationRequest, LoadedRun
from trainlab.train.checkpoint import CheckpointManager


def load_run(run_dir: Path) -> LoadedRun:
    """The run's best (else newest intact) checkpoint in its model, in eval mode, with its task's assets."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainlabError(f"run directory '{run_dir}' does not exist")
    cfg = saved_config(run_dir)
    manager = CheckpointManager(run_dir / "checkpoints")
    step = manager.best_or_latest()
    if step is None:
        raise TrainlabError(f"run directory '{run_dir}' has no intact checkpoint yet")
    weights, _, _ = manager.load(step)
    task = task_class(cfg.task)
    model = task.build_model(cfg)
    try:
        model.load_weights(weights)
    except (ValueError, RuntimeError):
        raise TrainlabError(f"checkpoint of '{run_dir}' does not fit its config.yaml") from None
    model.eval()
    return LoadedRun(run_dir, cfg, model, task.load_assets(run_dir), step)


def generate_text(run_dir: Path, request: GenerationRequest, log: Callable[[str], None] = lambda s: None) -> str:
    """What `trainlab generate` prints for this run (the task decides: a continuation, an answer, masks filled).
    A prompt with characters a character vocabulary lacks is noted through `log`: the model sees each as UNK."""
    run = load_run(run_dir)
    task = task_class(run.cfg.task)
    text = task.generate(run, request)  # first: a prompt the task refuses gets its one error line, no note
    missing = task.unknown_prompt_chars(run, request.prompt)
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log(f"note: the prompt holds {len(missing)} character{'s' if len(missing) > 1 else ''} the run's vocabulary "
            f"lacks ({shown}); the model reads each as the unknown token")
    return text


def evaluate_run(run_dir: Path, data_path: Optional[Path] = None) -> dict:
    """The task's validation metrics for the run's checkpoint, on its own validation split or on another file."""
    import numpy as np

    from trainlab.train.trainer import Trainer

    run = load_run(run_dir)
    if data_path is not None and not Path(data_path).exists():
        raise TrainlabError(f"--data '{data_path}' does not exist")
    task = task_class(run.cfg.task)
    cfg = task.eval_config(run.cfg, Path(run_dir), data_path).updated({"train": {"compile": False}})
    data = task.prepare(cfg, log=lambda s: None)
    trainer = Trainer(cfg, data, Path(run_dir))
    trainer.model.load_state_dict(run.model.state_dict())
    tokens = None
    if data_path is not None:  # the whole file, not only its validation share
        tokens = data.combined() if hasattr(data, "combined") else np.concatenate([np.asarray(data.train),
                                                                                    np.asarray(data.val)])
    result = trainer.evaluate(tokens)
    return {"run": str(run_dir), "step": run.step, "data": str(data_path or cfg.data.source), **result}
