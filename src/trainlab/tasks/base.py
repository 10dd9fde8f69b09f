"""The task protocol, and the token-level metrics every token-predicting task shares."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.config import RunConfig, Section
from trainlab.errors import TrainlabError

LOG2E = 1.0 / math.log(2.0)
IGNORE = -100  # target id that no loss or metric counts (prompt tokens, unmasked positions)

Batch = dict[str, torch.Tensor]
Forward = Callable[..., torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a float64 tensor over the processes


@dataclass
class LoadedRun:
    """A run's best (else newest intact) checkpoint in its model, with what the task loads beside it."""

    run_dir: Path
    cfg: RunConfig
    model: nn.Module
    tokenizer: Any  # the task's assets: a Tokenizer for token tasks, None for candles
    step: int


@dataclass
class GenerationRequest:
    """What `trainlab generate` asks of a run."""

    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None


class Task:
    """One kind of training. Subclasses fill in the data, model, batches, loss and evaluation, and the
    hooks through which every command that is not training (generate, eval, export, doctor) treats a
    finished run of this task."""

    name = "task"
    token_loss: ClassVar[bool] = False
    """The training loss is one cross-entropy over model.vocab_size (a uniform guess scores ln V)."""
    sections: ClassVar[dict[str, type[Section]]] = {}
    """The config sections this task declares (`{"sft": SFTConfig}`): they join the full RunConfig under
    these names, with their defaults, whatever the task of a run (a preset may set them for another)."""

    def __init__(self, cfg: RunConfig, data: Any, device: torch.device, rank: int = 0, world: int = 1):
        self.cfg, self.data, self.device, self.rank, self.world = cfg, data, device, rank, world

    # -- before the trainer exists ------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> Any:
        """Read, check and cache the data (rank 0 runs this first; the others then find the cache)."""
        raise NotImplementedError

    @classmethod
    def configure(cls, cfg: RunConfig, data: Any) -> RunConfig:
        """The config with sizes that come from the data (vocabulary, features) filled in."""
        return cfg

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------------------
    @property
    def examples_per_epoch(self) -> int:
        raise NotImplementedError

    @classmethod
    def example_tokens(cls, cfg: RunConfig) -> tuple[float, float]:
        """(input positions, positions that carry loss) of one example, from the config alone: exact for
        fixed-size examples, an upper bound where they vary (the instance's figures then use the data)."""
        return float(cfg.model.seq_len), float(cfg.model.seq_len)

    @property
    def tokens_per_example(self) -> float:
        """Input positions an example feeds the model, padding excluded (a mean where examples vary):
        what the `tokens` counter and every token budget count (`train/budget.py`)."""
        return self.example_tokens(self.cfg)[0]

    @property
    def loss_tokens_per_example(self) -> float:
        """The positions of an example that carry loss (a mean where it varies)."""
        return self.example_tokens(self.cfg)[1]

    def batch(self, indices: np.ndarray) -> Batch:
        """The examples at these global indices: a pure function of (seed, index), for exact resume."""
        raise NotImplementedError

    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise, and named values for the train rows (components such as `loss_ce`,
        averaged over the micro-batches of a step)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        """Metrics on the fixed validation subset (this process's share, summed with `reduce`)."""
        raise NotImplementedError

    @property
    def eval_at_start(self) -> bool:
        """Evaluate once at step 0, before any update (the loss a fine-tune starts from)."""
        return False

    def sample(self, model: nn.Module, n_tokens: int) -> Optional[dict[str, str]]:
        """A generation for samples.jsonl, or None when the task has none."""
        return None

    # -- the run directory ------------------------------------------------------------------------------
    def save_files(self, run_dir: Path) -> None:
        """Files a run needs besides its weights (tokenizer.json, ...)."""

    def check_resume(self, run_dir: Path) -> None:
        """Raise ConfigError when the data now differs from what the run was trained on."""

    def fingerprint(self) -> str:
        return ""

    def describe(self) -> str:
        """One line on the data, for the start of a run."""
        return ""

    # -- a finished run (classmethods: no data is prepared) ----------------------------------------------
    doctor_checks: ClassVar[frozenset[str]] = frozenset()
    """What the doctor may check beyond the metrics: `data` (the text corpus: duplicates, leakage),
    `probe` (generate continuations and measure repetition), `samples` (repetition in samples.jsonl)."""

    @classmethod
    def load_assets(cls, run_dir: Path) -> Any:
        """What a finished run needs beside its weights (its tokenizer), or None."""
        return None

    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """The text `trainlab generate` prints."""
        raise TrainlabError(f"a {cls.name} run generates nothing")

    @classmethod
    def unknown_prompt_chars(cls, run: LoadedRun, prompt: str) -> list[str]:
        """The prompt's characters a character vocabulary lacks (they reach the model as UNK); none for others."""
        unknown = getattr(run.tokenizer, "unknown", None)
        return unknown(prompt) if unknown else []

    @classmethod
    def eval_config(cls, cfg: RunConfig, run_dir: Path, data_path: Optional[Path]) -> RunConfig:
        """The config `trainlab eval` prepares data with: the run's own, or another file read the run's way."""
        if data_path is None:
            return cfg
        return cfg.updated({"data": {"source": str(data_path)}})

    @classmethod
    def export_hf(cls, run: LoadedRun, out: Path) -> None:
        """Write the run as a transformers directory into the (empty, temporary) folder `out`."""
        raise TrainlabError(f"a {cls.name} run has no transformers format to export to")


