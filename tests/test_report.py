"""report.html renders in headless Chromium: plots drawn, findings shown, run text escaped.

Under CI=true a missing Chromium fails this test (make test installs it); elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO, cli

FIX = REPO / "tests" / "fixtures" / "doctor" / "golden"
HOSTILE = '<script>document.body.setAttribute("data-pwned","1")</script><img src=x onerror="document.title=1">'


def chromium() -> str | None:
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is not installed; `make test` installs it (apt-get install chromium)")
        pytest.skip("Chromium is not installed; `make test` installs it")
    return found


def headless(exe: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                           *args], capture_output=True, text=True, timeout=120)


def test_report_renders_and_escapes(tmp_path):
    exe = chromium()
    run = tmp_path / "run"
    shutil.copytree(FIX / "lr_too_high", run)
    with open(run / "samples.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": 10**6, "prompt": HOSTILE, "text": HOSTILE}) + "\n")
    cli("doctor", str(run), "--no-data-check")
    url = (run / "report.html").as_uri()
    dom = headless(exe, tmp_path, "--dump-dom", url).stdout
    assert "<title>trainlab doctor: run</title>" in dom
    assert dom.count("<svg") >= 4 and dom.count("<polyline") >= 5  # loss, lr, grad norm, update ratio, ...
    assert 'id="finding-lr_too_high"' in dom
    assert "&lt;script&gt;document.body.setAttribute" in dom  # shown as text...
    assert not re.search(r"<body[^>]*data-pwned", dom)  # ...and never run
    assert "<img" not in dom
    png = tmp_path / "shot.png"
    headless(exe, tmp_path, f"--screenshot={png}", "--window-size=1280,1800", "--hide-scrollbars", url)
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    blue = np.all(np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.03, axis=-1).sum()  # the train-loss line
    red = np.all(np.abs(img - np.array([0xC0, 0x39, 0x2B]) / 255) < 0.03, axis=-1).sum()  # the high-severity badge
    assert blue > 200 and red > 50, (blue, red)
