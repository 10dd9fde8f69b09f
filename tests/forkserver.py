"""`python -m trainlab ARGS` for the tests, without importing torch again for every call.

Each call is still its own process running the real entry point: `runpy` runs `trainlab/__main__.py` as
`python -m trainlab` does, with the call's argv, environment and working directory, stdin from /dev/null,
stdout and stderr to files, and a normal interpreter exit (atexit handlers, finalizers, the exit code; a
signal shows as a negative code). What is shared is the interpreter that started it: a server per test
worker imports torch, numpy and trainlab once, then forks a child per call. Importing torch costs 3-4
CPU-seconds, and most of the suite's calls are tiny runs that take less than that, so this cuts a third of the
suite's time on two cores.

The server is single-threaded when it forks (nothing it imports starts a thread). Tests that send signals
to a run, or start several at once, start `python -m trainlab` themselves. TRAINLAB_TEST_SPAWN=1 makes every
call here a fresh interpreter too (tests/test_cli.py checks that both give the same output), and so does any
system but Linux.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

# imported by the server before it forks: what nearly every call imports anyway
PRELOAD = ("torch", "numpy", "yaml", "pydantic", "typer", "safetensors.torch", "tokenizers", "matplotlib",
           "trainlab.cli", "trainlab.train.trainer", "trainlab.doctor", "trainlab.tasks.causal_lm",
           "trainlab.tasks.masked_lm", "trainlab.tasks.sft", "trainlab.tasks.series_tokenizer",
           "trainlab.tasks.series_forecast", "trainlab.models.gpt", "trainlab.models.bert")


def serve() -> None:
    """The server: one JSON request per line on stdin; per request it forks, writes the child's pid, waits
    and writes its exit status. Runs until stdin closes."""
    import gc
    import importlib
    import runpy

    for name in PRELOAD:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # the children's collections (and their exit) skip what was imported: no copying of its pages
    requests = os.fdopen(0, "r")
    for line in requests:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: becomes `python -m trainlab ARGS` and never returns to this loop
            requests.close()
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
                target = os.open(path, flags)
                os.dup2(target, fd)
                os.close(target)
            os.environ.clear()
            os.environ.update(req["env"])
            os.chdir(req["cwd"])
            sys.argv = ["trainlab", *req["args"]]
            runpy.run_module("trainlab", run_name="__main__", alter_sys=True)
            sys.exit(0)
        os.write(1, f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"{os.waitstatus_to_exitcode(status)}\n".encode())


class ForkServer:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "import forkserver; forkserver.serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                     cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
        self.pending = b""
        atexit.register(self.close)

    def run(self, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="trainlab-call-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            req = {"args": list(args), "env": env, "cwd": os.getcwd(), "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            pid = int(self._line(timeout=120))
            try:
                code = int(self._line(timeout))
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._line(timeout=60)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "trainlab", *args], timeout, _text(out), _text(err))
            return subprocess.CompletedProcess([sys.executable, "-m", "trainlab", *args], code, _text(out), _text(err))

    def _line(self, timeout: float) -> str:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired("forkserver", timeout)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the test fork server exited")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _text(path: Path) -> str:
    """What subprocess.run(text=True) gives: decoded, with universal newlines (a progress bar's \\r too)."""
    return io.TextIOWrapper(io.BytesIO(path.read_bytes())).read()


_SERVER: Optional[ForkServer] = None


def run_trainlab(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`python -m trainlab ARGS` with this environment: forked from the warm server, or (TRAINLAB_TEST_SPAWN=1,
    or a server that died) a fresh interpreter."""
    global _SERVER
    # Linux only: on macOS a process that has loaded system frameworks must not go on after fork() without exec
    if os.environ.get("TRAINLAB_TEST_SPAWN") != "1" and sys.platform.startswith("linux"):
        if _SERVER is None or _SERVER.proc.poll() is not None:
            _SERVER = ForkServer()
        return _SERVER.run(args, env, timeout)
    return subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
