"""How good is `trainlab estimate`? Estimated against measured memory rise and step time, over the grid
{fp32, bf16 where the host has fast bf16} x {eager, compiled} x three shapes.

The estimate is what `trainlab estimate` prints: a probe of the config at depth 1 and 3, extended
linearly to its depth (trainlab.experiment.probe), from an empty probe cache, as on a machine's first
estimate. The measurement trains the full config in a fresh process: the median of up to 10 timed
steps after warm-up (and compilation), and on a CPU the rise of peak RSS over the RSS just before the
first step (weights, data and torch already loaded); on a GPU torch.cuda.max_memory_allocated over the
memory allocated before the first step. Each cell runs in its own processes, one after another.

    python bench/estimate_accuracy.py [--repeat 3] [--precision fp32,bf16] [--compile false,true]

Prints one line a cell, then the min and max ratio (estimated / measured) of each over the repeats.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from trainlab import hardware
from trainlab.experiment.estimate import estimate
from trainlab.experiment.probe import _run_child, probe
from trainlab.presets import resolve
from trainlab.tasks import prepared

SHAPES = {  # name: overrides; each deep enough that the estimate extends its probes to the run's depth
    "small": ["model.n_layer=4", "model.n_head=4", "model.d_model=128", "model.seq_len=128", "train.batch_size=32"],
    "medium": ["model.n_layer=6", "model.n_head=6", "model.d_model=384", "model.seq_len=256", "train.batch_size=16"],
    "wide-vocab": ["model.n_layer=4", "model.n_head=4", "model.d_model=256", "model.seq_len=256",
                   "train.batch_size=16", "data.tokenizer=bpe", "data.bpe_vocab_size=8192"],
}


# what is compared is a training step and its memory: evaluations and samples, which the probe also times,
# are kept short so that a repeat of the grid takes minutes
QUICK = ["train.eval_batches=2", "train.sample_tokens=0"]


def cell(shape: list[str], precision: str, compiled: bool, cache: Path) -> dict:
    cfg = resolve("shakespeare-char", overrides=shape + QUICK + [f"train.precision={precision}",
                                                                   f"train.compile={compiled}"])
    cfg, _ = prepared(cfg, log=lambda s: None)
    device = hardware.resolve_device("auto")
    est = estimate(cfg, precision, device, timing=probe(cfg, precision, device, cache_dir=cache))
    measured = _run_child(cfg)
    return {"est_rise": est["memory_bytes"]["training_rise"], "rise": measured["rise_bytes"],
            "est_step": est["step_seconds"], "step": measured["step_s"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--compile", default="false,true")
    args = parser.parse_args()
    device = hardware.resolve_device("auto")
    precisions = [p for p in args.precision.split(",") if hardware.native(p, device)]
    print(f"host: {hardware.device_name(device)}, {torch.get_num_threads()} threads; precisions {precisions}")
    print(f"{'shape':10s} {'precision':9s} {'compiled':8s} {'est. rise':>10s} {'measured':>10s} {'ratio':>6s}   "
          f"{'est. step':>9s} {'measured':>9s} {'ratio':>6s}")
    ratios: dict[tuple, list[tuple[float, float]]] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            for precision in precisions:
                for compiled in (c == "true" for c in args.compile.split(",")):
                    for name, shape in SHAPES.items():
                        r = cell(shape, precision, compiled, Path(cache))
                        mem, step = r["est_rise"] / r["rise"], r["est_step"] / r["step"]
                        ratios.setdefault((name, precision, compiled), []).append((mem, step))
                        print(f"{name:10s} {precision:9s} {str(compiled):8s} {r['est_rise'] / 2**20:8.1f}Mi "
                              f"{r['rise'] / 2**20:8.1f}Mi {mem:5.2f}x   {r['est_step']:8.3f}s {r['step']:8.3f}s "
                              f"{step:5.2f}x", flush=True)
    print("\nover the repeats (min-max of estimated / measured):")
    worst = 0.0
    for (name, precision, compiled), rs in ratios.items():
        mems, steps = [m for m, _ in rs], [s for _, s in rs]
        worst = max(worst, *(abs(x - 1) for x in mems + steps))
        print(f"{name:10s} {precision:9s} {str(compiled):8s} memory {min(mems):.2f}-{max(mems):.2f}x   "
              f"step {min(steps):.2f}-{max(steps):.2f}x")
    print(f"largest error: {worst:.0%}")


if __name__ == "__main__":
    main()