class TokenMetrics:
    """Sums for loss, perplexity, accuracy, top-5, confidence, entropy and calibration (ECE) over
    predicted tokens; positions whose target is IGNORE are left out."""

    BINS = 15

    def __init__(self) -> None:
        self.nll = self.correct = self.top5 = self.conf = self.entropy = self.count = 0.0
        self.bin_conf = torch.zeros(self.BINS, dtype=torch.float64)
        self.bin_acc = torch.zeros(self.BINS, dtype=torch.float64)
        self.edges = torch.linspace(0, 1, self.BINS + 1)[1:-1]

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        keep = targets != IGNORE
        logits, targets = logits.float()[keep], targets[keep]
        if not targets.numel():
            return
        self.nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = (top[:, 0] == targets).cpu().double()  # MPS has no float64
        self.correct += float(hit.sum())
        self.top5 += float((top == targets[:, None]).any(-1).sum())
        logp = logits.log_softmax(-1)
        p_top = logp.amax(-1).exp()
        self.conf += float(p_top.sum())
        self.entropy += float(-(logp.exp() * logp).sum())
        which = torch.bucketize(p_top.cpu(), self.edges)
        self.bin_conf += torch.bincount(which, p_top.cpu().double(), minlength=self.BINS)
        self.bin_acc += torch.bincount(which, hit.cpu(), minlength=self.BINS)
        self.count += targets.numel()

    def finish(self, reduce: Reduce) -> dict[str, float]:
        sums = torch.tensor([self.nll, self.correct, self.top5, self.conf, self.entropy, self.count],
                            dtype=torch.float64)
        sums = reduce(torch.cat([sums, self.bin_conf, self.bin_acc])).cpu()
        nll, correct, top5, conf, entropy, count = sums[:6].tolist()
        bin_conf, bin_acc = sums[6:6 + self.BINS], sums[6 + self.BINS:]
        count = max(count, 1.0)
        loss = nll / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700)), "bits_per_token": loss * LOG2E,
                "acc": correct / count, "top5": top5 / count, "confidence": conf / count,
                "entropy": entropy / count,
                # expected calibration error: |accuracy - confidence| per confidence bin, weighted by its share
                "ece": float((bin_acc - bin_conf).abs().sum() / count)}


def chunks(items: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
