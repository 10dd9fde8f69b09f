"""trainlab ablate across machines: `--shard K/N` runs its share of the runs, `--report` gathers them."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import cli
from trainlab.errors import ConfigError
from trainlab.experiment.ablate import parse_shard, shard_of

SWEEP = {
    "base": {"preset": "tiny", "set": {"train.eval_interval": 4, "train.sample_tokens": 0, "train.threads": 1}},
    "budget": {"steps": 8},
    "seeds": 1,
    "baseline": "baseline",
    "variants": {"baseline": {}, "low_lr": {"optim.lr": 1e-3}},
}
# sweep order: (baseline, 0), (low_lr, 0); run i goes to shard i % 2 + 1
SHARD_1 = {("baseline", 0)}
SHARD_2 = {("low_lr", 0)}


def test_runs_are_dealt_round_robin():
    jobs = list(range(7))
    assert [shard_of(jobs, (k, 3)) for k in (1, 2, 3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard_of(jobs, (1, 1)) == jobs
    assert shard_of(jobs, (9, 9)) == []  # more shards than runs: the last ones have nothing to do
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1/1 ") == (1, 1)
    for bad in ("0/2", "3/2", "x", "1/0", "1/", "-1/2", "1.0/2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x"])
def test_a_bad_shard_exits_2_with_one_line(tmp_path, capsys, bad):
    from trainlab.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", str(sweep), "--out", str(tmp_path / "out"), "--shard", bad])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: --shard") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _losses(out):
    return {(r["variant"], r["seed"]): r["val_loss"] for r in json.loads((out / "results.json").read_text())["runs"]}


def _finished(out):
    done = (out / "runs").glob("*/seed-*/result.json")
    return {(p.parent.parent.name, int(p.parent.name.split("-")[1])) for p in done}


def test_shards_then_report_equal_the_unsharded_sweep(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    cli("ablate", str(sweep), "--out", str(whole), "--workers", "2")

    first = cli("ablate", str(sweep), "--out", str(parts), "--shard", "1/2", "--workers", "2")
    assert "shard 1/2 runs 1 of them" in first.stdout and "--report" in first.stdout
    assert _finished(parts) == SHARD_1
    assert not any((parts / name).exists() for name in ("results.json", "results.md", "report.html"))

    early = cli("ablate", str(sweep), "--out", str(parts), "--report", check=False)
    assert early.returncode == 3, early.stderr
    missing = [line for line in early.stderr.splitlines() if line.startswith("missing:")]
    assert len(missing) == 1 and "low_lr seed 0" in missing[0]
    partial = json.loads((parts / "results.json").read_text())
    assert {(m["variant"], m["seed"]) for m in partial["missing"]} == SHARD_2
    assert "Missing 1 run(s)" in (parts / "results.md").read_text()
    assert "Missing runs (1)" in (parts / "report.html").read_text()

    cli("ablate", str(sweep), "--out", str(parts), "--shard", "2/2", "--workers", "2")
    assert _finished(parts) == SHARD_1 | SHARD_2
    final = cli("ablate", str(sweep), "--out", str(parts), "--report")
    assert "missing:" not in final.stderr and "| baseline |" in final.stdout
    assert json.loads((parts / "results.json").read_text())["missing"] == []
    assert "Missing" not in (parts / "report.html").read_text()
    assert _losses(parts) == _losses(whole)  # the same runs, number for number
    assert len(set(_losses(whole).values())) == 2

    again = cli("ablate", str(sweep), "--out", str(parts), "--shard", "2/2")  # a finished shard does nothing
    assert "(1 done already)" in again.stdout
