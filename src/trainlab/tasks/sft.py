"""Instruction fine-tuning: the causal GPT, trained on the response tokens of conversations only.

Batches hold whole examples, each padded at its end (not packed): answers here are a few dozen
tokens, and packing several conversations into one window would let each attend to the ones before
it unless attention were masked per example; padding keeps every example's loss exactly what it is
at generation time. A batch is padded only to its longest example (rounded up to 8), so the waste
stays small. Prompt and padding positions have the target IGNORE, so `gpt_loss` (with its MoE
load-balancing term) is the response-only cross entropy unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml
from torch import nn

from pydantic import Field

from trainlab.config import RunConfig, Section
from trainlab.data.prepare import EpochOrder
from trainlab.data.sft import Examples, SFTData, Template, prepare_sft
from trainlab.errors import ConfigError
from trainlab.tasks.base import IGNORE, Batch, Forward, GenerationRequest, LoadedRun, Reduce, TokenMetrics, chunks
from trainlab.tasks.causal_lm import TokenTask, export_llama, gpt_loss

PAD_MULTIPLE = 8


class SFTConfig(Section):
    """Instruction fine-tuning (task sft): the chat template."""

    system: str = "<|system|>\n"
    """Chat template: text before a system message."""
    user: str = "<|user|>\n"
    """Chat template: text before a user message."""
    assistant: str = "<|assistant|>\n"
    """Chat template: text before an assistant message (the prompt of a generation ends with it)."""
    turn_end: str = "\n"
    """Chat template: text after a system or user message."""
    end: str = Field("<|end|>", min_length=1)
    """Chat template: the end marker after each assistant message; trained on, and generation stops there."""
    eval_at_start: bool = True
    """Evaluate once at step 0, before any update, so the run records the loss it started from."""


def collate(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of whole examples, padded at the end; targets are IGNORE off the responses."""
    longest = max(len(ids) for ids, _ in examples) - 1
    width = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, seq_len)
    inputs = np.zeros((len(examples), width), dtype=np.int64)
    targets = np.full((len(examples), width), IGNORE, dtype=np.int64)
    for row, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = np.where(mask[1:], ids[1:], IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


@torch.no_grad()
def reply(model: nn.Module, template: Template, prompt_ids: np.ndarray, max_new_tokens: int,
          temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
          seed: Optional[int] = None) -> str:
    """The answer to a prompt rendered with the template, up to (not including) the end marker."""
    from trainlab.models.generate import generate

    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64))[None].to(device)
    new = generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   repetition_penalty=repetition_penalty, seed=seed, stop=template.end_ids.tolist())[0].tolist()
    end = template.end_ids.tolist()
    if new[-len(end):] == end:
        new = new[:-len(end)]
    return template.tok.decode(new).split(template.cfg.end)[0]


def init_vocab_size(init_from: str) -> Optional[int]:
    """The vocabulary of the run (or transformers directory) an SFT run starts from, when it says."""
    run, hf = Path(init_from) / "config.yaml", Path(init_from) / "config.json"
    try:
        if run.is_file():
            return (yaml.safe_load(run.read_text(encoding="utf-8")) or {}).get("model", {}).get("vocab_size")
        if hf.is_file():
            import json

            return json.loads(hf.read_text(encoding="utf-8")).get("vocab_size")
    except (ValueError, yaml.YAMLError, AttributeError):
        return None
    return None


