"""LR range test on real data: a ramp, a stop at divergence, a suggestion, a plot, a command line."""

from __future__ import annotations

import json

from conftest import cli


def test_lr_find_suggests_a_rate_and_stops_at_divergence(tmp_path):
    out = tmp_path / "lrf"
    proc = cli("lr-find", "--preset", "tiny", "--set", "train.batch_size=8", "--start", "1e-5", "--end", "10",
               "--steps", "80", "--out", str(out))
    result = json.loads((out / "lr_find.json").read_text())
    lrs, smoothed = result["lrs"], result["smoothed"]
    assert lrs == sorted(lrs) and abs(lrs[0] - 1e-5) < 1e-12
    assert result["stopped_early"] and max(smoothed[-3:]) > min(smoothed)  # an lr of 10 blows the loss up
    assert 1e-5 < result["suggested_lr"] < result["min_loss_lr"] < lrs[-1]
    assert abs(result["suggested_lr"] - result["min_loss_lr"] / 10) < 1e-12
    assert min(smoothed) < smoothed[0] - 0.3  # it learned somewhere along the ramp
    assert (out / "lr_find.png").stat().st_size > 10_000
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("trainlab train --preset tiny --set train.batch_size=8 --set optim.lr=")
    assert not result["min_at_end"] and "note:" not in proc.stdout


def test_lr_find_says_when_the_loss_still_falls_at_the_end(tmp_path):
    """A range that stops below the rates where the loss rises (1e-6 to 1e-3 on the tiny model): the lowest
    smoothed loss is at --end, so the suggestion is a floor, and the command says so. Running it again into the
    same --out replaces the earlier test's files."""
    out = tmp_path / "lrf"
    for _ in range(2):
        proc = cli("lr-find", "--preset", "tiny", "--set", "train.batch_size=8", "--start", "1e-6", "--end", "1e-3",
                   "--steps", "20", "--out", str(out))
    result = json.loads((out / "lr_find.json").read_text())
    assert result["min_at_end"] and result["min_loss_lr"] == result["lrs"][-1] and not result["stopped_early"]
    assert "still falling at --end (0.001)" in proc.stdout and "the suggestion is a floor" in proc.stdout


def test_lr_find_rejects_an_inverted_range(tmp_path):
    proc = cli("lr-find", "--preset", "tiny", "--start", "1", "--end", "0.1", "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2 and "--start" in proc.stderr and proc.stderr.count("\n") == 1
