"""LR range test: ramp the learning rate exponentially over a short run and watch the loss.

The loss is smoothed with a bias-corrected exponential moving average; the test stops when the
smoothed loss exceeds `diverge` times its minimum (or turns non-finite). The suggestion is the rate
at the minimum smoothed loss divided by 10 (one decade before things go wrong); the rate where the
smoothed loss falls fastest is reported beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from trainlab.config import RunConfig
from trainlab.presets import build_config


OUTPUTS = ("lr_find.json", "lr_find.png")


def check_out(out_dir: Path) -> None:
    """An --out that holds anything but an earlier range test's files is refused: the test would write among
    them (a run directory, a project folder). An earlier test's files are replaced."""
    from trainlab.errors import TrainlabError

    if out_dir.exists() and not out_dir.is_dir():
        raise TrainlabError(f"--out '{out_dir}' is a file; give a directory")
    other = sorted(p.name for p in out_dir.iterdir() if p.name not in OUTPUTS) if out_dir.is_dir() else []
    if other:
        raise TrainlabError(f"--out '{out_dir}' already holds files other than an LR range test's "
                            f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                            f"give a new or empty folder")


def lr_range_test(cfg: RunConfig, data, out_dir: Path, start: float = 1e-6, end: float = 1.0, steps: int = 100,
                  beta: float = 0.9, diverge: float = 4.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    from trainlab.train.trainer import Trainer

    tree = cfg.to_dict()
    tree["guard"].update(spike_factor=1e9, max_nonfinite=10**9)  # the test wants to see the blow-up
    tree["train"]["compile"] = False
    cfg = build_config(tree)
    trainer = Trainer(cfg, data, out_dir, log=log)
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    for i in range(steps):
        lr = start * (end / start) ** (i / max(steps - 1, 1))
        loss = trainer.train_step(lr=lr)["loss"]
        if not math.isfinite(loss):
            break
        avg = beta * avg + (1 - beta) * loss
        value = avg / (1 - beta ** (i + 1))
        lrs.append(lr), losses.append(loss), smoothed.append(value)
        best = min(best, value)
        if i > 5 and value > diverge * best:
            break
    if len(smoothed) < 3:
        from trainlab.errors import TrainlabError

        raise TrainlabError(f"the loss diverged within {len(smoothed)} steps of the LR range test; lower --start")
    i_min = min(range(len(smoothed)), key=smoothed.__getitem__)
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
              for i in range(1, i_min)] if i_min > 1 else []
    i_steep = (1 + min(range(len(slopes)), key=slopes.__getitem__)) if slopes else i_min
    result = {"lrs": lrs, "losses": losses, "smoothed": smoothed, "min_loss_lr": lrs[i_min],
              "steepest_lr": lrs[i_steep], "suggested_lr": lrs[i_min] / 10,
              "stopped_early": len(lrs) < steps, "steps": len(lrs),
              # still falling at the last rate tried: the minimum lies beyond --end, and the suggestion is a floor
              "min_at_end": i_min == len(lrs) - 1 and len(lrs) == steps}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lr_find.json").write_text(json.dumps(result, indent=1))
    plot(result, out_dir / "lr_find.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional: pip install trainlab[plots]
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=1, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="C0", lw=2, label="smoothed loss")
    ax.axvline(result["suggested_lr"], color="C2", ls="--", label=f"suggested {result['suggested_lr']:.2e}")
    ax.axvline(result["steepest_lr"], color="C1", ls=":", label=f"steepest {result['steepest_lr']:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