class SFT(TokenTask):
    name = "sft"
    token_loss = True
    sections = {"sft": SFTConfig}
    doctor_checks = frozenset({"data", "samples"})
    data: SFTData

    def __init__(self, cfg: RunConfig, data: SFTData, device: torch.device, rank: int = 0, world: int = 1):
        super().__init__(cfg, data, device, rank, world)
        # the fixed validation subset: the first eval_batches global batches of held-out examples
        self.val_indices = np.arange(min(len(data.val), cfg.train.eval_batches * cfg.train.batch_size * world))
        self._order = EpochOrder(len(data.train), cfg.train.seed)

    @classmethod
    def prepare(cls, cfg: RunConfig, log: Callable[[str], None] = print) -> SFTData:
        return prepare_sft(cfg, log=log)

    @classmethod
    def configure(cls, cfg: RunConfig, data: SFTData) -> RunConfig:
        """The vocabulary of init_from when there is one (its embeddings must load), else the tokenizer's."""
        vocab = init_vocab_size(cfg.init_from) if cfg.init_from else None
        if vocab is None:
            return cfg.with_vocab_size(data.tokenizer.vocab_size)
        if vocab < data.tokenizer.vocab_size:
            raise ConfigError(f"init_from '{cfg.init_from}' has {vocab} embeddings, fewer than the "
                              f"{data.tokenizer.vocab_size} tokens of its tokenizer.json")
        cfg = cfg.with_vocab_size(vocab)
        if cfg.model.vocab_size != vocab:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} does not fit init_from '{cfg.init_from}', "
                              f"whose vocabulary is {vocab}; leave model.vocab_size unset")
        return cfg

    @classmethod
    def build_model(cls, cfg: RunConfig) -> nn.Module:
        from trainlab.models.gpt import GPT

        return GPT(cfg.model)

    # -- training -------------------------------------------------------------------------------------
    @property
    def examples_per_epoch(self) -> int:
        return len(self.data.train)

    @property
    def tokens_per_example(self) -> float:
        """Mean input positions of a training example: its length less the last token (batches are padded to
        their longest, and padding is not counted)."""
        lengths = np.diff(self.data.train.offsets) - 1
        return max(float(lengths.mean()), 1.0)

    @property
    def loss_tokens_per_example(self) -> float:
        """Mean response tokens of a training example: the targets the loss counts."""
        examples = self.data.train
        starts = examples.offsets[:-1]
        targets = np.add.reduceat(examples.mask.astype(np.int64), starts) - examples.mask[starts]
        return float(targets.mean())

    @property
    def eval_at_start(self) -> bool:
        return self.cfg.sft.eval_at_start

    def order(self, indices: np.ndarray) -> np.ndarray:
        """Example ids at these global indices: a fresh permutation per epoch, a pure function of (seed, index)."""
        return self._order.ids(indices)

    def batch(self, indices: np.ndarray) -> Batch:
        inputs, targets = collate([self.data.train.get(i) for i in self.order(indices)], self.cfg.model.seq_len)
        return {"input": inputs.to(self.device, non_blocking=True), "target": targets.to(self.device, non_blocking=True)}

    def loss(self, forward: Forward, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return gpt_loss(self.cfg, forward, batch["input"], batch["target"])

    @torch.no_grad()
    def evaluate(self, forward: Forward, autocast: Callable, reduce: Reduce, tokens: Any = None) -> dict[str, float]:
        """Response-only loss and token metrics on the held-out examples (or on every example of `tokens`,
        an Examples set), and `exact_match`: the share of answers greedy decoding would get exactly right."""
        source: Examples = self.data.val if tokens is None else tokens
        indices = self.val_indices if tokens is None else np.arange(len(tokens))
        metrics, exact = TokenMetrics(), torch.zeros(2, dtype=torch.float64)
        for part in chunks(indices[self.rank::self.world], self.cfg.train.batch_size):
            inputs, targets = collate([source.get(i) for i in part], self.cfg.model.seq_len)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with autocast():
                logits = forward(inputs)
            metrics.add(logits, targets)
            right = (logits.argmax(-1) == targets) | (targets == IGNORE)
            exact += torch.tensor([float(right.all(-1).sum()), float(len(part))], dtype=torch.float64)
        exact = reduce(exact).cpu()
        return {**metrics.finish(reduce), "exact_match": float(exact[0] / max(float(exact[1]), 1.0))}

    def sample(self, model: nn.Module, n_tokens: int) -> Optional[dict[str, str]]:
        """The answer to the first held-out prompt (greedy), beside the reference answer."""
        ids, mask = self.data.val.get(0)
        first = int(np.argmax(mask))
        tok = self.data.tokenizer
        answer = reply(model, self.data.template, ids[:first], n_tokens)
        return {"prompt": tok.decode(ids[:first].tolist()), "text": answer,
                "reference": tok.decode(ids[first:][mask[first:]].tolist()).split(self.cfg.sft.end)[0]}

    def describe(self) -> str:
        meta = self.data.meta
        return (f"train {meta['train']['examples']:,} examples ({meta['train']['response_tokens']:,} response tokens), "
                f"val {meta['val']['examples']:,} examples")

    # -- a finished run ----------------------------------------------------------------------------------
    @classmethod
    def generate(cls, run: LoadedRun, request: GenerationRequest) -> str:
        """The answer: the prompt wrapped in the run's chat template, generation stopped at its end marker."""
        r = request
        template = Template(run.cfg.sft, run.tokenizer)
        answer = reply(run.model, template, template.prompt(r.prompt), r.max_new_tokens, r.temperature, r.top_k,
                       r.top_p, r.repetition_penalty, r.seed)
        return r.prompt + "\n" + answer

    @classmethod
    def eval_config(cls, cfg: RunConfig, run_dir: Path, data_path: Optional[Path]) -> RunConfig:
        """Always the run's own tokenizer: init_from mattered only when training started."""
        tree: dict[str, Any] = {"data": {"tokenizer": str(Path(run_dir) / "tokenizer.json")}, "init_from": None}
        if data_path is not None:
            tree["data"]["source"] = str(data_path)
        return cfg.updated(tree)

    @classmethod
    def export_hf(cls, run: LoadedRun, out: Path) -> None:
        export_llama(run, out, chat_template(run.cfg.sft), stop_strings=[run.cfg.sft.end])


def chat_template(sft: SFTConfig) -> str:
    """The run's SFT template as the Jinja chat template transformers' `apply_chat_template` renders: the
    same text trainlab trains on (role prefix, content, turn end; answers close with the end marker), and
    with `add_generation_prompt` the assistant prefix a generation starts from."""
    lit = json.dumps  # a JSON string is a valid Jinja string literal
    prefix = "{" + ", ".join(f"{lit(role)}: {lit(getattr(sft, role))}" for role in ("system", "user")) + "}"
    return (f"{{%- set prefix = {prefix} -%}}"
            "{%- for m in messages -%}"
            f"{{%- if m['role'] == 'assistant' -%}}{{{{ {lit(sft.assistant)} }}}}{{{{ m['content'] }}}}"
            f"{{{{ {lit(sft.end)} }}}}"
            "{%- else -%}{{ prefix[m['role']] }}{{ m['content'] }}{%- endif -%}"
            f"{{{{ {lit(sft.turn_end)} }}}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {lit(sft.assistant)} }}}}{{%- endif -%}}")
