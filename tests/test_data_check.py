"""trainlab data check: exact and near duplicates and train/validation overlap, on real Shakespeare
paragraphs with duplicates planted at known places."""

from __future__ import annotations

import json
import re

import pytest

from conftest import cli
from trainlab.config import DataConfig
from trainlab.data.check import check_source
from trainlab.data.prepare import _is_val


@pytest.fixture(scope="module")
def paragraphs(corpus_cache):
    from trainlab.data.corpora import get_corpus

    text = get_corpus("shakespeare", corpus_cache).read_text(encoding="utf-8")
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if 400 <= len(p.strip()) <= 1500]
    seen, out = set(), []
    for p in paras:  # distinct to begin with
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out[:600]


def edit(p: str) -> str:
    """A near duplicate: two words changed."""
    words = p.split(" ")
    words[3], words[len(words) // 2] = "verily", "forsooth"
    return " ".join(words)


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")


def test_clean_corpus_has_no_duplicates(paragraphs, tmp_path):
    write_jsonl(tmp_path / "clean.jsonl", paragraphs)
    r = check_source(DataConfig(source=str(tmp_path / "clean.jsonl"), val_fraction=0.2))
    assert r["train_exact_duplicate_rate"] == 0
    assert r["train_near_duplicate_rate"] < 0.01 and r["val_in_train_near_rate"] < 0.01


def test_planted_duplicates_are_found(paragraphs, tmp_path):
    base, extra = paragraphs[:500], []
    extra += base[:50]  # exact copies: the split puts each copy beside its original
    extra += [edit(p) for p in base[50:150]]  # near copies: they fall on either side
    write_jsonl(tmp_path / "d.jsonl", base + extra)
    r = check_source(DataConfig(source=str(tmp_path / "d.jsonl"), val_fraction=0.2))
    docs = base + extra
    train = [d for d in docs if not _is_val(d, 0.2)]
    val = [d for d in docs if _is_val(d, 0.2)]
    exact_train = sum(1 for p in base[:50] if not _is_val(p, 0.2))
    assert r["units_checked"] == {"train": len(train), "val": len(val)}
    assert r["train_exact_duplicate_rate"] == pytest.approx(exact_train / len(train))
    near_pairs_train = sum(1 for p in base[50:150] if not _is_val(p, 0.2) and not _is_val(edit(p), 0.2))
    leaked = sum(1 for p in base[50:150] if _is_val(p, 0.2) != _is_val(edit(p), 0.2))
    assert r["train_near_duplicate_rate"] * len(train) == pytest.approx(near_pairs_train, abs=2)
    assert r["val_in_train_near_rate"] * len(val) == pytest.approx(leaked, abs=2)
    assert leaked >= 10


def test_data_check_command(paragraphs, tmp_path):
    docs = paragraphs[:300] + paragraphs[:100]
    write_jsonl(tmp_path / "dup.jsonl", docs)
    out = cli("data", "check", str(tmp_path / "dup.jsonl")).stdout
    assert "duplicates in train: exact" in out and "data_duplicates" in out
    doc = json.loads(cli("data", "check", str(tmp_path / "dup.jsonl"), "--json").stdout)
    assert doc["findings"][0]["id"] == "data_duplicates" and doc["findings"][0]["severity"] == "high"


def test_instruction_data_is_checked_by_conversation_split_as_the_sft_task_splits_it(paragraphs, tmp_path):
    """An instruction .jsonl has no 'text' field: its conversations are the units, split by the sft task's own
    rule (a hash of the messages), so a conversation repeated in the file is found in train (exact and near)."""
    from trainlab.data.sft import is_val

    pairs = [(f"Say the passage {i}.", p) for i, p in enumerate(paragraphs[:300])]
    docs = pairs + pairs[:40] + [(q, edit(a)) for q, a in pairs[40:80]]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in docs))
    r = check_source(DataConfig(source=str(path), val_fraction=0.2))
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in docs]
    n_val = sum(is_val(m, 0.2) for m in messages)
    assert r["kind"] == "conversations" and r["units_checked"] == {"train": len(docs) - n_val, "val": n_val}
    exact_train = sum(1 for m in messages[:40] if not is_val(m, 0.2))
    assert r["train_exact_duplicate_rate"] == pytest.approx(exact_train / (len(docs) - n_val))
    assert r["train_near_duplicate_rate"] > 0
    from trainlab.errors import DataError

    with pytest.raises(DataError, match="has a string field 'text'"):  # neither text nor conversations
        (tmp_path / "other.jsonl").write_text('{"a": 1}\n')
        check_source(DataConfig(source=str(tmp_path / "other.jsonl")))


def test_the_built_instruction_set_is_checked_as_conversations(corpus_cache):
    """shakespeare-qa is built from a corpus, not a file the user names: `data check shakespeare-qa` and the
    doctor's data check of an sft run on it read the built file; the doctor does not build it."""
    from trainlab.data.check import check_config

    cfg = DataConfig(source="shakespeare-qa", cache_dir=str(corpus_cache))
    r = check_config(cfg)
    assert r["kind"] == "conversations" and r["source"].endswith("shakespeare-qa.jsonl")
    assert r["units_checked"]["train"] > 1000 and r["train_exact_duplicate_rate"] == 0
    assert check_config(DataConfig(source="shakespeare-qa", cache_dir=str(corpus_cache / "elsewhere")),
                        fetch=False) is None


def test_candle_check_counts_gaps_repeats_and_impossible_candles(corpus_cache, tmp_path):
    """`data check` on a candle CSV: the bundled hourly BTC file has no gap (12 of its rows, on 2017-11-12,
    are interleaved out of order and are sorted); a slice with 5 hours cut out in two places, one hour twice and
    one candle whose high is below its low reports exactly those."""
    from trainlab.data.check import check_candles, format_candles
    from trainlab.data.corpora import get_corpus

    btc = get_corpus("btc-1h", corpus_cache)
    r = check_candles(btc)
    assert r["rows"] == 20_111 and r["spacing_s"] == 3600 and r["gaps"] == 0 and r["missing_rows"] == 0
    assert r["notes"] == ["rows were out of time order; sorted by timestamp"] and r["high_below_low"] == 0
    lines = btc.read_text().splitlines()
    header, body = lines[0], lines[1:201]
    cells = body[50].split(",")
    cells[2], cells[3] = cells[3], str(float(cells[2]) + 1)  # high below low
    body[50] = ",".join(cells)
    cut = body[:100] + body[102:150] + body[153:] + [body[160]]  # 2 hours, then 3, missing; one hour twice
    path = tmp_path / "slice.csv"
    path.write_text("\n".join([header, *cut]) + "\n")
    r = check_candles(path)
    assert (r["rows"], r["gaps"], r["missing_rows"], r["largest_gap_s"]) == (195, 2, 5, 4 * 3600)
    assert r["high_below_low"] == 1 and "1 repeated timestamp(s); kept the last row of each" in r["notes"]
    assert "2 gap(s) in it, 5 row(s) missing in all, the largest 4 h" in format_candles(r)
