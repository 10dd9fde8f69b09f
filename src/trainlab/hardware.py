"""Facts about the machine: device and precision choices, the matmul peak (measured once and cached),
memory, and a description for env.json."""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from trainlab.errors import ConfigError
from trainlab.files import atomic_write, default_cache_dir


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_fingerprint() -> str:
    """What tells two CPUs apart beyond their model name (a virtual machine's is often generic, and hosts of
    one name differ): a digest of the feature flags, and the core count."""
    import hashlib

    return f"{hashlib.sha256(' '.join(sorted(cpu_flags())).encode()).hexdigest()[:8]}x{os.cpu_count()}"


def cpu_has_fast_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices at least as fast as fp32. A CPU without AVX-512 bf16 or
    AMX does not, by far: on an AVX2 EPYC (Zen 3) a 1024^3 bf16 matmul ran at 1 GFLOP/s against fp32's 99."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the kernel. By default a freed
    block above its (adaptive) threshold, and free space above 2x that at the top of the heap, go back to
    the kernel, so each training step's activations land on fresh pages that the kernel faults in and
    zeroes again: about 95k page faults a step at bench/throughput.py's large shape (0.19 s of system time
    against 1.1 s of wall time) and 20k at the demo's, none with these settings. The cost is that the
    process holds on to its peak memory. True when applied (Linux with glibc)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    # blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, which is never trimmed
    # below 1 GiB of free space; it grows in steps of 64 MiB
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20)))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mps_available() -> bool:
    """Whether Apple's Metal backend is usable here (torch built with it, on a Mac that has it)."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "mps" and not mps_available():
        raise ConfigError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 is for GPUs; on a CPU use bf16 or fp32")
        return name
    if device.type == "cuda":
        # Compute capability 8.0+ has bf16 tensor cores; a T4 (7.5) does not, so fp16 with a scaler.
        return "bf16" if fast_bf16(device) else "fp16"
    if device.type == "cpu":
        return "bf16" if fast_bf16(device) else "fp32"
    return "fp32"  # MPS: autocast support varies by macOS and torch version


# Dense (no sparsity) tensor-core peaks from the vendors' spec sheets, FLOP/s; fp32 is the plain fp32 peak.
# What `trainlab estimate --gpu NAME` uses for a GPU this machine lacks: spec figures, not measurements.
GPU_SPECS: dict[str, dict] = {
    "T4": {"flops": {"fp16": 65e12, "fp32": 8.1e12}, "memory_gib": 15.0, "capability": "7.5"},
    "V100": {"flops": {"fp16": 125e12, "fp32": 15.7e12}, "memory_gib": 16.0, "capability": "7.0"},
    "L4": {"flops": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}, "memory_gib": 22.5, "capability": "8.9"},
    "A100": {"flops": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}, "memory_gib": 40.0, "capability": "8.0"},
    "H100": {"flops": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, "memory_gib": 80.0, "capability": "9.0"},
}


def attention_kernel(choice: str, device: torch.device, precision: str, seq_len: int) -> str:
    """`math` where the explicit form (trainlab::blocked_attention) beats scaled_dot_product_attention: bf16 on a CPU,
    short sequences (its flash kernel is several times slower there, bench/throughput.py --attention)."""
    if choice != "auto":
        return choice
    return "math" if device.type == "cpu" and precision == "bf16" and seq_len <= 512 else "sdpa"


def autocast_dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def describe() -> dict:
    """The machine, for env.json: the CPU, and each CUDA device's name and compute capability (the doctor
    reads them: bf16 on a GPU below 8.0, such as a T4 at 7.5, is emulated), or that MPS is there."""
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_bf16": cpu_has_fast_bf16(), "platform": platform.platform()}
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(count)]
        info["cuda_capability"] = ["{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(count)]
    elif mps_available():
        info["mps"] = True
    return info


def device_name(device: torch.device) -> str:
    """The CPU's model name, the GPU's name, or `mps`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_name()
    return device.type


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak: allocated tensors on a CUDA GPU; elsewhere (a CPU, and MPS, whose memory is the
    process's own) the resident set, which getrusage reports in KiB on Linux and in bytes on macOS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def peak_flops(precision: str, device: torch.device, cache_dir: Optional[Path] = None) -> float:
    """The machine's matmul peak at this precision on this device, measured once and cached by the device's
    name (the GPU's, the CPU's model with its cpu_fingerprint, or `mps`), torch's threads and the precision."""
    name = device_name(device) + (f"|{cpu_fingerprint()}" if device.type == "cpu" else "")
    key = f"{device.type}|{name}|{torch.get_num_threads()}|{precision}"
    path = (cache_dir or default_cache_dir()) / "peak_flops.json"
    cached = json.loads(path.read_text()) if path.exists() else {}
    if key in cached:
        return cached[key]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 8192 if device.type == "cuda" else (2048 if native(precision, device) else 512)  # slow paths: keep it short
    best = measure_matmul(dtype, device, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    cached[key] = best
    atomic_write(path, json.dumps(cached, indent=1))
    return best


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul(dtype: torch.dtype, device: torch.device, n: int) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` on `device`, counted as a training step's 6 n^3 (forward and
    backward), the best of three rounds of three."""
    # a generator of its own: measuring must not move the global RNG (a run that measures would draw
    # different dropout masks from its resumed self, which finds the figure cached). CUDA draws on the GPU
    # (8192^2 on the CPU would be slow); any other device gets numbers drawn on the CPU and copied over
    where = device if device.type == "cuda" else torch.device("cpu")
    g = torch.Generator(device=where).manual_seed(0)
    a, b = (torch.randn(n, n, device=where, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    best = 0.0
    for _ in range(3):
        a @ b
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        synchronize(device)
        best = max(best, 6 * n**3 / (time.perf_counter() - t0))
    return best


def native(precision: str, device: torch.device) -> bool:
    """Whether this machine has the device and runs matmuls at `precision` there at full speed (so its peak
    can be measured here): a CUDA GPU or MPS when present; a CPU in fp32, or in bf16 with AVX-512 bf16/AMX."""
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return mps_available()
    if device.type == "cpu":
        return precision == "fp32" or (precision == "bf16" and cpu_has_fast_bf16())
    return False
