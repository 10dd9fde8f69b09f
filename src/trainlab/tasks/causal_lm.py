"""Causal language modelling: predict each next token of a token stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import RunConfig
from trainlab.data.prepare import Prepared, Windows, eval_starts, prepare
from trainlab.data.tokenizers import Tokenizer, load_tokenizer
from trainlab.errors import ConfigError
from trainlab.tasks.base import (IGNORE, Batch, Forward, GenerationRequest, LoadedRun, Reduce, Task, TokenMetrics,
                                 chunks)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    # cross_entropy works from log-probabilities (log_softmax + NLL), never softmax then log
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, label_smoothing=label_smoothing)


def gpt_loss(cfg: RunConfig, forward: Forward, inputs: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross entropy; with a mixture of experts, plus the load-balancing loss, and for the train rows the
    expert load (most-loaded expert over the mean, worst layer) and the share of assignments dropped."""
    if not cfg.model.moe.experts:
        return lm_loss(forward(inputs), targets, cfg.train.label_smoothing), {}
    logits, aux, load, dropped = forward(inputs, with_aux=True)
    ce = lm_loss(logits, targets, cfg.train.label_smoothing)
    return ce + aux, {"loss_ce": ce.detach(), "loss_aux": aux.detach(),
                      "moe_max_load": (load.amax(-1) * load.shape[-1]).amax(), "moe_dropped": dropped.mean()}


def export_llama(run: LoadedRun, out: Path, chat_template: Optional[str] = None,
                 stop_strings: Optional[list[str]] = None) -> None:
    """A causal GPT as a Llama (Qwen3 with qk_norm) directory with its tokenizer."""
    from safetensors.torch import save_file

    from trainlab.models.hf import to_llama, write_llama_files

    save_file(to_llama(run.model.state_dict(), run.cfg.model), str(out / "model.safetensors"), metadata={"format": "pt"})
    write_llama_files(out, run.cfg.model, run.tokenizer, run.run_dir / "tokenizer.json", chat_template, stop_strings)


# `eval --data`: the share of another file put in its validation split (the whole file is evaluated)
EVAL_SPLIT = 0.45


class TokenTask(Task):
    """Shared by the tasks that read a tokenized text corpus (causal LM, masked LM, SFT)."""

    data: Prepared

    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> Prepared:
        return prepare(cfg.data, cfg.model.seq_len, log=log)

    @classmethod
    def configure(cls, cfg: RunConfig, data: Prepared) -> RunConfig:
        return cfg.with_vocab_size(data.tokenizer.vocab_size)

    def save_files(self, run_dir: Path) -> None:
        self.data.tokenizer.save(run_dir / "tokenizer.json")

    def check_resume(self, run_dir: Path) -> None:
        path = run_dir / "tokenizer.json"
        if path.exists() and path.read_text(encoding="utf-8") != self.data.tokenizer.to_json():
            raise ConfigError(f"cannot resume '{run_dir}': its tokenizer.json differs from the one data.tokenizer "
                              f"now gives; use --fresh or another --run-dir")

    def fingerprint(self) -> str:
        return self.data.tokenizer.fingerprint

    def describe(self) -> str:
        return f"train {len(self.data.train):,} tokens, val {len(self.data.val):,} tokens"

    def text_units(self, row: dict[str, float]) -> dict[str, float]:
        """Bits per character and per byte from bits per token, where the tokenizer knows them."""
        kind = self.data.tokenizer.kind
        if kind in ("char", "bpe"):
            row["bits_per_char"] = row["bits_per_token"] / self.data.chars_per_token
        if kind in ("byte", "bpe"):
            row["bits_per_byte"] = row["bits_per_token"] / self.data.bytes_per_token
        return row


    @classmethod
    def load_assets(cls, run_dir: Path) -> Tokenizer:
        return load_tokenizer(Path(run_dir) / "tokenizer.json")

    @classmethod
    def eval_config(cls, cfg: RunConfig, run_dir: Path, data_path: Optional[Path]) -> RunConfig:
        """Another file is tokenized with the run's own tokenizer. The whole file is evaluated (both splits, put
        together), so its split only has to leave a window on each side: near halves, not a tenth for validation."""
        if data_path is None:
            return cfg
        return cfg.updated({"data": {"source": str(data_path), "tokenizer": str(Path(run_dir) / "tokenizer.json"),
                                     "val_fraction": EVAL_SPLIT}})


class CausalLM(TokenTask):
    name = "causal_lm"
    token_loss = True
    doctor_checks = frozenset({"data", "probe", "samples"})

    def __init__(self, cfg: RunConfig, data: Prepared, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        self.windows = Windows(data.train, cfg.model.seq_len, cfg.train.seed)
        # the fixed validation subset: eval_batches global batches, shared out among the processes
        self.val_starts = eval_starts(len(data.val), cfg.model.seq_len,
                                      cfg.train.eval_batches * cfg.train.batch_size * world)

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.gpt import GPT

        return GPT(cfg.model)

    @property
    def examples_per_epoch(self) -> int:
        return self.windows.per_epoch

    def batch(self, indices: np.ndarray) -> Batch:
        rows = torch.from_numpy(self.windows.gather(self.windows.starts(indices)))
        rows = rows.to(self.device, non_blocking=True)
        return {"input": rows[:, :-1], "target": rows[:, 1:]}

    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return gpt_loss(self.cfg, forward, batch["input"], batch["target"])

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        """Loss, perplexity, bits and accuracy on the fixed validation subset (or on `tokens`)."""
        seq_len, bs = self.cfg.model.seq_len, self.cfg.train.batch_size
        source = self.data.val if tokens is None else tokens
        starts = self.val_starts if tokens is None else eval_starts(len(tokens), seq_len,
                                                                    self.cfg.train.eval_batches * bs * self.world)
        metrics = TokenMetrics()
        for part in chunks(starts[self.rank::self.world], bs):  # each process scores its share
            rows = np.stack([np.asarray(source[s:s + seq_len + 1], dtype=np.int64) for s in part])
            rows = torch.from_numpy(rows).to(self.device)
            with autocast():
                logits = forward(rows[:, :-1])
            metrics.add(logits, rows[:, 1:])
        return self.text_units(metrics.finish(reduce))

    def sample(self, model: nn.Module, n_tokens: int, prompt_tokens: int = 16) -> Optional[dict[str, str]]:
        from trainlab.models.generate import generate

        prompt = torch.from_numpy(np.asarray(self.data.val[:prompt_tokens], dtype=np.int64))[None].to(self.device)
        new = generate(model, prompt, n_tokens, temperature=0.8, top_k=40, seed=self.cfg.train.seed)
        tok = self.data.tokenizer
        return {"prompt": tok.decode(prompt[0].tolist()), "text": tok.decode(new[0].tolist())}

    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """The prompt's continuation; without a prompt, from a document boundary (eos) or a newline."""
        from trainlab.models.generate import generate

        r, tok = request, run.tokenizer
        ids = list(tok.encode(r.prompt)) if r.prompt else []
        if not ids:
            ids = [tok.eos_id] if tok.eos_id is not None else list(tok.encode("\n")[:1]) or [0]
        new = generate(run.model, torch.tensor([ids], dtype=torch.long), r.max_new_tokens, temperature=r.temperature,
                       top_k=r.top_k, top_p=r.top_p, repetition_penalty=r.repetition_penalty, seed=r.seed,
                       eos_id=tok.eos_id)
        return r.prompt + tok.decode(new[0].tolist())

    @classmethod
    def export_hf(cls, run: LoadedRun, out: Path) -> None:
        export_llama(run, out)
