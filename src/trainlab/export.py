"""Export a run's best checkpoint as a transformers directory. The task writes the files
(`Task.export_hf`: Llama or Qwen3 for a causal LM, BERT for a masked LM); this module makes the
directory appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from trainlab.errors import TrainlabError
from trainlab.files import staged_dir
from trainlab.inference import load_run
from trainlab.tasks import task_class


def export_hf(run_dir: Path, out: Path) -> Path:
    """Write the run's best checkpoint as a transformers directory; built in a temporary folder and renamed."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TrainlabError(f"--out '{out}' exists and is not empty")
    run = load_run(run_dir)
    with staged_dir(out) as tmp:
        task_class(run.cfg.task).export_hf(run, tmp)
        kind = getattr(run.tokenizer, "kind", None)
        (tmp / "trainlab_run.json").write_text(json.dumps({"run": str(run_dir), "step": run.step, "task": run.cfg.task,
                                                           "tokenizer": kind}))
    return out


__all__ = ["export_hf"]
