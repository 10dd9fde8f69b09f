"""The measured basis of an estimate: real training steps of the run's own layers, timed on this machine.

A training step of a transformer is a fixed part (embedding, head, loss, optimizer bookkeeping, the
per-step overhead that dominates small shapes) plus one part per layer. Both are measured, not
modelled: the run's exact config is trained for a few steps at depth 1 and at depth 3, each in a
fresh process (so its peak memory is its own), in the run's precision, compiled or not, with its
optimizer (Muon's Newton-Schulz iterations included) and attention kernel. Step time, evaluation,
sampling and memory are then linear in depth: at depth L, fixed + L x per layer. A probe at the run's
depth itself is taken when the depth cannot be varied or is 3 or less.

Results are cached by everything that moves them (the config without its budgets, precision,
compile, device name, threads, torch version, and for a CPU its feature flags and core count), for a day:
a machine is not a constant (a virtual machine moves to another host under the same CPU name; a probe
cached hours earlier, by another session, put the demo's self-check 1.9x off where a fresh one was 1.3x).

    python -m trainlab.experiment.probe < spec.json    # the child: one depth, one JSON line out
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from trainlab import hardware
from trainlab.config import RunConfig
from trainlab.errors import TrainlabError
from trainlab.files import atomic_write, default_cache_dir

# keys that decide how long a run lasts or what it keeps, not how long one step takes
_NOT_TIMING = {"schedule", "early_stopping", "checkpoint", "guard"}
_NOT_TIMING_TRAIN = {"max_steps", "max_tokens", "max_seconds", "epochs", "seed", "log_interval", "eval_interval"}
MEASURED = ("step_s", "eval_s", "sample_s", "rise_bytes", "baseline_bytes")
PROBE_TTL_S = 24 * 3600  # a probe older than this is taken again


def probe_key(cfg: RunConfig, precision: str, device: torch.device) -> str:
    tree = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_TIMING}
    tree["train"] = {k: v for k, v in tree.get("train", {}).items() if k not in _NOT_TIMING_TRAIN}
    machine = [device.type, hardware.device_name(device)]
    if device.type == "cpu":
        machine.append(hardware.cpu_fingerprint())
    text = json.dumps([tree, precision, *machine, torch.get_num_threads(), torch.__version__], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def depths(cfg: RunConfig) -> list[int]:
    """The depths to probe: 1 and 3 when the model's size follows model.n_layer (two layers apart, so
    the per-layer slope is twice as far above the noise of two timings as from adjacent depths), else the
    run's own; a run of 3 layers or fewer is probed at its own depth."""
    from trainlab.models.base import param_counts
    from trainlab.tasks import meta_model

    n = cfg.model.n_layer
    if n <= 3:
        return [n]
    sizes = [param_counts(meta_model(cfg.updated({"model": {"n_layer": k}})))["total"] for k in (1, 3)]
    return [1, 3] if sizes[0] != sizes[1] else [n]


def at_depth(points: dict[int, dict[str, float]], n: int) -> dict[str, float]:
    """Each measured quantity at depth n, on the line through the probed depths (or the one probe)."""
    if len(points) == 1:
        return dict(next(iter(points.values())))
    (d1, p1), (d2, p2) = sorted(points.items())
    out = {}
    for key in MEASURED:
        per_layer = max(0.0, (p2[key] - p1[key]) / (d2 - d1))
        out[key] = p1[key] + (n - d1) * per_layer
    return out


def probe(cfg: RunConfig, precision: str, device: torch.device, cache_dir: Optional[Path] = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Step, evaluation and sampling seconds, and the training memory rise and process baseline, of `cfg`
    at its own depth on this machine, from probes at depths 1 and 3 (cached)."""
    path = (cache_dir or default_cache_dir()) / "estimate_probes.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    points: dict[int, dict[str, float]] = {}
    for depth in depths(cfg):
        probed = cfg.updated({"model": {"n_layer": depth}, "train": {"precision": precision}})
        key = probe_key(probed, precision, device)
        if time.time() - cached.get(key, {}).get("measured_at", 0.0) > PROBE_TTL_S:
            log(f"probing {depth} layer{'s' if depth > 1 else ''} ({precision}"
                f"{', compiled' if cfg.train.compile else ''}; cached for a day)")
            cached[key] = _run_child(probed) | {"measured_at": time.time()}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(cached, indent=1))
        points[depth] = cached[key]
    return at_depth(points, cfg.model.n_layer) | {"probed_depths": sorted(points)}


def _run_child(cfg: RunConfig) -> dict[str, float]:
    spec = json.dumps({"config": cfg.to_dict()})
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "trainlab.experiment.probe"], input=spec, capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise TrainlabError(f"the timing probe failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss() -> int:
    """The resident set now (Linux); elsewhere (macOS) the peak so far, which is what it is before training."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_rss()


def _peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _child() -> None:
    import gc
    import tempfile
    import time

    from trainlab.presets import build_config
    from trainlab.tasks import prepared
    from trainlab.train.trainer import Trainer

    spec = json.loads(sys.stdin.read())
    cfg, data = prepared(build_config(spec["config"]), log=lambda s: None)
    device = hardware.resolve_device(cfg.train.device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        elif device.type == "mps":
            torch.mps.synchronize()

    with tempfile.TemporaryDirectory(prefix="trainlab-probe-") as where:
        trainer = Trainer(cfg, data, Path(where), log=lambda s: None)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            baseline = torch.cuda.memory_allocated()
        else:
            baseline = _rss()
        for _ in range(3 if cfg.train.compile else 2):  # compilation, gradients and optimizer state
            trainer.train_step()
        times: list[float] = []
        while len(times) < 10 and (len(times) < 3 or sum(times) < 2.0):
            sync()
            t0 = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - t0)
        evals, samples = [], []
        for _ in range(3 if cfg.train.compile else 2):  # the best of two; a compiled run's first compiles
            t0 = time.perf_counter()
            trainer.evaluate()
            sync()
            evals.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            if cfg.train.sample_tokens:
                trainer.sample(cfg.train.sample_tokens)
            samples.append(time.perf_counter() - t0)
        if cfg.train.compile:
            evals, samples = evals[1:], samples[1:]
        if device.type == "cuda":
            rise = torch.cuda.max_memory_allocated() - baseline
        else:
            rise = max(_peak_rss(), _rss()) - baseline
    times.sort()
    print(json.dumps({"step_s": times[len(times) // 2], "eval_s": min(evals), "sample_s": min(samples),
                      "rise_bytes": rise, "baseline_bytes": baseline}))


if __name__ == "__main__":
    _child()
