"""Devices other than this machine's CPU: torch's CUDA and MPS queries are patched, so the CUDA and MPS
branches of trainlab.hardware (device, precision, the matmul peak and its cache, memory, env.json's
description) and the doctor's reading of a GPU run are checked on any machine."""

from __future__ import annotations

import json
import math
import resource
import sys
from types import SimpleNamespace

import pytest
import torch

from trainlab import hardware
from trainlab.errors import ConfigError

CUDA, MPS, CPU = torch.device("cuda"), torch.device("mps"), torch.device("cpu")


def _refuse(name):
    def call(*args, **kwargs):
        raise AssertionError(f"torch.cuda.{name} called for a device that is not a CUDA GPU")
    return call


@pytest.fixture
def gpu(monkeypatch):
    """A machine with CUDA GPUs: `gpu("Tesla T4", (7, 5))`, one name and capability per device."""
    def make(*devices):
        names = [d[0] for d in devices]
        caps = [d[1] for d in devices]

        def index(device=None):
            if device is None:
                return 0
            return device if isinstance(device, int) else (torch.device(device).index or 0)

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[index(device)])
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: caps[index(device)])
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    return make


@pytest.fixture
def mac(monkeypatch):
    """A Mac with Apple silicon: MPS and no CUDA, whose functions fail if called."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("get_device_name", "get_device_capability", "synchronize", "max_memory_allocated", "device_count"):
        monkeypatch.setattr(torch.cuda, name, _refuse(name))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def timed(monkeypatch):
    """The matmul timing replaced by a record of what would be measured."""
    calls = []

    def measure(dtype, device, n):
        calls.append((dtype, device.type, n))
        return 1.5e12
    monkeypatch.setattr(hardware, "measure_matmul", measure)
    return calls


# -- device and precision ------------------------------------------------------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu(gpu, monkeypatch):
    gpu(("NVIDIA A100-SXM4-80GB", (8, 0)))
    assert hardware.resolve_device("auto") == CUDA and hardware.resolve_device("cuda") == CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == MPS and hardware.resolve_device("mps") == MPS
    with pytest.raises(ConfigError, match="train.device=cuda but no CUDA GPU"):
        hardware.resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == CPU
    with pytest.raises(ConfigError, match="train.device=mps but MPS is not available"):
        hardware.resolve_device("mps")


@pytest.mark.parametrize("name,capability,auto,fast", [
    ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16", True),
    ("NVIDIA H100 80GB HBM3", (9, 0), "bf16", True),
    ("Tesla T4", (7, 5), "fp16", False),  # no bf16 tensor cores: fp16 with a grad scaler
    ("Tesla V100-SXM2-16GB", (7, 0), "fp16", False),
])
def test_auto_precision_on_a_gpu_follows_its_compute_capability(gpu, name, capability, auto, fast):
    gpu((name, capability))
    assert hardware.fast_bf16(CUDA) is fast
    assert hardware.resolve_precision("auto", CUDA) == auto
    assert hardware.resolve_precision("bf16", CUDA) == "bf16"  # asked for: taken as given (the doctor flags it)


def test_auto_precision_on_mps_is_fp32_and_fp16_is_refused_only_on_a_cpu(mac):
    assert not hardware.fast_bf16(MPS)
    assert hardware.resolve_precision("auto", MPS) == "fp32"
    assert hardware.resolve_precision("fp16", MPS) == "fp16"
    with pytest.raises(ConfigError, match="fp16 is for GPUs"):
        hardware.resolve_precision("fp16", CPU)


def test_attention_kernel_off_the_cpu_is_sdpa(mac):
    assert hardware.attention_kernel("auto", MPS, "fp32", 128) == "sdpa"
    assert hardware.attention_kernel("auto", CUDA, "bf16", 128) == "sdpa"


# -- the matmul peak ----------------------------------------------------------------------------------


def test_peak_flops_is_cached_by_the_gpu_name(gpu, timed, tmp_path):
    threads = torch.get_num_threads()
    gpu(("Tesla T4", (7, 5)))
    assert hardware.device_name(CUDA) == "Tesla T4"
    assert hardware.native("fp16", CUDA)
    assert hardware.peak_flops("fp16", CUDA, cache_dir=tmp_path) == 1.5e12
    assert timed == [(torch.float16, "cuda", 8192)]
    assert hardware.peak_flops("fp16", CUDA, cache_dir=tmp_path) == 1.5e12
    assert len(timed) == 1  # the second time from the cache
    gpu(("NVIDIA A100-SXM4-80GB", (8, 0)))  # another machine sharing the cache folder: measured anew
    hardware.peak_flops("bf16", CUDA, cache_dir=tmp_path)
    assert timed[-1] == (torch.bfloat16, "cuda", 8192)
    cache = json.loads((tmp_path / "peak_flops.json").read_text())
    assert set(cache) == {f"cuda|Tesla T4|{threads}|fp16", f"cuda|NVIDIA A100-SXM4-80GB|{threads}|bf16"}


def test_peak_flops_on_mps_calls_no_cuda_function(mac, timed, tmp_path):
    assert hardware.device_name(MPS) == "mps"
    assert hardware.native("fp32", MPS)
    assert hardware.peak_flops("fp32", MPS, cache_dir=tmp_path) == 1.5e12
    assert timed == [(torch.float32, "mps", 2048)]
    key = f"mps|mps|{torch.get_num_threads()}|fp32"
    assert json.loads((tmp_path / "peak_flops.json").read_text()) == {key: 1.5e12}


def test_a_cached_peak_is_read_without_measuring(mac, tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "measure_matmul", _refuse("(matmul timing)"))
    key = f"mps|mps|{torch.get_num_threads()}|fp16"
    (tmp_path / "peak_flops.json").write_text(json.dumps({key: 7e12}))
    assert hardware.peak_flops("fp16", MPS, cache_dir=tmp_path) == 7e12


def test_waiting_for_mps_uses_torch_mps(mac, monkeypatch):
    waited = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waited.append("mps"))
    hardware.synchronize(MPS)
    hardware.synchronize(CPU)
    assert waited == ["mps"]


def test_the_timing_itself_runs_on_the_cpu_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    flops = hardware.measure_matmul(torch.float32, CPU, 64)
    assert math.isfinite(flops) and flops > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_a_device_this_machine_lacks_is_not_native(cpu_only):
    assert not hardware.native("fp16", CUDA) and not hardware.native("fp32", MPS)
    assert hardware.native("fp32", CPU)


# -- memory and env.json ------------------------------------------------------------------------------


def test_peak_memory_on_a_gpu_is_torch_allocations(gpu):
    gpu(("Tesla T4", (7, 5)))
    assert hardware.peak_memory_mb(CUDA) == 3072.0


@pytest.mark.parametrize("platform,maxrss", [("linux", 300 * 1024), ("darwin", 300 * 2**20)])
@pytest.mark.parametrize("device", [CPU, MPS])
def test_peak_memory_elsewhere_is_the_resident_set_in_each_platforms_unit(monkeypatch, platform, maxrss, device):
    monkeypatch.setattr(sys, "platform", platform)  # KiB on Linux, bytes on macOS
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=maxrss))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", _refuse("max_memory_allocated"))
    assert hardware.peak_memory_mb(device) == 300.0


def test_describe_names_each_gpu_and_its_compute_capability(gpu):
    gpu(("Tesla T4", (7, 5)), ("NVIDIA A100-SXM4-80GB", (8, 0)))
    info = hardware.describe()
    assert info["cuda_devices"] == ["Tesla T4", "NVIDIA A100-SXM4-80GB"]
    assert info["cuda_capability"] == ["7.5", "8.0"]
    assert {"cpu", "cpu_count", "torch_threads", "cpu_bf16", "platform"} <= set(info)


def test_describe_on_a_mac_says_mps(mac):
    info = hardware.describe()
    assert info["mps"] is True and "cuda_devices" not in info


# -- the doctor on a GPU run --------------------------------------------------------------------------


def _gpu_run(path, precision="bf16"):
    """A trainlab run directory as a T4 leaves it: config.yaml, env.json written by the trainer's own
    write_env (under the patched GPU), a short metrics.jsonl."""
    from trainlab.presets import resolve
    from trainlab.train.run import write_env

    path.mkdir()
    cfg = resolve("tiny", overrides=[f"train.precision={precision}", "train.device=cuda"])
    (path / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    write_env(path, {"device": "cuda", "precision": precision})
    rows, tokens = [], 4 * 32
    for step in range(1, 21):
        rows.append({"step": step, "tokens": step * tokens, "elapsed_s": 0.05 * step, "split": "train",
                     "loss": 4.2 - 0.08 * step, "lr": 3e-3 * min(1.0, step / 2), "grad_norm": 0.8, "clipped": False,
                     "tokens_per_s": 2600.0, "mfu": 0.2, "peak_memory_mb": 300.0, "data_wait_frac": 0.01})
        if step % 5 == 0:
            rows.append({"step": step, "tokens": step * tokens, "elapsed_s": 0.05 * step, "split": "val",
                         "loss": 4.25 - 0.08 * step, "ppl": math.exp(4.25 - 0.08 * step)})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _env(run, **hardware_facts):
    env = json.loads((run / "env.json").read_text())
    env["hardware"] = {k: v for k, v in {**env["hardware"], **hardware_facts}.items() if v is not None}
    (run / "env.json").write_text(json.dumps(env))


def _mismatch(run):
    from trainlab.doctor import diagnose

    return next((f for f in diagnose(run, check_data=False).findings if f.id == "precision_mismatch"), None)


def test_bf16_on_a_t4_is_flagged_on_a_trainlab_run(gpu, tmp_path):
    from trainlab.doctor.readers import read

    gpu(("Tesla T4", (7, 5)))
    run = _gpu_run(tmp_path / "t4")
    env = json.loads((run / "env.json").read_text())
    assert env["hardware"]["cuda_devices"] == ["Tesla T4"] and env["hardware"]["cuda_capability"] == ["7.5"]
    s = read(run)
    assert (s.fact("gpu_name"), s.fact("gpu_capability"), s.fact("device")) == ("Tesla T4", "7.5", "cuda")
    f = _mismatch(run)
    assert f is not None and f.severity == "medium"
    assert f.suggested_overrides == {"train.precision": "fp16"}
    assert "Tesla T4" in f.evidence and "7.5" in f.evidence and "fp16" in f.recommendation


def test_the_t4_is_found_by_name_alone_and_under_the_old_key(gpu, tmp_path):
    gpu(("Tesla T4", (7, 5)))
    run = _gpu_run(tmp_path / "t4")
    _env(run, cuda_capability=None)  # an env.json from before capabilities were recorded
    assert _mismatch(run).suggested_overrides == {"train.precision": "fp16"}
    _env(run, cuda_devices=None, gpu="Tesla T4")  # the key the doctor read before
    assert _mismatch(run).suggested_overrides == {"train.precision": "fp16"}


def test_bf16_on_an_ampere_gpu_or_fp16_on_a_t4_is_not_flagged(gpu, tmp_path):
    gpu(("NVIDIA A100-SXM4-80GB", (8, 0)))
    assert _mismatch(_gpu_run(tmp_path / "a100")) is None
    gpu(("Tesla T4", (7, 5)))
    assert _mismatch(_gpu_run(tmp_path / "t4-fp16", precision="fp16")) is None


def test_a_cpu_run_on_a_machine_with_a_t4_is_judged_by_its_cpu(gpu, tmp_path):
    gpu(("Tesla T4", (7, 5)))
    run = _gpu_run(tmp_path / "cpu")
    env = json.loads((run / "env.json").read_text())
    env["device"] = "cpu"
    (run / "env.json").write_text(json.dumps(env))
    _env(run, cpu_bf16=True)
    assert _mismatch(run) is None
    _env(run, cpu_bf16=False)
    assert _mismatch(run).suggested_overrides == {"train.precision": "fp32"}


def test_the_second_gpu_of_a_run_on_cuda_1_is_the_one_read(gpu, tmp_path):
    from trainlab.doctor.readers import read

    gpu(("NVIDIA A100-SXM4-80GB", (8, 0)), ("Tesla T4", (7, 5)))
    run = _gpu_run(tmp_path / "two")
    env = json.loads((run / "env.json").read_text())
    env["device"] = "cuda:1"
    (run / "env.json").write_text(json.dumps(env))
    assert read(run).fact("gpu_name") == "Tesla T4"
    assert _mismatch(run) is not None
