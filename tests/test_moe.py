"""Mixture of experts: routing against a per-token reference, the balancing term, parameter counts,
and a real training run that logs expert load and refuses export to a dense format."""

from __future__ import annotations

import torch

from trainlab.config import ModelConfig
from trainlab.presets import resolve
from trainlab.experiment.estimate import estimate
from trainlab.models.gpt import GPT, MoE, KVCache

from conftest import cli, read_rows


def moe_cfg(**moe) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=16, vocab_size=40,
                       moe={"experts": 4, "top_k": 2, **moe})


def test_routing_equals_a_per_token_reference():
    torch.manual_seed(0)
    layer = MoE(moe_cfg(shared_expert=True)).eval().requires_grad_(False)
    x = torch.randn(3, 7, 32)
    out, balance, load, dropped = layer(x)
    flat = x.reshape(-1, 32)
    probs = layer.router(flat).softmax(-1)
    ref = torch.zeros_like(flat)
    for i, token in enumerate(flat):
        w, e = probs[i].topk(2)
        w = w / w.sum()
        for weight, expert in zip(w, e):
            ref[i] += weight * layer.expert(int(expert), token[None])[0]
        ref[i] += layer.shared(token[None])[0]
    torch.testing.assert_close(out.reshape(-1, 32), ref, rtol=1e-5, atol=1e-6)
    # Switch's term: experts x sum(share of assignments x mean router probability)
    chosen = probs.topk(2, dim=-1).indices.flatten()
    share = torch.bincount(chosen, minlength=4).float() / chosen.numel()
    assert abs(float(balance) - float(4 * (share * probs.mean(0)).sum())) < 1e-6
    torch.testing.assert_close(load, share)
    assert float(dropped) == 0.0  # evaluation drops nothing


def test_capacity_drops_late_assignments_only_while_training():
    torch.manual_seed(0)
    layer = MoE(moe_cfg(capacity_factor=2.0)).requires_grad_(False)  # 4 experts, top-2: room for every token
    x = torch.randn(2, 16, 32)
    exact = layer.eval()(x)[0]
    full, _, _, dropped = layer.train()(x)
    assert float(dropped) == 0.0
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-6)
    layer.capacity_factor = 0.5  # half the fair share: at least half the assignments cannot fit
    tight, _, load, dropped = layer(x)
    assert float(dropped) >= 0.5 and not torch.allclose(tight, exact)
    capacity = layer.capacity(32)
    assert capacity == 8
    # first choices fill the buffers first: an expert that a token picked first keeps it if it fits
    probs = layer.router(x.reshape(-1, 32)).softmax(-1)
    first = probs.argmax(-1)
    for e in range(4):
        if int((first == e).sum()) <= capacity:
            for t in torch.nonzero(first == e).flatten().tolist():
                assert tight.reshape(-1, 32)[t].abs().sum() > 0


def test_balancing_loss_reaches_the_router():
    torch.manual_seed(0)
    model = GPT(moe_cfg())
    _, aux, load, _ = model(torch.randint(0, 40, (2, 16)), with_aux=True)
    assert load.shape == (2, 4) and torch.allclose(load.sum(-1), torch.ones(2))
    aux.backward()
    assert all(float(b.mlp.router.weight.grad.abs().sum()) > 0 for b in model.blocks)


def test_kv_cache_generation_equals_full_recomputation_with_experts():
    torch.manual_seed(1)
    model = GPT(moe_cfg()).eval()
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.empty(model.cfg, 2, 16, "cpu", torch.float32)
        parts = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_estimate_reports_total_and_active_parameters():
    cfg = resolve("tiny", overrides=["model.vocab_size=65", "model.moe.experts=8", "model.moe.top_k=2"])
    dense = resolve("tiny", overrides=["model.vocab_size=65"])
    p, d = estimate(cfg, "fp32", torch.device("cpu"))["params"], estimate(dense, "fp32", torch.device("cpu"))["params"]
    per_expert = 3 * 32 * cfg.model.ffn_hidden_size
    router = 8 * 32
    assert p["total"] == d["total"] + cfg.model.n_layer * (7 * per_expert + router)
    assert p["active"] == d["total"] + cfg.model.n_layer * (1 * per_expert + router)


def test_training_logs_expert_load_and_export_refuses(tmp_path):
    run = tmp_path / "moe"
    cli("train", "--preset", "tiny", "--run-dir", str(run), "--set", "model.moe.experts=4",
        "--set", "model.moe.shared_expert=true", "--set", "model.qk_norm=true", "--set", "train.max_steps=12")
    rows = [r for r in read_rows(run / "metrics.jsonl") if r["split"] == "train"]
    assert rows and all({"loss_ce", "loss_aux", "moe_max_load", "moe_dropped"} <= set(r) for r in rows)
    for r in rows:  # the logged total is the cross entropy plus the weighted balancing term
        assert abs(r["loss"] - (r["loss_ce"] + r["loss_aux"])) < 1e-4
        assert 1.0 <= r["moe_max_load"] <= 4.0
    proc = cli("export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"), check=False)
    assert proc.returncode == 2 and "mixture of experts" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "hf").exists()


def test_doctor_flags_an_unbalanced_router(tmp_path):
    """The doctor reads moe_max_load: past 2x the mean it asks for a stronger balancing loss; a router
    that sends everything to top_k of its experts (experts / top_k times the mean) has collapsed."""
    import json

    from trainlab.doctor import diagnose

    run = tmp_path / "moe"
    cli("train", "--preset", "tiny", "--run-dir", str(run), "--set", "model.moe.experts=8",
        "--set", "model.moe.top_k=2", "--set", "model.moe.aux_loss_weight=0.02", "--set", "train.max_steps=16")
    path = run / "metrics.jsonl"
    rows = read_rows(path)

    def findings(load):  # the same run, as if its router had balanced this well
        path.write_text("".join(json.dumps({**r, "moe_max_load": load} if r["split"] == "train" else r) + "\n"
                                for r in rows))
        return {f.id: f for f in diagnose(run, check_data=False).findings}

    assert "expert_imbalance" not in findings(1.3)
    f = findings(2.6)["expert_imbalance"]
    assert f.severity == "medium" and "2.60x" in f.evidence and "8 experts" in f.evidence
    assert f.suggested_overrides == {"model.moe.aux_loss_weight": 0.06}
    assert findings(3.9)["expert_imbalance"].severity == "high"
