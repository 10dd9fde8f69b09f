"""trainlab estimate: counts from the meta model equal the real model's and its layer shapes; memory; the probe
that times a config at two depths; the evaluations a run makes inside its clock; the self-check; a GPU from its
spec sheet; the CLI. (Seed 000's parameter table is checked against the masked LM itself, in test_masked_lm.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli
from trainlab.presets import resolve
from trainlab.experiment.estimate import activation_bytes, estimate, meta_model, param_counts
from trainlab.models.gpt import GPT


def causal_counts(n_layer, d_model, vocab_size, tie_embeddings=True, output_bias=False, **_):
    """A decoder's parameters from its layer shapes: per block two RMSNorm weights (d), q/k/v (3 d^2), the
    output projection (d^2), SwiGLU's gate and up (2 d h) and down (h d) with h = 8/3 d rounded up to a
    multiple of 32; a final norm (d); the token table (V d), an untied output head (V d) and its bias (V)."""
    d, V = d_model, vocab_size
    h = -(-(8 * d // 3) // 32) * 32
    non_embedding = n_layer * (2 * d + 4 * d * d + 3 * d * h) + d
    embedding = V * d + (0 if tie_embeddings else V * d) + (V if output_bias else 0)
    return embedding, non_embedding


@pytest.mark.parametrize("shape", [
    dict(n_layer=2, n_head=2, d_model=32, vocab_size=81, tie_embeddings=True),
    dict(n_layer=3, n_head=4, d_model=64, vocab_size=300, tie_embeddings=False),
    dict(n_layer=1, n_head=1, d_model=8, vocab_size=1000, tie_embeddings=False, output_bias=True),
])
def test_meta_counts_equal_the_real_model_and_the_layer_shapes(shape):
    overrides = [f"model.{k}={v}" for k, v in shape.items()]
    cfg = resolve("tiny", overrides=overrides)
    real = GPT(cfg.model)
    counts = param_counts(meta_model(cfg))
    embedding, non_embedding = causal_counts(**shape)
    assert counts["embedding"] == embedding and counts["non_embedding"] == non_embedding
    assert counts["total"] == embedding + non_embedding == sum(p.numel() for p in real.parameters())
    assert real.num_params(exclude_embedding=True) == non_embedding
    assert counts["active"] == counts["total"]  # no mixture of experts: every parameter is active


def test_memory_parts_follow_the_parameter_count():
    cfg = resolve("tiny", overrides=["model.vocab_size=81"])
    result = estimate(cfg, "fp32", torch.device("cpu"), tokens_per_s=1000.0)
    n = result["params"]["total"]
    mem = result["memory_bytes"]
    assert mem["weights"] == 4 * n and mem["gradients"] == 4 * n
    # tiny trains with Muon: one buffer for each matrix in the blocks, AdamW's two moments elsewhere
    muon = sum(p.numel() for name, p in GPT(cfg.model).named_parameters() if p.ndim == 2 and name.startswith("blocks."))
    assert muon > n / 2 and mem["optimizer"] == 8 * (n - muon) + 4 * muon
    adamw = estimate(resolve("tiny", overrides=["model.vocab_size=81", "optim.name=adamw"]), "fp32",
                     torch.device("cpu"), tokens_per_s=1000.0)
    assert adamw["memory_bytes"]["optimizer"] == 8 * n
    assert mem["total"] == mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    assert mem["activations_checkpointed"] < mem["activations"]
    assert activation_bytes(cfg, "bf16") < activation_bytes(cfg, "fp32")
    assert result["tokens"] == 20 * 4 * 32 and result["tokens_per_step"] == 4 * 32 and result["estimated_seconds"] == result["tokens"] / 1000.0


def test_cli_json_follows_the_contract():
    out = json.loads(cli("estimate", "--preset", "tiny", "--set", "model.vocab_size=81", "--json").stdout)
    assert set(out["params"]) == {"total", "embedding", "non_embedding", "active"}
    assert {"weights", "gradients", "optimizer", "activations", "total"} <= set(out["memory_bytes"])
    for key in ("flops_per_token", "tokens_per_step", "tokens_per_param", "estimated_seconds"):
        assert out[key] is not None and out[key] > 0
    table = cli("estimate", "--preset", "tiny", "--measure").stdout
    assert "(measured: real steps of this config" in table and "tokens per parameter" in table


def test_measuring_the_peak_leaves_the_global_rng_alone(tmp_path):
    """A run that measures the peak (empty cache) must draw the same dropout masks as its resumed self."""
    import torch

    from trainlab.hardware import peak_flops

    before = torch.get_rng_state()
    assert peak_flops("fp32", torch.device("cpu"), cache_dir=tmp_path) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_probe_points_extend_linearly_to_the_run_depth():
    from trainlab.experiment.probe import MEASURED, at_depth

    one = {k: 1.0 for k in MEASURED}
    three = {k: 2.0 for k in MEASURED} | {"eval_s": 0.5}  # a noisy probe never makes a layer cost less than nothing
    out = at_depth({1: one, 3: three}, 8)
    assert out["step_s"] == pytest.approx(1.0 + 7 * 0.5) and out["rise_bytes"] == pytest.approx(4.5)
    assert out["eval_s"] == pytest.approx(1.0)
    assert at_depth({2: one}, 2) == one


def test_probe_depths_and_cache_key():
    from trainlab.experiment.probe import depths, probe_key

    cpu = torch.device("cpu")
    cfg = resolve("tiny", overrides=["model.vocab_size=81", "model.n_layer=6"])
    assert depths(cfg) == [1, 3]
    assert depths(cfg.updated({"model": {"n_layer": 3}})) == [3]  # shallow runs are probed as they are
    key = probe_key(cfg, "fp32", cpu)
    # budgets, seeds and schedules do not move a step's time; shapes, precision and compilation do
    assert probe_key(cfg.updated({"train": {"max_steps": 7, "seed": 3}, "schedule": {"warmup_steps": 9}}),
                     "fp32", cpu) == key
    for changed in ({"train": {"batch_size": 3}}, {"train": {"compile": True}}, {"model": {"d_model": 64}}):
        assert probe_key(cfg.updated(changed), "fp32", cpu) != key
    assert probe_key(cfg, "bf16", cpu) != key


def test_probes_are_reused_for_a_day_and_keyed_by_the_cpus_features(tmp_path, monkeypatch):
    """A cached probe is read back without running one; one older than a day, or made under other CPU
    features (another host with the same model name), is taken again."""
    import time

    from trainlab import hardware
    from trainlab.experiment import probe as probe_mod

    cpu = torch.device("cpu")
    cfg = resolve("tiny", overrides=["model.vocab_size=81", "model.n_layer=3"])
    runs = []
    monkeypatch.setattr(probe_mod, "_run_child", lambda c: runs.append(c) or
                        {"step_s": 0.01, "eval_s": 0.1, "sample_s": 0.1, "rise_bytes": 1.0, "baseline_bytes": 2.0})
    probe_mod.probe(cfg, "fp32", cpu, cache_dir=tmp_path)
    probe_mod.probe(cfg, "fp32", cpu, cache_dir=tmp_path)
    assert len(runs) == 1
    path = tmp_path / "estimate_probes.json"
    cached = json.loads(path.read_text())
    (key, entry), = cached.items()
    assert time.time() - entry["measured_at"] < 60
    path.write_text(json.dumps({key: entry | {"measured_at": time.time() - 2 * 24 * 3600}}))
    probe_mod.probe(cfg, "fp32", cpu, cache_dir=tmp_path)
    assert len(runs) == 2
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert probe_mod.probe_key(cfg, "fp32", cpu) != key


def test_evaluations_inside_the_clock_match_a_real_run(tmp_path):
    """estimated_seconds counts the evaluations a run makes in its elapsed_s: the val rows it logs."""
    from trainlab.experiment.estimate import evaluations

    for steps, interval in ((10, 4), (8, 4)):
        run = tmp_path / f"r{steps}"
        cli("train", "--preset", "tiny", "--run-dir", str(run), "--set", f"train.max_steps={steps}",
            "--set", f"train.eval_interval={interval}", "--set", "train.compile=false")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        cfg = resolve("tiny", overrides=[f"train.eval_interval={interval}"])
        assert evaluations(cfg, steps, eval_at_start=False) == sum(r["split"] == "val" for r in rows)
        assert evaluations(cfg.updated({"train": {"compile": True}}), steps, False) == evaluations(cfg, steps, False) - 1


def test_probe_times_the_config_and_the_doctor_checks_the_run_against_it(tmp_path):
    """A real probe of the tiny preset (depth 2: probed as it is) gives the time and memory basis of the
    estimate; a finished run on this machine is compared with it; one from another machine is not."""
    run = tmp_path / "run"
    cli("train", "--preset", "tiny", "--run-dir", str(run), "--set", "train.max_steps=12", "--set", "train.compile=false")
    out = json.loads(cli("estimate", "--preset", "tiny", "--set", "train.max_steps=12", "--set", "train.compile=false",
                         "--json").stdout)
    assert out["throughput_source"].startswith("probe: real") and out["step_seconds"] > 0
    assert out["tokens_per_s"] == pytest.approx(out["tokens_per_step"] / out["step_seconds"])
    mem = out["memory_bytes"]
    assert mem["training_rise"] > 0 and mem["process_baseline"] > mem["training_rise"] // 100
    assert out["estimated_seconds"] == pytest.approx(12 * out["step_seconds"] + 2 * out["eval_seconds"])
    diag = json.loads(cli("doctor", str(run), "--self-check", "--json", "--no-data-check").stdout)
    check = diag["estimate_check"]
    assert check["ran"] and set(check) >= {"tokens_per_s", "peak_memory_mb", "agrees"}
    for part in ("tokens_per_s", "peak_memory_mb"):
        assert check[part]["ratio"] == pytest.approx(check[part]["estimated"] / check[part]["measured"])
    assert check["agrees"] == all(abs(check[p]["ratio"] - 1) <= 0.25 for p in ("tokens_per_s", "peak_memory_mb"))
    assert any(n.startswith("estimate self-check: ") for n in diag["notes"])
    env = json.loads((run / "env.json").read_text())
    env["hardware"]["cpu"] = "Another CPU"
    (run / "env.json").write_text(json.dumps(env))
    diag = json.loads(cli("doctor", str(run), "--self-check", "--json", "--no-data-check").stdout)
    assert diag["estimate_check"] == {"ran": False, "reason": "the run trained on Another CPU, not on this machine"}


def test_seed_001_shape_on_a_t4_from_its_spec_sheet():
    """Seed 001's MiniMind shape (hidden 512, 8 layers, vocab 6400, seq 512, batch 32) estimated for a T4 from a
    machine without one: fp16 (no bf16 tensor cores at 7.5), memory counted with autocast's copies, time said to
    be unmeasured."""
    shape = ["model.d_model=512", "model.n_layer=8", "model.n_head=8", "model.vocab_size=6400", "model.seq_len=512",
             "train.batch_size=32", "optim.name=adamw", "train.max_steps=100", "train.precision=auto"]
    out = json.loads(cli("estimate", "--preset", "tiny", *[a for s in shape for a in ("--set", s)], "--gpu", "t4",
                         "--json").stdout)
    assert out["precision"] == "fp16" and out["device"] == "cuda" and out["gpu"]["name"] == "T4"
    mem, n = out["memory_bytes"], out["params"]["total"]
    assert mem["autocast_copies"] == 2 * (n - 512 * 8 * 2 - 512) and mem["optimizer"] == 8 * n
    assert mem["total"] < out["gpu"]["memory_bytes"]
    assert out["throughput_source"].startswith("not measured: T4 spec-sheet fp16 peak 65 TFLOP/s")
    assert out["estimated_seconds"] == pytest.approx(100 * out["step_seconds"])
    bad = cli("estimate", "--preset", "tiny", "--gpu", "T5", check=False)
    assert bad.returncode == 2 and "known: T4, V100, L4, A100, H100" in bad.stderr
