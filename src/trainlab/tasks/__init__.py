"""What a run trains, behind one small protocol the trainer, evaluation and generation share.

A task owns its data (prepared once, rank 0 first), builds its model, turns a list of global example
indices into a batch, computes the loss (with named components that go to the metrics) and
evaluates on a fixed validation subset. Everything else (optimizer, schedule, precision, budgets,
guards, checkpoints, monitoring) belongs to the trainer and is the same for every task.

    causal_lm         next-token prediction on a token stream (pretraining)
    sft               instruction fine-tuning: loss on response tokens only
    masked_lm         BERT-style masked-token prediction
    series_tokenizer  Kronos-style candle tokenizer (binary spherical quantisation)
"""

from __future__ import annotations

import importlib

from trainlab.tasks.base import Task

TASKS = {
    "causal_lm": "trainlab.tasks.causal_lm:CausalLM",
    "sft": "trainlab.tasks.sft:SFT",
    "masked_lm": "trainlab.tasks.masked_lm:MaskedLM",
    "series_tokenizer": "trainlab.tasks.series_tokenizer:SeriesTokenizer",
}


def task_class(name: str) -> type[Task]:
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def prepared(cfg, log=print):
    """The task's data, and the config with the sizes that come from it."""
    task = task_class(cfg.task)
    data = task.prepare(cfg, log=log)
    return task.configure(cfg, data), data


def build_model(cfg):
    return task_class(cfg.task).build_model(cfg)


__all__ = ["Task", "TASKS", "build_model", "prepared", "task_class"]
