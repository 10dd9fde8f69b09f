"""File helpers shared by every layer: writes that appear whole or not at all, hashes, the cache folder.

A reader (another process, or this one after a kill) never sees a half-written file or folder: each
is written under a dot-prefixed temporary name beside its destination and renamed into place, which
POSIX makes atomic on one filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def default_cache_dir() -> Path:
    """``$TRAINLAB_CACHE`` if set, else ``~/.cache/trainlab``: corpora, token shards, the matmul peaks."""
    env = os.environ.get("TRAINLAB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "trainlab"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks so large files stay out of memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes | str, fsync: bool = False) -> None:
    """Write `data` to `path` through a temporary file beside it; `fsync` also makes it durable."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes it private; what it becomes is as readable as its neighbours
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp)
        raise


@contextmanager
def staged_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed to `final` when the block succeeds and removed when it
    fails. An existing empty `final` is replaced; a non-empty one too with `replace`, else the staged
    folder is dropped (another process finished the same work first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; what it becomes is as readable as its neighbours
    try:
        yield tmp
        if final.is_dir() and (replace or not any(final.iterdir())):
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if replace:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` (relative), replacing what was there in one rename."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


@contextmanager
def _ignore_missing() -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        pass
