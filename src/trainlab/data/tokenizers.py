"""Tokenizers: characters, bytes, and BPE through Hugging Face `tokenizers`.

All three save to and load from one `tokenizer.json`. BPE files are the `tokenizers` library's own
format (so a MiniMind or other Hugging Face tokenizer.json loads as is); char and byte files are a
small JSON object with `"trainlab": "char"` or `"byte"`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from trainlab.errors import DataError
from trainlab.files import atomic_write

UNK = "\ufffd"  # characters unseen in the training split map here


class Tokenizer:
    kind: str
    eos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        atomic_write(Path(path), self.to_json())  # whole or absent: a kill mid-write leaves no half tokenizer

    def to_hf_json(self) -> str:
        """The same vocabulary as a `tokenizers` JSON (what transformers' AutoTokenizer loads), whose ids
        round-trip exactly with `encode` and `decode`."""
        return self.to_json()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str]):
        if UNK not in chars:
            chars = [UNK] + [c for c in chars]
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}
        self.unk_id = self.index[UNK]
        # Code point -> id lookup table for vectorised encoding of the common range.
        top = max(ord(c) for c in chars) + 1
        self._lut = np.full(top, self.unk_id, dtype=np.int64)
        for c, i in self.index.items():
            self._lut[ord(c)] = i

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        out = np.full(codes.shape, self.unk_id, dtype=np.int64)
        inside = codes < len(self._lut)
        out[inside] = self._lut[codes[inside]]
        return out

    def unknown(self, text: str) -> list[str]:
        """The characters of `text` outside the vocabulary (each once, in order): they encode as UNK."""
        return list(dict.fromkeys(c for c in text if c not in self.index))

    def decode(self, ids) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if 0 <= i < n else UNK for i in (int(i) for i in ids))

    def to_json(self) -> str:
        return json.dumps({"trainlab": "char", "chars": self.chars}, ensure_ascii=False)

    def to_hf_json(self) -> str:
        """A word-level model over single characters: every character is split off on its own (no
        normalisation), looked up (unseen ones become UNK), and decoding concatenates them."""
        from tokenizers import Regex
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers

        tok = _Tok(models.WordLevel(vocab=dict(self.index), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m:.)|\n"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok.to_str()


class ByteTokenizer(Tokenizer):
    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids) -> str:
        return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({"trainlab": "byte"})

    def to_hf_json(self) -> str:
        """A merge-less byte-level BPE: byte b is the token for b in GPT-2's byte alphabet, with id b."""
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers

        alphabet = _byte_alphabet()
        tok = _Tok(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok.to_str()


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, as the ByteLevel pre-tokenizer maps them."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer`: BPE trained here, or any tokenizer.json given by the user."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok
        vocab = tok.get_vocab()
        self.eos_id = next((vocab[t] for t in ("<|endoftext|>", "</s>", "<|im_end|>", "[SEP]") if t in vocab), None)

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> "HFTokenizer":
        from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers, trainers

        tok = _Tok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        # encode_batch runs on every core (the library's Rust thread pool).
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tok.to_str()


def tokenizer_from_json(text: str, origin: str = "tokenizer.json") -> Tokenizer:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise DataError(f"{origin} is not valid JSON; give a tokenizer.json file") from None
    if isinstance(obj, dict) and obj.get("trainlab") == "char":
        return CharTokenizer(list(obj["chars"]))
    if isinstance(obj, dict) and obj.get("trainlab") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer as _Tok

    try:
        return HFTokenizer(_Tok.from_str(text))
    except Exception as err:  # the library raises plain Exceptions with long messages
        raise DataError(f"{origin} is not a tokenizer the `tokenizers` library can read ({str(err).splitlines()[0][:120]})") from None


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"tokenizer file '{path}' is not UTF-8 JSON") from None
    return tokenizer_from_json(text, origin=str(path))
