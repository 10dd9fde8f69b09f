"""Masked language modelling (BERT): predict the tokens at a random 15% of each window's positions.

Of the predicted positions, 80% show [MASK] in the input, 10% a random token and 10% the true token
(Devlin et al., 2019, section 3.1); the loss counts the predicted positions only. The [MASK] token is
the id one past the tokenizer's vocabulary (model.vocab_size = tokenizer vocabulary + 1), so char,
byte and BPE tokenizers all work unchanged and no text can ever encode to it; the hf export adds it
to the tokenizer.json as the special token "[MASK]" with that id. A tokenizer.json that has its own
[MASK] (a BERT tokenizer) keeps it.

Each training window's masking is a pure function of (train.seed, example index), so a resumed run
sees exactly the batches an uninterrupted one would. The validation subset is masked once with a
fixed seed, the same for every evaluation and every run, so runs of different seeds are compared on
the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from pydantic import Field, model_validator

from trainlab.config import RunConfig, Section
from trainlab.data.prepare import Prepared, Windows, eval_starts
from trainlab.data.tokenizers import HFTokenizer, Tokenizer
from trainlab.errors import ConfigError
from trainlab.tasks.base import IGNORE, Batch, Forward, GenerationRequest, LoadedRun, Reduce, TokenMetrics, chunks
from trainlab.tasks.causal_lm import TokenTask, lm_loss

MASK_TOKEN = "[MASK]"
TRAIN_STREAM, VAL_STREAM = 1, 2  # separate random streams for training and validation masking
VAL_SEED = 0  # validation masking does not depend on train.seed


class MLMConfig(Section):
    """Masking of the masked LM (task masked_lm)."""

    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)
    """Share of each sequence's positions the masked LM predicts (BERT's 15%), rounded, at least one."""
    mask_fraction: float = Field(0.8, ge=0.0, le=1.0)
    """Of the predicted positions, the share whose input becomes [MASK]."""
    random_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Of the predicted positions, the share whose input becomes a random token; the rest stay unchanged."""

    @model_validator(mode="after")
    def _fractions_fit(self) -> "MLMConfig":
        if self.mask_fraction + self.random_fraction > 1.0 + 1e-9:
            raise ValueError(f"mlm.mask_fraction ({self.mask_fraction}) + mlm.random_fraction "
                             f"({self.random_fraction}) cannot exceed 1")
        return self


def predicted_count(mlm: MLMConfig, seq_len: int) -> int:
    """Positions predicted per window: mask_prob of them, rounded, at least one."""
    return max(1, min(seq_len, round(mlm.mask_prob * seq_len)))


