"""From a source (bundled corpus, .txt file or folder, .jsonl) to token shards on disk.

Preparation streams: text is read in bounded pieces, the tokenizer is trained on the training split
only, and tokens are appended to memmap files (uint16 where the vocabulary allows). The result is
cached under a key made of the source's content hash and the tokenizer settings, and is built in a
temporary folder renamed into place, so concurrent preparations never see a half-written cache.

The validation split is disjoint from training: a single text holds out its final region; a folder
or a .jsonl holds out whole documents, chosen by a hash of their text (so exact duplicates always
land on the same side).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from trainlab.config import DataConfig
from trainlab.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from trainlab.errors import DataError
from trainlab.files import default_cache_dir, staged_dir

FORMAT_VERSION = 2  # 2: byte-order marks dropped, line ends made \n
CHUNK_BYTES = 4 << 20
ENCODE_BATCH = 1024


@dataclass
class Piece:
    text: str
    doc_end: bool  # a document ends after this piece (a separator follows)


@dataclass
class SourceStats:
    skipped_lines: int = 0
    first_skipped: list[int] = field(default_factory=list)


def cache_dir_of(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()


# --------------------------------------------------------------------------------------------
# Sources


class Source:
    """A text source split into train and validation pieces, read lazily and repeatably."""

    def __init__(self, cfg: DataConfig, cache_dir: Path):
        self.cfg = cfg
        self.stats = SourceStats()
        self._val: Optional[set[Path]] = None  # a folder's validation documents, once known
        self.path = self._resolve(cfg.source, cache_dir)
        if self.path.is_dir():
            self.kind = "folder"
            self.files = sorted(p for p in self.path.rglob("*.txt") if p.is_file())
            if not self.files:
                raise DataError(f"folder '{self.path}' holds no .txt files")
            if len(self.files) == 1:  # one document: split it as a text file is split, at its tail
                self.kind = "text"
        elif self.path.suffix == ".jsonl":
            self.kind = "jsonl"
            self.files = [self.path]
        else:
            self.kind = "text"
            self.files = [self.path]
        for f in self.files:
            _check_text_file(f)

    @staticmethod
    def _resolve(source: str, cache_dir: Path) -> Path:
        from trainlab.data import corpora

        if source in corpora.CORPORA:
            return corpora.get_corpus(source, cache_dir)
        path = Path(source).expanduser()
        if not path.exists():
            hint = ""
            if os.sep not in source and "." not in source:
                import difflib

                close = difflib.get_close_matches(source, list(corpora.CORPORA), n=1)
                hint = f"; did you mean the corpus '{close[0]}'?" if close else f"; bundled corpora: {', '.join(corpora.CORPORA)}"
            raise DataError(f"data.source '{source}' is neither a bundled corpus nor an existing path{hint}")
        return path

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for f in self.files:
            h.update(str(f.relative_to(self.path) if self.kind == "folder" else f.name).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    def pieces(self, split: str) -> Iterator[Piece]:
        if self.kind == "text":
            yield from self._text_pieces(self.files[0], split)
        elif self.kind == "folder":
            val = self._val_files()
            for f in self.files:
                if (f in val) == (split == "val"):
                    text = _read_utf8(f)
                    if text:
                        yield Piece(text, True)
        else:
            yield from self._jsonl_pieces(split)

    def _val_files(self) -> set[Path]:
        """The folder's documents that go to validation: by a hash of each one's text, so a document's side never
        changes; where that leaves a side empty (a few documents), the one with the lowest hash is validation's
        and the rest training's."""
        if self._val is None:
            keys = {f: _val_key(_read_utf8(f)) for f in self.files}
            val = {f for f, k in keys.items() if k < self.cfg.val_fraction * 10_000}
            if not val or len(val) == len(self.files):
                val = {min(self.files, key=lambda f: (keys[f], str(f)))}
            self._val = val
        return self._val

    def _text_pieces(self, path: Path, split: str) -> Iterator[Piece]:
        size = path.stat().st_size
        cut = _cut_offset(path, int(size * (1 - self.cfg.val_fraction)))
        start, stop = (0, cut) if split == "train" else (cut, size)
        with open(path, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < stop:
                block = fh.read(min(CHUNK_BYTES, stop - pos))
                if pos + len(block) < stop:  # end pieces on a line break so no character is split
                    extra = fh.readline()
                    block += extra[: stop - pos - len(block)]
                pos += len(block)
                yield Piece(_decode(block, path, pos - len(block)), False)

    def _jsonl_pieces(self, split: str) -> Iterator[Piece]:
        path, field_name = self.files[0], self.cfg.text_field
        stats = SourceStats()
        seen_field = False
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, which json.loads refuses
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                    text = obj[field_name] if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise KeyError(field_name)
                    seen_field = True
                except (ValueError, KeyError, TypeError) as err:
                    if self.cfg.strict:
                        what = f"has no string field '{field_name}'" if isinstance(err, KeyError) else "is not valid JSON"
                        raise DataError(f"{path}:{lineno} {what} (data.strict=true; set it false to skip broken lines)") from None
                    stats.skipped_lines += 1
                    if len(stats.first_skipped) < 5:
                        stats.first_skipped.append(lineno)
                    continue
                if text and _is_val(text, self.cfg.val_fraction) == (split == "val"):
                    yield Piece(text, True)
        if not seen_field:
            raise DataError(f"no line of '{path}' has a string field '{field_name}'; set data.text_field to the field holding the text")
        self.stats = stats


def _val_key(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % 10_000


def _is_val(text: str, fraction: float) -> bool:
    return _val_key(text) < fraction * 10_000


def _check_text_file(path: Path) -> None:
    if path.stat().st_size == 0:
        raise DataError(f"data file '{path}' is empty")
    with open(path, "rb") as fh:
        head = fh.read(8192)
    if b"\x00" in head:
        raise DataError(f"data file '{path}' looks binary (it contains NUL bytes); give UTF-8 text")


def _decode(block: bytes, path: Path, offset: int) -> str:
    """UTF-8 text with the file's byte-order mark dropped and its line ends made "\n" (Windows' "\r\n", old
    Macs' "\r"), as Python's text files read them: neither is text a model should learn to write."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"data file '{path}' is not UTF-8 text (invalid byte at offset {offset + err.start})") from None
    if offset == 0:
        text = text.removeprefix("\ufeff")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _read_utf8(path: Path) -> str:
    return _decode(path.read_bytes(), path, 0)


def _cut_offset(path: Path, approx: int) -> int:
    """The first line start at or after `approx` bytes (so the split never cuts a character)."""
    with open(path, "rb") as fh:
        fh.seek(max(approx - 1, 0))
        fh.readline()
        cut = fh.tell()
    size = path.stat().st_size
    return cut if 0 < cut < size else approx


# --------------------------------------------------------------------------------------------
# Shards


@dataclass
class Prepared:
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict
    directory: Path

    @property
    def chars_per_token(self) -> float:
        return self.meta["val"]["chars"] / max(self.meta["val"]["tokens"], 1)

    @property
    def bytes_per_token(self) -> float:
        return self.meta["val"]["bytes"] / max(self.meta["val"]["tokens"], 1)


def _tokenizer_spec(cfg: DataConfig) -> str:
    if cfg.tokenizer in ("char", "byte"):
        return cfg.tokenizer
    if cfg.tokenizer == "bpe":
        return f"bpe-{cfg.bpe_vocab_size}"
    return "file-" + load_tokenizer(cfg.tokenizer).fingerprint


def _build_tokenizer(cfg: DataConfig, source: Source) -> Tokenizer:
    if cfg.tokenizer == "char":
        return CharTokenizer.train(p.text for p in source.pieces("train"))
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":
        return HFTokenizer.train((p.text for p in source.pieces("train")), cfg.bpe_vocab_size)
    return load_tokenizer(cfg.tokenizer)


def _write_split(source: Source, split: str, tok: Tokenizer, path: Path, dtype) -> dict:
    sep_text = "" if tok.eos_id is not None else "\n\n"
    tokens = chars = nbytes = 0
    with open(path, "wb") as out:
        batch: list[Piece] = []

        def flush() -> None:
            nonlocal tokens, chars, nbytes
            texts = [p.text + (sep_text if p.doc_end else "") for p in batch]
            for piece, text, ids in zip(batch, texts, tok.encode_batch(texts)):
                if piece.doc_end and tok.eos_id is not None:
                    ids = np.append(ids, tok.eos_id)
                out.write(ids.astype(dtype).tobytes())
                tokens += len(ids)
                chars += len(text)
                nbytes += len(text.encode("utf-8"))
            batch.clear()

        for piece in source.pieces(split):
            batch.append(piece)
            if len(batch) >= ENCODE_BATCH or source.kind == "text":
                flush()
        flush()
    return {"tokens": tokens, "chars": chars, "bytes": nbytes}


def cache_entry(final: Path):
    """A temporary folder beside `final`, renamed into place when the block succeeds and removed when it
    fails, so concurrent preparations never see a half-written cache entry (the first to finish wins)."""
    return staged_dir(final)


def prepare(cfg: DataConfig, seq_len: int, log=print) -> Prepared:
    cache = cache_dir_of(cfg)
    source = Source(cfg, cache)
    spec = _tokenizer_spec(cfg)
    key_text = json.dumps([FORMAT_VERSION, source.content_hash(), source.kind, spec, cfg.val_fraction,
                           cfg.text_field, cfg.strict])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    final = cache / "shards" / key
    if not (final / "meta.json").exists():
        with cache_entry(final) as tmp:
            log(f"preparing {source.path} ({source.kind}, tokenizer {spec}) -> {final}")
            tok = _build_tokenizer(cfg, source)
            dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
            meta = {"format": FORMAT_VERSION, "source": str(source.path), "kind": source.kind, "tokenizer": spec,
                    "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name}
            meta["train"] = _write_split(source, "train", tok, tmp / "train.bin", dtype)
            meta["val"] = _write_split(source, "val", tok, tmp / "val.bin", dtype)
            meta["skipped_lines"] = source.stats.skipped_lines
            meta["first_skipped_lines"] = source.stats.first_skipped
            tok.save(tmp / "tokenizer.json")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    meta = json.loads((final / "meta.json").read_text())
    if meta.get("skipped_lines"):
        log(f"warning: skipped {meta['skipped_lines']} broken lines of {source.path} "
            f"(first: {', '.join(map(str, meta['first_skipped_lines']))}); set data.strict=true to fail instead")
    tok = load_tokenizer(final / "tokenizer.json")
    dtype = np.dtype(meta["dtype"])
    for split in ("train", "val"):
        need = seq_len + 2
        if meta[split]["tokens"] < need:
            raise DataError(f"the {split} split of '{cfg.source}' has {meta[split]['tokens']} tokens, fewer than one "
                            f"sequence of model.seq_len={seq_len} needs ({need}); give more text or lower model.seq_len")
    train = np.memmap(final / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(final / "val.bin", dtype=dtype, mode="r")
    return Prepared(train, val, tok, meta, final)


# --------------------------------------------------------------------------------------------
# Batches


class EpochOrder:
    """Global example index -> example id: a fresh permutation of the `n` examples each epoch, drawn from
    (seed, epoch) alone, so the example at index i is a pure function of (seed, i) and a resumed run
    reads exactly the batches an uninterrupted one would. With `offset_range`, each epoch also draws an
    offset in [0, offset_range) first (the token windows' random phase)."""

    def __init__(self, n: int, seed: int, offset_range: int = 0):
        self.n, self.seed, self.offset_range = n, seed, offset_range
        self._epoch: Optional[int] = None

    def _plan(self, epoch: int) -> tuple[np.ndarray, int]:
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._offset = int(rng.integers(0, self.offset_range)) if self.offset_range else 0
            self._perm = rng.permutation(self.n)
            self._epoch = epoch
        return self._perm, self._offset

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(example ids, their epoch's offsets) at these global indices."""
        ids, offsets = np.empty(len(indices), dtype=np.int64), np.empty(len(indices), dtype=np.int64)
        for j, i in enumerate(indices):
            epoch, pos = divmod(int(i), self.n)
            perm, offsets[j] = self._plan(epoch)
            ids[j] = perm[pos]
        return ids, offsets

    def ids(self, indices: np.ndarray) -> np.ndarray:
        return self.locate(indices)[0]


class Windows:
    """Non-overlapping windows of seq_len+1 tokens, shuffled per epoch with a random offset (EpochOrder)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.per_epoch = (len(tokens) - 1 - seq_len) // seq_len
        if self.per_epoch < 1:
            raise DataError(f"corpus of {len(tokens)} tokens is shorter than two sequences of {seq_len}")
        self.order = EpochOrder(self.per_epoch, seed, offset_range=seq_len)

    def starts(self, indices: np.ndarray) -> np.ndarray:
        ids, offsets = self.order.locate(indices)
        return offsets + ids * self.seq_len

    def gather(self, starts: np.ndarray) -> np.ndarray:
        T = self.seq_len + 1
        return np.stack([np.asarray(self.tokens[s:s + T], dtype=np.int64) for s in starts])


def eval_starts(n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """A fixed validation subset: `count` windows spread evenly over the split."""
    last = n_tokens - seq_len - 1
    count = min(count, last + 1)
    return np.linspace(0, last, count).astype(np.int64)
