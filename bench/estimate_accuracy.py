"""How good is `trainlab estimate`? Estimated against measured peak memory and step time, 3 shapes.

Each shape trains in a fresh process (eager, the machine's auto precision) so one does not pollute the
next. Memory on CPU: the rise of peak RSS during training over the RSS just before the first step
(weights already allocated), compared with the estimate's gradients + optimizer state + activations. On a GPU:
torch.cuda.max_memory_allocated against the estimate's total. Step time: the estimate without
--measure (from a matmul peak probed in the same process) against the median of 10 timed steps.

    python bench/estimate_accuracy.py
"""

from __future__ import annotations

import json
import subprocess
import sys

SHAPES = {  # name: overrides
    "small": ["model.n_layer=4", "model.n_head=4", "model.d_model=128", "model.seq_len=128", "train.batch_size=32"],
    "medium": ["model.n_layer=6", "model.n_head=6", "model.d_model=384", "model.seq_len=256", "train.batch_size=16"],
    "wide-vocab": ["model.n_layer=2", "model.n_head=4", "model.d_model=256", "model.seq_len=256",
                   "train.batch_size=16", "data.tokenizer=bpe", "data.bpe_vocab_size=8192"],
}

CHILD = r"""
import json, resource, sys, time, tempfile, torch
from pathlib import Path
from trainlab.presets import resolve
from trainlab.data.prepare import prepare
from trainlab.experiment.estimate import estimate
from trainlab import hardware
from trainlab.train.trainer import Trainer

def rss_now():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096

cfg = resolve("shakespeare-char", overrides=sys.argv[1:] + ["train.compile=false"])
data = prepare(cfg.data, cfg.model.seq_len, log=lambda s: None)
cfg = cfg.with_vocab_size(data.tokenizer.vocab_size)
device = hardware.resolve_device(cfg.train.device)
precision = hardware.resolve_precision(cfg.train.precision, device)
# the matmul peak is probed afresh (a temporary cache), as on a machine's first run: this machine's speed drifts
# by 20-30% between hours, and a probe cached at another time would measure that drift, not the model
import functools
import trainlab.experiment.estimate as E
E.hardware.peak_flops = functools.partial(E.hardware.peak_flops, cache_dir=Path(tempfile.mkdtemp()))
trainer = Trainer(cfg, data, Path(tempfile.mkdtemp()), log=lambda s: None)
est = E.estimate(cfg, precision, device, trainer.task)
import gc; gc.collect()
before = rss_now()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
trainer.train_step()  # allocates gradients and optimizer state
times = []
for _ in range(10):
    t = time.perf_counter(); trainer.train_step(); times.append(time.perf_counter() - t)
times.sort()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
m = est["memory_bytes"]
print(json.dumps({"precision": precision, "params": est["params"]["total"],
                  "est_rise": m["gradients"] + m["optimizer"] + m["activations"],
                  "measured_rise": max(peak, peak_before) - before,
                  "est_step_s": est["tokens_per_step"] / est["tokens_per_s"], "measured_step_s": times[len(times) // 2]}))
"""


def main():
    print(f"{'shape':10s} {'params':>8s} {'est. rise':>10s} {'measured':>10s} {'ratio':>6s}   "
          f"{'est. step':>9s} {'measured':>9s} {'ratio':>6s}")
    for name, overrides in SHAPES.items():
        out = subprocess.run([sys.executable, "-c", CHILD, *overrides], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:10s} {r['params'] / 1e6:7.2f}M {r['est_rise'] / 2**20:8.1f}Mi {r['measured_rise'] / 2**20:8.1f}Mi "
              f"{r['est_rise'] / r['measured_rise']:5.2f}x   {r['est_step_s']:8.3f}s {r['measured_step_s']:8.3f}s "
              f"{r['est_step_s'] / r['measured_step_s']:5.2f}x  ({r['precision']})")


if __name__ == "__main__":
    main()