@dataclass
class Masking:
    """How a window's input is corrupted: the mask id and the ids a random replacement is drawn from."""

    mlm: MLMConfig
    seq_len: int
    mask_id: int
    random_vocab: int

    @property
    def count(self) -> int:
        return predicted_count(self.mlm, self.seq_len)

    def window(self, tokens: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(input, predicted positions) of one window; the same key always gives the same masking."""
        rng = np.random.default_rng(key)
        positions = np.sort(rng.choice(len(tokens), self.count, replace=False))
        kind = rng.random(self.count)
        replacement = rng.integers(0, self.random_vocab, self.count)
        masked = kind < self.mlm.mask_fraction
        randomised = ~masked & (kind < self.mlm.mask_fraction + self.mlm.random_fraction)
        inputs = tokens.copy()
        inputs[positions[masked]] = self.mask_id
        inputs[positions[randomised]] = replacement[randomised]
        return inputs, positions

    def rows(self, windows: np.ndarray, keys: list[list[int]]) -> Batch:
        """A batch: input (B, T), predicted positions (B, N) and target (B, T), IGNORE where not predicted."""
        inputs, positions = zip(*(self.window(w, k) for w, k in zip(windows, keys)))
        inputs, positions = np.stack(inputs), np.stack(positions)
        target = np.full_like(windows, IGNORE)
        np.put_along_axis(target, positions, np.take_along_axis(windows, positions, axis=1), axis=1)
        return {"input": torch.from_numpy(inputs), "positions": torch.from_numpy(positions),
                "target": torch.from_numpy(target)}


def unigram_entropy(targets: torch.Tensor) -> float:
    """Entropy (nats) of the target tokens' own frequencies: the loss of the best model that ignores
    context (measured on these very targets, so slightly optimistic)."""
    ids = targets[targets != IGNORE]
    if not ids.numel():
        return 0.0
    p = torch.bincount(ids).double()
    p = p[p > 0] / ids.numel()
    return float(-(p * p.log()).sum())


def encode_with_masks(tokenizer: Tokenizer, text: str, mask_id: int) -> list[int]:
    """Token ids of `text` with each literal [MASK] as the mask id. With a BPE tokenizer a space before
    [MASK] belongs to the masked word (byte-level BPE folds the space into the word's token)."""
    parts = text.split(MASK_TOKEN)
    ids: list[int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not last and tokenizer.kind == "bpe" and part.endswith(" "):
            part = part[:-1]
        if part:
            ids.extend(int(t) for t in tokenizer.encode(part))
        if not last:
            ids.append(mask_id)
    return ids


def decode_with_masks(tokenizer: Tokenizer, ids: list[int], mask_id: int) -> str:
    pieces, run = [], []
    for t in ids:
        if t == mask_id:
            pieces.append(tokenizer.decode(run) + MASK_TOKEN)
            run = []
        else:
            run.append(t)
    return "".join(pieces) + tokenizer.decode(run)


@torch.no_grad()
def fill_masks(model: nn.Module, ids: list[int], mask_id: int, top: int = 5) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """The ids with each mask replaced by its most likely token, and the `top` candidates (id,
    probability) of each mask, left to right. [MASK] itself is never proposed."""
    x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    where = (x[0] == mask_id).nonzero().flatten()
    logits = model(x, where[None]).float()[0]
    logits[:, mask_id] = float("-inf")
    probs = logits.softmax(-1)
    best = probs.topk(min(top, probs.shape[-1]), dim=-1)
    filled = list(ids)
    for k, pos in enumerate(where.tolist()):
        filled[pos] = int(best.indices[k, 0])
    candidates = [[(int(i), float(p)) for i, p in zip(best.indices[k], best.values[k])] for k in range(len(where))]
    return filled, candidates


class MaskedLM(TokenTask):
    name = "masked_lm"
    token_loss = True
    sections = {"mlm": MLMConfig}
    doctor_checks = frozenset({"data"})

    def __init__(self, cfg: RunConfig, data: Prepared, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        seq_len = cfg.model.seq_len
        self.windows = Windows(data.train, seq_len, cfg.train.seed)
        self.masking = Masking(cfg.mlm, seq_len, mask_id(data.tokenizer), data.tokenizer.vocab_size)
        # the fixed validation subset, masked once: eval_batches global batches, shared out among the processes
        starts = eval_starts(len(data.val), seq_len, cfg.train.eval_batches * cfg.train.batch_size * world)
        self.val = self.masked_subset(data.val, starts)
        self.val_unigram_entropy = unigram_entropy(self.val["target"])

    @classmethod
    def configure(cls, cfg: RunConfig, data: Prepared) -> RunConfig:
        if cfg.model.moe.experts:
            raise ConfigError("model.moe.experts must be 0 for task masked_lm: the BERT encoder has dense "
                              "feed-forward layers only")
        if cfg.model.qk_norm:
            raise ConfigError("model.qk_norm must be false for task masked_lm: the BERT encoder normalises its "
                              "layers after attention, not its queries and keys")
        need = max(mask_id(data.tokenizer) + 1, data.tokenizer.vocab_size)
        if cfg.model.vocab_size is not None and cfg.model.vocab_size < need:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} leaves no room for [MASK]: the masked LM "
                              f"needs {need} ids (the tokenizer's and [MASK]); remove it or raise it")
        return cfg.with_vocab_size(need)

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.bert import BertMLM

        seq_len = cfg.model.seq_len
        return BertMLM(cfg.model, predicted_fraction=predicted_count(cfg.mlm, seq_len) / seq_len)

    @property
    def examples_per_epoch(self) -> int:
        return self.windows.per_epoch

    @classmethod
    def example_tokens(cls, cfg: RunConfig) -> tuple[float, float]:
        """Every position is read; only the masked share is predicted."""
        return float(cfg.model.seq_len), float(predicted_count(cfg.mlm, cfg.model.seq_len))

    def masked_subset(self, tokens: Any, starts: np.ndarray) -> Batch:
        seq_len = self.cfg.model.seq_len
        windows = np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64) for s in starts])
        return self.masking.rows(windows, [[VAL_SEED, VAL_STREAM, j] for j in range(len(starts))])

    def batch(self, indices: np.ndarray) -> Batch:
        windows = self.windows.gather(self.windows.starts(indices))[:, :-1]
        rows = self.masking.rows(windows, [[self.cfg.train.seed, TRAIN_STREAM, int(i)] for i in indices])
        return {k: v.to(self.device, non_blocking=True) for k, v in rows.items()}

    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        positions = batch["positions"]
        logits = forward(batch["input"], positions)
        return lm_loss(logits, batch["target"].gather(1, positions), self.cfg.train.label_smoothing), {}

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        """Loss, accuracy, top-5 and calibration on the predicted positions of the fixed validation subset
        (or of `tokens`), the loss on those showing [MASK], and the unigram entropy of the targets."""
        subset, entropy = self.val, self.val_unigram_entropy
        if tokens is not None:
            starts = eval_starts(len(tokens), self.cfg.model.seq_len,
                                 self.cfg.train.eval_batches * self.cfg.train.batch_size * self.world)
            subset = self.masked_subset(tokens, starts)
            entropy = unigram_entropy(subset["target"])
        metrics, at_mask = TokenMetrics(), TokenMetrics()
        share = np.arange(len(subset["input"]))[self.rank::self.world]  # each process scores its share
        for part in chunks(share, self.cfg.train.batch_size):
            rows = {k: v[part].to(self.device) for k, v in subset.items()}
            with autocast():
                logits = forward(rows["input"], rows["positions"])
            targets = rows["target"].gather(1, rows["positions"])
            metrics.add(logits, targets)
            shown = rows["input"].gather(1, rows["positions"])
            at_mask.add(logits, targets.masked_fill(shown != self.masking.mask_id, IGNORE))
        # loss_at_mask: the positions showing [MASK] alone, where the input cannot give the answer away
        return {**self.text_units(metrics.finish(reduce)), "loss_at_mask": at_mask.finish(reduce)["loss"],
                "unigram_entropy": entropy}

    def sample(self, model: nn.Module, n_tokens: int) -> Optional[dict[str, str]]:
        """The first validation window (up to n_tokens of it) with its [MASK]s filled in."""
        ids = self.val["input"][0, :max(n_tokens, 1)].tolist()
        mask = self.masking.mask_id
        if mask not in ids:
            return None
        was_training = model.training
        model.eval()
        filled, _ = fill_masks(model, ids, mask)
        model.train(was_training)
        tok = self.data.tokenizer
        # "filled", not "text": a filled-in window is no continuation for the doctor's repetition check
        return {"prompt": decode_with_masks(tok, ids, mask), "filled": tok.decode(filled)}

    def describe(self) -> str:
        m, seq_len = self.cfg.mlm, self.cfg.model.seq_len
        keep = 1 - m.mask_fraction - m.random_fraction
        return (f"{super().describe()} | predicting {self.masking.count} of {seq_len} positions per window "
                f"({m.mask_fraction:.0%} [MASK], {m.random_fraction:.0%} random, {keep:.0%} unchanged)")


    # -- a finished run ----------------------------------------------------------------------------------
    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """The prompt, then on a new line the prompt with its [MASK]s filled in (greedy) and the `top_k`
        (default 5) candidates of each mask."""
        return request.prompt + "\n" + fill_mask_text(run, request.prompt, request.top_k or 5)

    @classmethod
    def unknown_prompt_chars(cls, run: LoadedRun, prompt: str) -> list[str]:
        return super().unknown_prompt_chars(run, prompt.replace(MASK_TOKEN, ""))  # [MASK] has its own id

    @classmethod
    def export_hf(cls, run: LoadedRun, out: Path) -> None:
        """A BertForMaskedLM directory; a BPE tokenizer.json gains [MASK] with the model's id for it."""
        from safetensors.torch import save_file

        from trainlab.models.hf import to_bert, write_bert_files

        save_file(to_bert(run.model.state_dict(), run.cfg.model), str(out / "model.safetensors"), metadata={"format": "pt"})
        write_bert_files(out, run.cfg.model, run.tokenizer, run.run_dir / "tokenizer.json", MASK_TOKEN,
                         mask_id(run.tokenizer))


