"""Instruction data: conversations from .jsonl, rendered with a chat template, tokenized with a loss mask.

Each line is one conversation in any of these formats, detected per line:

    {"prompt": "...", "response": "..."}                      (optionally "system": "..."; or "completion")
    {"messages": [{"role": "user", "content": "..."}, ...]}    (chat format)
    {"conversations": [{"role": "user", "content": "..."}]}   (MiniMind's SFT files)
    {"conversations": [{"from": "human", "value": "..."}]}    (ShareGPT: human, gpt, system)
    {"instruction": "...", "input": "...", "output": "..."}  (Alpaca: the input, when given, follows the
                                                               instruction after a blank line)

with roles system, user and assistant. The template renders a conversation as

    <|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|end|>\\n ...

(every piece a config field, `sft.*`). Each piece is tokenized on its own, so the end marker is the
same token ids after any response (a byte-level BPE would otherwise merge it with the response's
last characters) and generation can stop on it. The loss mask is true on the tokens of assistant
messages and their end markers, and nothing else.

Preparation is cached like `trainlab.data.prepare`: under a key of the file's content hash, the
tokenizer, the template, seq_len and the split settings, built in a temporary folder renamed into
place. The validation share is chosen by a hash of the conversation's messages, so the same
conversation lands on the same side whatever format it is written in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from trainlab.config import DataConfig, RunConfig

if TYPE_CHECKING:  # the section is declared with its task, a layer above
    from trainlab.tasks.sft import SFTConfig
from trainlab.data.prepare import _check_text_file, _is_val, cache_dir_of, cache_entry
from trainlab.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from trainlab.errors import ConfigError, DataError

FORMAT_VERSION = 1
ROLES = ("system", "user", "assistant")
Message = dict[str, str]


class BadLine(ValueError):
    """A line that holds no conversation in any of the three formats; the message says why."""


# --------------------------------------------------------------------------------------------
# Reading


FORMATS = "prompt/response, messages, conversations (role/content or ShareGPT's from/value) or Alpaca lines"
# ShareGPT's speakers
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_conversation(obj) -> list[Message]:
    """One .jsonl object as a list of {"role", "content"} messages."""
    if not isinstance(obj, dict):
        raise BadLine("is not a JSON object")
    system = [{"role": "system", "content": obj["system"]}] if isinstance(obj.get("system"), str) else []
    if "messages" in obj or "conversations" in obj:
        turns = obj.get("messages", obj.get("conversations"))
        if not isinstance(turns, list):
            raise BadLine("has 'messages'/'conversations' that is not a list")
        return system + [_message(t) for t in turns]
    answer = obj.get("response", obj.get("completion"))
    if isinstance(obj.get("prompt"), str) and isinstance(answer, str):
        return system + [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": answer}]
    if isinstance(obj.get("instruction"), str) and isinstance(obj.get("output"), str):  # Alpaca
        extra = obj.get("input")
        asked = obj["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return system + [{"role": "user", "content": asked}, {"role": "assistant", "content": obj["output"]}]
    raise BadLine("has neither 'prompt' and 'response' strings, 'instruction' and 'output' strings, nor a "
                  "'messages' or 'conversations' list")


def _message(turn) -> Message:
    if isinstance(turn, dict) and "from" in turn and "role" not in turn:  # ShareGPT
        if not isinstance(turn.get("value"), str):
            raise BadLine("has a message without a string 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise BadLine(f"has a message from {turn['from']!r} (ShareGPT speakers: human, gpt, system)")
        return {"role": role, "content": turn["value"]}
    if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
        raise BadLine("has a message without a string 'content'")
    if turn.get("role") not in ROLES:
        raise BadLine(f"has a message with role {turn.get('role')!r} (roles: {', '.join(ROLES)})")
    return {"role": turn["role"], "content": turn["content"]}


@dataclass
class ReadStats:
    broken: int = 0
    first_broken: list[int] = field(default_factory=list)
    no_assistant: int = 0


def read_conversations(path: Path, strict: bool) -> tuple[list[list[Message]], ReadStats]:
    """The conversations of a .jsonl file; broken lines are skipped and counted (or fail with strict)."""
    _check_text_file(path)
    stats, out = ReadStats(), []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                messages = parse_conversation(json.loads(raw))
            except (ValueError, UnicodeDecodeError) as err:
                what = str(err) if isinstance(err, BadLine) else "is not valid JSON"
                if strict:
                    raise DataError(f"{path}:{lineno} {what} (data.strict=true; set it false to skip broken lines)") from None
                stats.broken += 1
                if len(stats.first_broken) < 5:
                    stats.first_broken.append(lineno)
                continue
            if not any(m["role"] == "assistant" for m in messages):
                stats.no_assistant += 1
                continue
            out.append(messages)
    if not out:
        raise DataError(f"'{path}' holds no usable conversation ({stats.broken} broken lines, {stats.no_assistant} "
                        f"without an assistant message); give {FORMATS}")
    return out, stats


def is_val(messages: list[Message], fraction: float) -> bool:
    return _is_val(json.dumps(messages, ensure_ascii=False, sort_keys=True), fraction)


# --------------------------------------------------------------------------------------------
# The template


class Template:
    """A chat template: the pieces a conversation is rendered from, each tokenized on its own."""

    def __init__(self, cfg: SFTConfig, tokenizer: Tokenizer):
        self.cfg, self.tok = cfg, tokenizer
        for key in ("system", "user", "assistant", "turn_end", "end"):
            text = getattr(cfg, key)
            if text and self.tok.decode(self.tok.encode(text).tolist()) != text:
                raise ConfigError(f"sft.{key}={text!r} cannot be written with this run's tokenizer ({self.tok.kind}, "
                                  f"{self.tok.vocab_size} tokens); set sft.{key} to text it can encode")
        self.end_ids = self.tok.encode(cfg.end)

    def pieces(self, messages: list[Message]) -> list[tuple[str, bool]]:
        """(text, trained) pieces, up to the last assistant message's end marker."""
        out: list[tuple[str, bool]] = []
        for m in messages:
            if m["role"] == "assistant":
                out += [(self.cfg.assistant, False), (m["content"], True), (self.cfg.end, True)]
            else:
                out += [(getattr(self.cfg, m["role"]), False), (m["content"], False)]
            out.append((self.cfg.turn_end, False))
        while out and not out[-1][1]:
            out.pop()
        return out

    def prompt(self, text: str) -> np.ndarray:
        """The ids that ask for an answer to a single user message."""
        return self.encode([(self.cfg.user, False), (text, False), (self.cfg.turn_end, False),
                            (self.cfg.assistant, False)])[0]

    def encode(self, pieces: list[tuple[str, bool]]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_many([pieces])[0]

    def encode_many(self, conversations: list[list[tuple[str, bool]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and loss mask of each rendered conversation (all pieces in one batch call)."""
        texts = [text for pieces in conversations for text, _ in pieces]
        encoded = iter(self.tok.encode_batch(texts)) if texts else iter(())
        out = []
        for pieces in conversations:
            ids = [next(encoded) for _ in pieces]
            mask = [np.full(len(i), trained) for i, (_, trained) in zip(ids, pieces)]
            out.append((np.concatenate(ids or [np.zeros(0, np.int64)]).astype(np.int64),
                        np.concatenate(mask or [np.zeros(0, bool)]).astype(bool)))
        return out


# --------------------------------------------------------------------------------------------
# Examples on disk


@dataclass
class Examples:
    """Variable-length examples stored end to end: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.ids[a:b], dtype=np.int64), np.asarray(self.mask[a:b], dtype=bool)

    @classmethod
    def build(cls, items: list[tuple[np.ndarray, np.ndarray]], dtype) -> "Examples":
        lengths = np.array([len(ids) for ids, _ in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.concatenate([i for i, _ in items]).astype(dtype) if items else np.zeros(0, dtype)
        mask = np.concatenate([m for _, m in items]) if items else np.zeros(0, bool)
        return cls(ids, mask, offsets)

    def save(self, folder: Path, split: str) -> None:
        for name in ("ids", "mask", "offsets"):
            np.save(folder / f"{split}_{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, folder: Path, split: str) -> "Examples":
        return cls(*(np.load(folder / f"{split}_{name}.npy") for name in ("ids", "mask", "offsets")))

    @classmethod
    def concat(cls, parts: list["Examples"]) -> "Examples":
        items = [p.get(i) for p in parts for i in range(len(p))]
        return cls.build(items, parts[0].ids.dtype)


@dataclass
class SFTData:
    train: Examples
    val: Examples
    tokenizer: Tokenizer
    template: Template
    meta: dict
    directory: Path

    def combined(self) -> Examples:
        """Every example, for evaluating on another file."""
        return Examples.concat([self.train, self.val])


# --------------------------------------------------------------------------------------------
# The tokenizer: init_from's, a given file, or one trained on the data


def resolve_source(source: str, cache_dir: Path) -> Path:
    from trainlab.data import shakespeare_qa

    if source == shakespeare_qa.NAME:
        return shakespeare_qa.get_dataset(cache_dir, quiet=True)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source '{source}' is neither the bundled instruction set '{shakespeare_qa.NAME}' "
                        f"nor an existing .jsonl file")
    return path


def init_tokenizer_path(cfg: RunConfig) -> Optional[Path]:
    """init_from's tokenizer.json, which an SFT run must use (its embeddings were trained on those ids)."""
    if not cfg.init_from:
        return None
    root = Path(cfg.init_from)
    if not root.is_dir():
        raise ConfigError(f"init_from '{cfg.init_from}' is not a run directory")
    # a run's tokenizer.json; an exported directory keeps a char or byte vocabulary as trainlab_tokenizer.json
    path = next((p for p in (root / "tokenizer.json", root / "trainlab_tokenizer.json") if p.is_file()), None)
    if path is None:
        raise ConfigError(f"init_from '{cfg.init_from}' has no tokenizer.json; an sft run takes its tokenizer "
                          f"from the run it starts from")
    return path


def given_tokenizer(cfg: RunConfig) -> Optional[Tokenizer]:
    """The tokenizer fixed before reading the data: init_from's, or a tokenizer.json in data.tokenizer."""
    init = init_tokenizer_path(cfg)
    named = cfg.data.tokenizer not in ("char", "byte", "bpe")
    tok = load_tokenizer(cfg.data.tokenizer) if named else None
    if init is None:
        return tok
    from_init = load_tokenizer(init)
    if tok is not None and tok.to_json() != from_init.to_json():
        raise ConfigError(f"data.tokenizer '{cfg.data.tokenizer}' is not the tokenizer init_from '{cfg.init_from}' "
                          f"was trained with; leave data.tokenizer unset to use init_from's")
    return from_init


def train_tokenizer(data: DataConfig, texts: list[str]) -> Tokenizer:
    if data.tokenizer == "char":
        return CharTokenizer.train(texts)
    if data.tokenizer == "byte":
        return ByteTokenizer()
    return HFTokenizer.train(iter(texts), data.bpe_vocab_size)


# --------------------------------------------------------------------------------------------
# Preparation


def prepare_sft(cfg: RunConfig, log: Callable[[str], None] = print) -> SFTData:
    cache = cache_dir_of(cfg.data)
    path = resolve_source(cfg.data.source, cache)
    tok = given_tokenizer(cfg)
    spec = ("file-" + tok.fingerprint) if tok is not None else (
        f"bpe-{cfg.data.bpe_vocab_size}" if cfg.data.tokenizer == "bpe" else cfg.data.tokenizer)
    content = hashlib.sha256(path.read_bytes()).hexdigest()
    key_text = json.dumps([FORMAT_VERSION, content, spec, cfg.sft.model_dump(), cfg.model.seq_len,
                           cfg.data.val_fraction, cfg.data.strict])
    final = cache / "sft-examples" / hashlib.sha256(key_text.encode()).hexdigest()[:20]
    if not (final / "meta.json").exists():
        log(f"preparing {path} (sft, tokenizer {spec}) -> {final}")
        _build(cfg, path, tok, final)
    meta = json.loads((final / "meta.json").read_text())
    skipped = [f"{n} {what}" for n, what in (
        (meta["broken_lines"], f"broken lines (first: {', '.join(map(str, meta['first_broken_lines']))}; "
                               f"data.strict=true fails on them)"),
        (meta["no_assistant"], "conversations without an assistant message"),
        (meta["no_response_left"], "conversations whose response lies beyond model.seq_len")) if n]
    if skipped:
        log(f"warning: skipped {', '.join(skipped)} of {path}")
    tok = load_tokenizer(final / "tokenizer.json")
    return SFTData(Examples.load(final, "train"), Examples.load(final, "val"), tok, Template(cfg.sft, tok),
                   meta, final)


def _build(cfg: RunConfig, path: Path, tok: Optional[Tokenizer], final: Path) -> None:
    conversations, stats = read_conversations(path, cfg.data.strict)
    split = {"train": [], "val": []}
    for messages in conversations:
        split["val" if is_val(messages, cfg.data.val_fraction) else "train"].append(messages)
    for name, part in split.items():
        if not part:
            raise DataError(f"the {name} share of '{path}' is empty ({len(conversations)} conversations, "
                            f"data.val_fraction={cfg.data.val_fraction}); give more examples or change data.val_fraction")
    if tok is None:
        tok = train_tokenizer(cfg.data, _template_texts(cfg.sft) + [text for m in split["train"] for text in _render(m)])
    template = Template(cfg.sft, tok)
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    meta = {"format": FORMAT_VERSION, "source": str(path), "vocab_size": tok.vocab_size,
            "broken_lines": stats.broken, "first_broken_lines": stats.first_broken,
            "no_assistant": stats.no_assistant, "no_response_left": 0, "truncated": 0}
    with cache_entry(final) as tmp:
        for name, part in split.items():
            items = _fit(template.encode_many([template.pieces(m) for m in part]), cfg.model.seq_len, meta)
            if not items:
                raise DataError(f"no {name} example of '{path}' has a response within model.seq_len="
                                f"{cfg.model.seq_len} tokens; raise model.seq_len or shorten the prompts")
            Examples.build(items, dtype).save(tmp, name)
            meta[name] = {"examples": len(items), "tokens": int(sum(len(i) for i, _ in items)),
                          "response_tokens": int(sum(m[1:].sum() for _, m in items))}
        tok.save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _template_texts(sft: SFTConfig) -> list[str]:
    return [sft.system, sft.user, sft.assistant, sft.turn_end, sft.end]


def _render(messages: list[Message]) -> list[str]:
    return [m["content"] for m in messages]


def _fit(items: list[tuple[np.ndarray, np.ndarray]], seq_len: int, meta: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Truncate to seq_len + 1 tokens (seq_len predictions); drop examples with no response token left."""
    out = []
    for ids, mask in items:
        if len(ids) > seq_len + 1:
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
            meta["truncated"] += 1
        if not mask[1:].any():
            meta["no_response_left"] += 1
            continue
        out.append((ids, mask))
    return out
