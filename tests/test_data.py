"""Sources, splits, tokenizers and shards on real text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainlab.config import DataConfig
from trainlab.data.corpora import corpus_path
from trainlab.data.prepare import Windows, eval_starts, prepare
from trainlab.data.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer
from trainlab.errors import DataError


@pytest.fixture(scope="module")
def plays(corpus_cache) -> str:
    return corpus_path("shakespeare", corpus_cache).read_text(encoding="utf-8")


def write_jsonl(path: Path, texts: list, broken_at=()) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write("{not json\n" if i in broken_at else json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return path


def test_char_split_is_the_contiguous_tail_and_round_trips(corpus_cache, plays, tmp_path):
    cfg = DataConfig(source="shakespeare", tokenizer="char", val_fraction=0.1, cache_dir=str(corpus_cache))
    data = prepare(cfg, seq_len=64, log=lambda s: None)
    tok = data.tokenizer
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert len(data.train) + len(data.val) == len(plays)
    cut = len(data.train)
    assert tok.decode(data.train[:200]) == plays[:200]
    assert tok.decode(data.val[:200]) == plays[cut:cut + 200]
    assert abs(len(data.val) / len(plays) - 0.1) < 0.01
    assert plays[cut - 1] == "\n"  # the split falls on a line boundary
    assert data.chars_per_token == 1.0


def test_shards_are_cached_by_content(corpus_cache, tmp_path):
    cfg = DataConfig(source="shakespeare", tokenizer="char", cache_dir=str(corpus_cache))
    first = prepare(cfg, seq_len=64, log=lambda s: None)
    messages = []
    second = prepare(cfg, seq_len=64, log=messages.append)
    assert first.directory == second.directory and not any("preparing" in m for m in messages)
    other = prepare(cfg.model_copy(update={"val_fraction": 0.2}), seq_len=64, log=lambda s: None)
    assert other.directory != first.directory


def test_bpe_is_trained_on_the_training_split_only(tmp_path, plays):
    # a word that appears only in the validation document must not become one token
    train_docs = [plays[i:i + 4000] for i in range(0, 400_000, 4000)]
    secret = "zqxjvbwkzqxjvbwk"
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, doc in enumerate(train_docs):
        (folder / f"{i:04d}.txt").write_text(doc + (" " + secret) * 50 * (i % 2 == 0), encoding="utf-8")
    cfg = DataConfig(source=str(folder), tokenizer="bpe", bpe_vocab_size=600, val_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"))
    data = prepare(cfg, seq_len=32, log=lambda s: None)
    tok = data.tokenizer
    assert tok.vocab_size == 600 and tok.eos_id is not None
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"
    # documents are separated by eos and every document lands wholly on one side
    n_docs = int((np.asarray(data.train) == tok.eos_id).sum() + (np.asarray(data.val) == tok.eos_id).sum())
    assert n_docs == len(train_docs)
    assert (np.asarray(data.val) == tok.eos_id).sum() > 0
    saved = load_tokenizer(data.directory / "tokenizer.json")
    assert saved.encode("Romeo and Juliet").tolist() == tok.encode("Romeo and Juliet").tolist()


def test_jsonl_source_skips_broken_lines_and_reports_them(tmp_path, plays):
    docs = [plays[i:i + 2000] for i in range(0, 200_000, 2000)]
    path = write_jsonl(tmp_path / "pretrain.jsonl", docs, broken_at={3, 17})
    messages = []
    cfg = DataConfig(source=str(path), tokenizer="byte", cache_dir=str(tmp_path / "c"))
    data = prepare(cfg, seq_len=64, log=messages.append)
    assert data.meta["skipped_lines"] == 2 and data.meta["first_skipped_lines"] == [4, 18]
    assert any("skipped 2 broken lines" in m for m in messages)
    assert isinstance(data.tokenizer, ByteTokenizer)
    total = len(data.train) + len(data.val)
    assert total == sum(len((d + "\n\n").encode()) for i, d in enumerate(docs) if i not in (3, 17))
    with pytest.raises(DataError, match=r"pretrain.jsonl:4 is not valid JSON"):
        prepare(cfg.model_copy(update={"strict": True}), seq_len=64, log=lambda s: None)


def test_jsonl_without_the_text_field_names_the_field(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"content": "hello there"}\n' * 50)
    with pytest.raises(DataError, match="data.text_field"):
        prepare(DataConfig(source=str(path), cache_dir=str(tmp_path / "c")), seq_len=8, log=lambda s: None)


def test_existing_tokenizer_json_is_used_as_is(tmp_path, plays):
    text = tmp_path / "t.txt"
    text.write_text(plays[:100_000], encoding="utf-8")
    tok = CharTokenizer.train([plays[:50_000]])
    tok.save(tmp_path / "tokenizer.json")
    cfg = DataConfig(source=str(text), tokenizer=str(tmp_path / "tokenizer.json"), cache_dir=str(tmp_path / "c"))
    data = prepare(cfg, seq_len=16, log=lambda s: None)
    assert data.tokenizer.chars == tok.chars


def test_windows_cover_each_epoch_once_and_depend_only_on_the_index():
    tokens = np.arange(1000, dtype=np.uint16)
    w = Windows(tokens, seq_len=10, seed=5)
    starts = w.starts(np.arange(w.per_epoch))
    assert len(set(starts.tolist())) == w.per_epoch  # no window twice in an epoch
    assert len(set((starts % 10).tolist())) == 1  # one offset per epoch: non-overlapping windows
    fresh = Windows(tokens, seq_len=10, seed=5)
    idx = np.array([3 * w.per_epoch + 7, 5, w.per_epoch + 1])
    assert np.array_equal(fresh.starts(idx), w.starts(idx))
    rows = w.gather(w.starts(np.array([0, 1])))
    assert rows.shape == (2, 11) and np.all(np.diff(rows, axis=1) == 1)


def test_eval_subset_is_fixed_and_in_range():
    s = eval_starts(500, 32, 10)
    assert s[0] == 0 and s[-1] == 500 - 33 and len(s) == 10
    assert np.array_equal(s, eval_starts(500, 32, 10))


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_windows_line_ends_and_a_byte_order_mark_read_as_the_plain_text(tmp_path, plays, tokenizer):
    """The same plays saved by a Windows editor (a UTF-8 byte-order mark, "\\r\\n" line ends), as a text file
    and as JSON lines: the same tokenizer and the same token ids as the plain file; "\\r" and the mark never
    become tokens a model learns to write."""
    text = plays[:120_000]
    plain, windows, lines = tmp_path / "plain.txt", tmp_path / "windows.txt", tmp_path / "windows.jsonl"
    plain.write_bytes(text.encode("utf-8"))
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    paras = [p for p in text.split("\n\n") if p.strip()]
    lines.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"text": p}) + "\r\n" for p in paras).encode("utf-8"))
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paras), encoding="utf-8")

    def prep(path):
        cfg = DataConfig(source=str(path), tokenizer=tokenizer, bpe_vocab_size=400, cache_dir=str(tmp_path / "cache"))
        return prepare(cfg, seq_len=32, log=lambda s: None)

    # the text file splits at the same share of its bytes, which its longer line ends move by a few lines: the
    # text read back is the plain text, and no "\r" or mark is in the vocabulary
    b = prep(windows)
    assert b.tokenizer.decode(b.train) + b.tokenizer.decode(b.val) == text
    vocab = (b.directory / "tokenizer.json").read_text(encoding="utf-8")
    assert "\\r" not in vocab and "\\ufeff" not in vocab and "\ufeff" not in vocab
    if tokenizer == "char":
        assert b.tokenizer.vocab_size == prep(plain).tokenizer.vocab_size
    # JSON lines split by document: the very same ids
    a, b = prep(tmp_path / "plain.jsonl"), prep(lines)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)


def test_a_folder_of_one_document_splits_as_the_file_and_of_few_keeps_both_sides(tmp_path, plays):
    """A folder holding one .txt file is split at its tail, as the file is (its one document had gone wholly to
    one side, leaving the other empty); a folder of three documents, which the hash rule may leave without a
    validation document, gives validation one whole document and training the rest."""
    one = tmp_path / "one folder"
    one.mkdir()
    (one / "plays.txt").write_text(plays[:150_000], encoding="utf-8")
    (tmp_path / "plays.txt").write_text(plays[:150_000], encoding="utf-8")

    def prep(source):
        return prepare(DataConfig(source=str(source), tokenizer="char", cache_dir=str(tmp_path / "cache")),
                       seq_len=32, log=lambda s: None)

    a, b = prep(one), prep(tmp_path / "plays.txt")
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val) and len(a.val) > 0
    few = tmp_path / "few"
    few.mkdir()
    docs = [plays[i * 50_000:(i + 1) * 50_000] for i in range(3)]
    for i, doc in enumerate(docs):
        (few / f"{i}.txt").write_text(doc, encoding="utf-8")
    c = prep(few)
    val = c.tokenizer.decode(c.val.tolist())
    assert len(c.train) > len(c.val) > 0 and sum(d in val for d in docs) == 1 and len(val) < 50_010
