"""What a run trains, behind one small protocol the trainer, evaluation and generation share.

A task owns its data (prepared once, rank 0 first), builds its model, turns a list of global example
indices into a batch, computes the loss (with named components that go to the metrics) and
evaluates on a fixed validation subset. Everything else (optimizer, schedule, precision, budgets,
guards, checkpoints, monitoring) belongs to the trainer and is the same for every task.

    causal_lm         next-token prediction on a token stream (pretraining)
    sft               instruction fine-tuning: loss on response tokens only
    masked_lm         BERT-style masked-token prediction
    series_tokenizer  Kronos-style candle tokenizer (binary spherical quantisation)
    series_forecast   autoregressive forecaster over a frozen series tokenizer's codes
"""

from __future__ import annotations

import importlib

from trainlab.tasks.base import Task

DEFAULT_TASK = "causal_lm"
TASKS = {
    "causal_lm": "trainlab.tasks.causal_lm:CausalLM",
    "sft": "trainlab.tasks.sft:SFT",
    "masked_lm": "trainlab.tasks.masked_lm:MaskedLM",
    "series_tokenizer": "trainlab.tasks.series_tokenizer:SeriesTokenizer",
    "series_forecast": "trainlab.tasks.series_forecast:SeriesForecast",
}


def task_class(name: str) -> type[Task]:
    """The registered task of this name (a config's `task` was checked against TASKS when it was built)."""
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_sections() -> dict[str, type]:
    """Every registered task's own config sections by name; two tasks may share one (the same class)."""
    sections: dict[str, type] = {}
    for name in TASKS:
        for key, section in task_class(name).sections.items():
            if sections.setdefault(key, section) is not section:
                raise TypeError(f"config section '{key}' is declared by two tasks with different classes")
    return sections


def prepared(cfg, log=print):
    """The task's data, and the config with the sizes that come from it."""
    task = task_class(cfg.task)
    data = task.prepare(cfg, log=log)
    return task.configure(cfg, data), data


def build_model(cfg):
    return task_class(cfg.task).build_model(cfg)


def meta_model(cfg):
    """The run's model on the meta device: shapes and counts without memory or initialisation."""
    import torch

    with torch.device("meta"):
        return build_model(cfg)


__all__ = ["DEFAULT_TASK", "Task", "TASKS", "build_model", "meta_model", "prepared", "task_class", "task_sections"]
