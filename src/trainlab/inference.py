"""Loading a finished (or running) run for evaluation and generation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from trainlab.config import RunConfig, build_config
from trainlab.data.tokenizers import Tokenizer, load_tokenizer
from trainlab.errors import TrainlabError


@dataclass
class LoadedRun:
    cfg: RunConfig
    model: nn.Module
    tokenizer: Optional[Tokenizer]
    step: int


def load_run(run_dir: Path) -> LoadedRun:
    from trainlab.train.checkpoint import CheckpointManager
    from trainlab.train.run import saved_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainlabError(f"run directory '{run_dir}' does not exist")
    cfg = build_config(saved_config(run_dir))
    manager = CheckpointManager(run_dir / "checkpoints")
    step = manager.best_or_latest()
    if step is None:
        raise TrainlabError(f"run directory '{run_dir}' has no intact checkpoint yet")
    weights, _, _ = manager.load(step)
    from trainlab.tasks import build_model

    model = build_model(cfg)
    try:
        model.load_weights(weights)
    except (ValueError, RuntimeError):
        raise TrainlabError(f"checkpoint of '{run_dir}' does not fit its config.yaml") from None
    model.eval()
    tokenizer = None if cfg.task == "series_tokenizer" else load_tokenizer(run_dir / "tokenizer.json")  # candles: no tokens
    return LoadedRun(cfg, model, tokenizer, step)


def generate_text(run_dir: Path, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                  repetition_penalty: float, seed: Optional[int]) -> str:
    """The continuation of `prompt`; for a masked LM, a newline and the prompt with its [MASK]s filled
    in (greedy), then the `top_k` (default 5) candidates of each mask."""
    from trainlab.generate import generate

    run = load_run(run_dir)
    if run.cfg.task == "sft":
        return "\n" + sft_reply(run, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    if run.cfg.task == "masked_lm":
        return "\n" + fill_mask_text(run, prompt, top_k or 5)
    ids = list(run.tokenizer.encode(prompt)) if prompt else []
    if not ids:  # no prompt: start from a document boundary (eos) or a newline
        nl = run.tokenizer.encode("\n")
        ids = [run.tokenizer.eos_id] if run.tokenizer.eos_id is not None else list(nl[:1]) or [0]
    x = torch.tensor([list(ids)], dtype=torch.long)
    new = generate(run.model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   repetition_penalty=repetition_penalty, seed=seed, eos_id=run.tokenizer.eos_id)
    return run.tokenizer.decode(new[0].tolist())


def sft_reply(run: LoadedRun, prompt: str, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
              repetition_penalty: float, seed: Optional[int]) -> str:
    """An SFT run's answer: the prompt wrapped in the run's chat template, generation stopped at its end marker."""
    from trainlab.data.sft import Template
    from trainlab.tasks.sft import reply

    template = Template(run.cfg.sft, run.tokenizer)
    return reply(run.model, template, template.prompt(prompt), max_new_tokens, temperature, top_k, top_p,
                 repetition_penalty, seed)


def fill_mask_text(run: LoadedRun, prompt: str, top: int = 5) -> str:
    """A masked LM's answer to a prompt holding [MASK]s: the prompt with each filled by its most likely
    token, then each mask's `top` candidates with their probabilities."""
    from trainlab.tasks.masked_lm import MASK_TOKEN, encode_with_masks, fill_masks, mask_id

    if MASK_TOKEN not in prompt:
        raise TrainlabError(f"this run is a masked LM: put {MASK_TOKEN} where --prompt should be filled in, "
                            f"e.g. --prompt \"To be, or not to {MASK_TOKEN}\"")
    tok, mask = run.tokenizer, mask_id(run.tokenizer)
    ids = encode_with_masks(tok, prompt, mask)
    if len(ids) > run.cfg.model.seq_len:
        raise TrainlabError(f"--prompt is {len(ids)} tokens; this model reads at most model.seq_len="
                            f"{run.cfg.model.seq_len}")
    filled, candidates = fill_masks(run.model, ids, mask, top)
    lines = [tok.decode(filled)]
    for k, options in enumerate(candidates, 1):
        lines.append(f"{MASK_TOKEN} {k}: " + " | ".join(f"{tok.decode([i])!r} {p:.3f}" for i, p in options))
    return "\n".join(lines)


def evaluate_run(run_dir: Path, data_path: Optional[Path] = None) -> dict:
    from trainlab.tasks import task_class
    from trainlab.train.trainer import Trainer

    run = load_run(run_dir)
    cfg = run.cfg
    data_cfg = cfg.data
    if data_path is not None:
        if not Path(data_path).exists():
            raise TrainlabError(f"--data '{data_path}' does not exist")
        data_cfg = data_cfg.model_copy(update={"source": str(data_path), "tokenizer": str(Path(run_dir) / "tokenizer.json")})
    if cfg.task == "sft":  # the run's own tokenizer: init_from mattered only when training started
        data_cfg = data_cfg.model_copy(update={"tokenizer": str(Path(run_dir) / "tokenizer.json")})
        cfg = cfg.model_copy(update={"init_from": None})
    cfg = cfg.model_copy(update={"data": data_cfg, "train": cfg.train.model_copy(update={"compile": False})})
    data = task_class(cfg.task).prepare(cfg, log=lambda s: None)
    trainer = Trainer(cfg, data, Path(run_dir))
    trainer.model.load_state_dict(run.model.state_dict())
    tokens = None
    if data_path is not None:
        import numpy as np

        tokens = data.combined() if hasattr(data, "combined") else np.concatenate([np.asarray(data.train),
                                                                                    np.asarray(data.val)])
    result = trainer.evaluate(tokens)
    return {"run": str(run_dir), "step": run.step, "data": str(data_path or cfg.data.source), **result}
