"""Device and precision choices, and a description of the machine for env.json."""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

from trainlab.errors import ConfigError


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


def cpu_has_fast_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device=mps but MPS is not available; use train.device=auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 is for GPUs; on a CPU use bf16 or fp32")
        return name
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        # Compute capability 8.0+ has bf16 tensor cores; a T4 (7.5) does not, so fp16 with a scaler.
        return "bf16" if major >= 8 else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"  # MPS: autocast support varies by macOS and torch version


def attention_kernel(choice: str, device: torch.device, precision: str, seq_len: int) -> str:
    """`math` where the explicit form (trainlab::blocked_attention) beats scaled_dot_product_attention: bf16 on a CPU,
    short sequences (its flash kernel is several times slower there, bench/throughput.py --attention)."""
    if choice != "auto":
        return choice
    return "math" if device.type == "cpu" and precision == "bf16" and seq_len <= 512 else "sdpa"


def autocast_dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def describe() -> dict:
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_bf16": cpu_has_fast_bf16(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
