"""A trainlab run directory: metrics.jsonl, samples.jsonl, and the facts of its config.yaml and env.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainlab.doctor.readers.common import as_step
from trainlab.doctor.series import RunSeries, is_number
from trainlab.errors import TrainlabError
from trainlab.monitor.sinks import read_jsonl


def read_trainlab(run_dir: Path) -> RunSeries:
    rows = []
    for r in read_jsonl(run_dir / "metrics.jsonl"):  # a damaged row (a hand edit) is left out, not a traceback
        step = as_step(r.get("step"))
        if step is not None:
            rows.append({**r, "step": step})
    if not rows:
        raise TrainlabError(f"'{run_dir / 'metrics.jsonl'}' holds no metrics yet")
    series = RunSeries("trainlab", run_dir,
                       train=[r for r in rows if r.get("split") == "train"],
                       val=[r for r in rows if r.get("split") == "val"],
                       events=[r for r in rows if r.get("split") == "event"],
                       samples=read_jsonl(run_dir / "samples.jsonl"))
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    series.facts.update(_trainlab_facts(run_dir, env))
    series.facts["tokens_seen"] = max((r["tokens"] for r in rows if is_number(r.get("tokens"))), default=0)
    counted = [r for r in series.train if r["step"] and is_number(r.get("tokens")) and r["tokens"] > 0]
    if counted:  # the trainer's own count (all processes, SFT's mean example length) beats the config's
        series.facts["tokens_per_step"] = round(counted[-1]["tokens"] / counted[-1]["step"])
    return series


def _trainlab_facts(run_dir: Path, env: dict) -> dict[str, Any]:
    import yaml

    from trainlab.presets import build_config

    hw = env.get("hardware") or {}
    facts: dict[str, Any] = {"precision": env.get("precision"), "device": env.get("device"),
                             "cpu_bf16": hw.get("cpu_bf16"), **_gpu_facts(hw, env.get("device"))}
    try:
        cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    except Exception:  # a config from another version: the metrics alone still diagnose
        return facts
    facts.update(config=cfg, peak_lr=cfg.optim.lr, warmup_steps=cfg.schedule.warmup_steps,
                 schedule=cfg.schedule.name, min_lr_ratio=cfg.schedule.min_lr_ratio, grad_clip=cfg.optim.grad_clip,
                 tokens_per_step=_tokens_per_step(cfg, env), batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                 seq_len=cfg.model.seq_len, d_model=cfg.model.d_model, n_layer=cfg.model.n_layer,
                 vocab_size=cfg.model.vocab_size, dropout=cfg.model.dropout, weight_decay=cfg.optim.weight_decay,
                 patience=cfg.early_stopping.patience, data_source=cfg.data.source, max_steps=cfg.train.max_steps,
                 compile=cfg.train.compile)
    if cfg.model.vocab_size:
        from trainlab.models.base import param_counts
        from trainlab.tasks import meta_model

        counts = param_counts(meta_model(cfg))
        facts.update(params=counts["total"], embedding_params=counts["embedding"])
    return facts


def _gpu_facts(hw: dict, device: Any) -> dict[str, Any]:
    """The run's GPU: the trainer writes `cuda_devices` (names) and `cuda_capability` ("7.5") for every
    visible device, and the run used `device` ("cuda" is the first, "cuda:1" the second); env.json files
    from before name it under `gpu`."""
    names, caps = hw.get("cuda_devices"), hw.get("cuda_capability")
    index = 0
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    name = names[index] if isinstance(names, list) and index < len(names) else hw.get("gpu")
    cap = caps[index] if isinstance(caps, list) and index < len(caps) else hw.get("gpu_capability")
    return {"gpu_name": name if isinstance(name, str) else None,
            "gpu_capability": str(cap) if isinstance(cap, (str, int, float)) else None}


def _tokens_per_step(cfg, env: dict) -> int:
    """As the trainer counted them (`train/budget.py`): all processes, padding excluded."""
    from trainlab.tasks import task_class
    from trainlab.train.budget import StepSize

    world = int(env.get("world_size") or 1)
    return StepSize.of(cfg, *task_class(cfg.task).example_tokens(cfg), world).tokens