def mask_id(tokenizer: Tokenizer) -> int:
    """The [MASK] id: the tokenizer's own [MASK] token where it has one (a BERT tokenizer.json given as
    data.tokenizer), else one past its vocabulary."""
    if isinstance(tokenizer, HFTokenizer):
        own = tokenizer.tok.token_to_id(MASK_TOKEN)
        if own is not None:
            return own
    return tokenizer.vocab_size


def fill_mask_text(run: LoadedRun, prompt: str, top: int = 5) -> str:
    """A masked LM's answer to a prompt holding [MASK]s: the prompt with each filled by its most likely
    token, then each mask's `top` candidates with their probabilities."""
    if MASK_TOKEN not in prompt:
        raise ConfigError(f"this run is a masked LM: put {MASK_TOKEN} where --prompt should be filled in, "
                          f"e.g. --prompt \"To be, or not to {MASK_TOKEN}\"")
    tok, mask = run.tokenizer, mask_id(run.tokenizer)
    ids = encode_with_masks(tok, prompt, mask)
    if len(ids) > run.cfg.model.seq_len:
        raise ConfigError(f"--prompt is {len(ids)} tokens; this model reads at most model.seq_len="
                          f"{run.cfg.model.seq_len}")
    filled, candidates = fill_masks(run.model, ids, mask, top)
    lines = [tok.decode(filled)]
    for k, options in enumerate(candidates, 1):
        lines.append(f"{MASK_TOKEN} {k}: " + " | ".join(f"{tok.decode([i])!r} {p:.3f}" for i, p in options))
    return "\n".join(lines)
