"""Make the trainer's golden loss curve: tests/fixtures/golden_curve.json.

Short real runs of the `tiny` preset on the bundled Shakespeare corpus (fp32, eager, one thread),
one per optimizer, trained in-process through `trainlab.train.run.train`; the train loss at a few
steps and the validation loss at each evaluation are written to the fixture, and
tests/test_golden_curve.py checks that the trainer still produces them. Run it again only when a
change to the training loop is meant to change the losses (and say why in the commit):

    .venv/bin/python scripts/golden_curve.py             # rewrite the fixture
    .venv/bin/python scripts/golden_curve.py --compare   # print how far today's losses are from it
    .venv/bin/python scripts/golden_curve.py --threads 2 --out /tmp/curve.json

It takes about half a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden_curve.json"
MAX_STEPS = 30
STEPS = (1, 2, 3, 5, 10, 20, 30)  # the train losses kept: the first updates show the warmup, the rest the decay
VARIANTS: dict[str, dict[str, Any]] = {
    "muon": {},  # the tiny preset's own optimizer
    "adamw": {"optim": {"name": "adamw"}},
    # two micro-batches of 2 for the preset's batch of 4: the accumulation path of the loop
    "muon_accum2": {"train": {"batch_size": 2, "grad_accum": 2}},
}


def config(variant: str, threads: int = 1):
    """The tiny preset run for MAX_STEPS steps, with the variant's changes. Built with `model_copy` on the
    preset's sections, so the same lines run against older trees of the package."""
    from trainlab.presets import get_preset

    cfg = get_preset("tiny")
    changes: dict[str, dict[str, Any]] = {"train": {"max_steps": MAX_STEPS, "threads": threads}}
    for section, update in VARIANTS[variant].items():
        changes[section] = {**changes.get(section, {}), **update}
    for section, update in changes.items():
        setattr(cfg, section, getattr(cfg, section).model_copy(update=update))
    return cfg


def run(cfg, work: Optional[Path] = None) -> dict[str, Any]:
    """Train `cfg` in a temporary run directory; the recorded train losses, validation losses and how many
    of the steps were clipped (so a loop that stopped clipping shows)."""
    import torch

    from trainlab.train.run import train

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        try:
            train(cfg, Path(tmp) / "run", log=lambda s: None)
        finally:
            torch.set_num_threads(threads)  # train() sets train.threads for the whole process
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line]
    train_rows = {r["step"]: r for r in rows if r["split"] == "train"}
    return {"train": {str(s): train_rows[s]["loss"] for s in STEPS},
            "val": {str(r["step"]): r["loss"] for r in rows if r["split"] == "val"},
            "clipped_steps": sum(bool(r.get("clipped")) for r in train_rows.values())}


def curves(threads: int = 1, variants: Optional[list[str]] = None) -> dict[str, Any]:
    return {name: run(config(name, threads)) for name in (variants or VARIANTS)}


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest relative difference between two sets of curves' losses."""
    worst = 0.0
    for name in a:
        for kind in ("train", "val"):
            for step, value in a[name][kind].items():
                worst = max(worst, abs(b[name][kind][step] - value) / abs(value))
    return worst


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="train.threads of the runs (the fixture's: 1)")
    parser.add_argument("--out", type=Path, default=FIXTURE, help="where to write (default: the fixture)")
    parser.add_argument("--compare", action="store_true", help="compare with the fixture instead of writing")
    args = parser.parse_args(argv)

    import torch

    import trainlab

    found = curves(args.threads)
    if args.compare:
        recorded = json.loads(FIXTURE.read_text())["runs"]
        print(json.dumps(found, indent=1))
        print(f"trainlab from {Path(trainlab.__file__).parent}: largest relative difference from the fixture "
              f"{largest_difference(recorded, found):.3g}")
        return 0
    fixture = {"made_by": "scripts/golden_curve.py", "preset": "tiny", "max_steps": MAX_STEPS,
               "threads": args.threads, "variants": VARIANTS, "torch": torch.__version__, "runs": found}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"trainlab from {Path(trainlab.__file__).parent}: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
