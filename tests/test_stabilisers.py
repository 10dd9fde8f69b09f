"""Seed 003's stabilisers as config: freezing by name, layer-wise unfreezing, label smoothing, clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import read_rows
from trainlab.presets import resolve
from trainlab.data.prepare import prepare
from trainlab.train.trainer import Trainer


def make_trainer(tmp_path, *overrides):
    cfg = resolve("tiny", overrides=["train.max_steps=12", *overrides])
    data = prepare(cfg.data, cfg.model.seq_len, log=lambda s: None)
    cfg = cfg.with_vocab_size(data.tokenizer.vocab_size)
    return Trainer(cfg, data, tmp_path, log=lambda s: None)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_frozen_attention_stays_put_until_unfrozen(tmp_path):
    t = make_trainer(tmp_path, "train.freeze=['blocks.*.attn.*']", "train.unfreeze.6=['blocks.1.attn.*']")
    start = snapshot(t.model)
    for _ in range(6):
        t.train_step()
    mid = snapshot(t.model)
    for name in start:
        moved = not torch.equal(start[name], mid[name])
        assert moved == (".attn." not in name), name
    for _ in range(6):
        t.train_step()
    end = snapshot(t.model)
    assert not torch.equal(mid["blocks.1.attn.qkv_proj.weight"], end["blocks.1.attn.qkv_proj.weight"])
    assert torch.equal(mid["blocks.0.attn.qkv_proj.weight"], end["blocks.0.attn.qkv_proj.weight"])


def test_an_unfreeze_past_the_budget_is_noted_and_releasing_nothing_frozen_is_refused(tmp_path):
    from trainlab.errors import ConfigError

    said: list[str] = []
    cfg = resolve("tiny", overrides=["train.max_steps=12", "train.freeze=['blocks.*.attn.*']",
                                     "train.unfreeze.6=['blocks.1.attn.*']", "train.unfreeze.40=['blocks.0.attn.*']"])
    data = prepare(cfg.data, cfg.model.seq_len, log=lambda s: None)
    Trainer(cfg.with_vocab_size(data.tokenizer.vocab_size), data, tmp_path, log=said.append)
    assert said == ["note: train.unfreeze at step 40 is past this run's 12 steps; it will not fire unless the "
                    "budget grows"]
    with pytest.raises(ConfigError, match="train.unfreeze.6: 'blocks.1.mlp.*' releases no parameter"):
        make_trainer(tmp_path, "train.freeze=['blocks.*.attn.*']", "train.unfreeze.6=['blocks.1.mlp.*']")


def test_label_smoothing_is_torch_cross_entropy_with_smoothing(tmp_path):
    t = make_trainer(tmp_path, "train.label_smoothing=0.1")
    logits = torch.randn(2, 5, t.cfg.model.vocab_size)
    targets = torch.randint(0, t.cfg.model.vocab_size, (2, 5))
    expected = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), label_smoothing=0.1)
    loss, _ = t.task.loss(lambda x: logits, {"input": None, "target": targets})
    torch.testing.assert_close(loss, expected)
    plain = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
    assert not torch.allclose(expected, plain)
    # evaluation reports the plain cross entropy, so smoothed and unsmoothed runs compare fairly
    val = t.evaluate()
    assert math.isclose(val["bits_per_token"], val["loss"] / math.log(2))


def first_step_gradients(t) -> dict[str, torch.Tensor]:
    """The gradients of the trainer's first step, computed apart from it: its first batch, plain cross
    entropy, on a copy of the model."""
    import copy

    import numpy as np

    model = copy.deepcopy(t.model)
    batch = t.task.batch(np.arange(0, t.cfg.train.batch_size))
    logits = model(batch["input"])
    F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def gradients_the_optimizer_sees(t, monkeypatch) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    step = t.optimizer.step

    def recording_step(*args, **kwargs):
        seen.update({n: p.grad.detach().clone() for n, p in t.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    monkeypatch.setattr(t.optimizer, "step", recording_step)
    return seen


def test_clipping_caps_the_update_norm_and_reports_the_raw_norm(tmp_path, monkeypatch):
    # the global norm by hand: the square root of the sum of every gradient's squares
    for clip, where in ((0.01, "small"), (1e6, "large"), (0, "off")):
        t = make_trainer(tmp_path / where, f"optim.grad_clip={clip}")
        raw = first_step_gradients(t)
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in raw.values()))
        assert 0.01 < norm < 1e6, norm
        seen = gradients_the_optimizer_sees(t, monkeypatch)
        out = t.train_step()
        assert out["grad_norm"] == pytest.approx(norm, rel=1e-4)  # reported: the norm before clipping
        assert out["clipped"] is (where == "small")
        factor = clip / norm if where == "small" else 1.0
        assert set(seen) == set(raw)
        for n, g in raw.items():
            torch.testing.assert_close(seen[n], g * factor, rtol=1e-4, atol=1e-9, msg=n)
        stepped = math.sqrt(sum(float(g.double().pow(2).sum()) for g in seen.values()))
        assert stepped == pytest.approx(clip if where == "small" else norm, rel=1e-4)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    # AdamW: Muon's bf16 orthogonalisation would turn rounding-level gradient differences into update
    # differences of a bf16 ulp, far above the fp32 tolerance this comparison of gradients needs
    big = make_trainer(tmp_path / "a", "train.batch_size=8", "train.grad_accum=1", "optim.grad_clip=0", "optim.name=adamw")
    acc = make_trainer(tmp_path / "b", "train.batch_size=4", "train.grad_accum=2", "optim.grad_clip=0", "optim.name=adamw")
    acc.model.load_state_dict(big.model.state_dict())
    for _ in range(3):
        a, b = big.train_step(), acc.train_step()
        assert abs(a["loss"] - b["loss"]) < 1e-5
    for (n, p), (_, q) in zip(big.model.named_parameters(), acc.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)


def test_early_stopping_ends_the_run_and_says_where(tmp_path):
    from trainlab.train import run as run_mod

    cfg = resolve("tiny", overrides=["train.max_steps=400", "optim.lr=0.3", "schedule.name=constant",
                                     "early_stopping.patience=2", "train.eval_interval=10",
                                     "guard.spike_factor=1000", "guard.max_nonfinite=1000"])
    result = run_mod.train(cfg, tmp_path / "es", log=lambda s: None)
    rows = read_rows(tmp_path / "es" / "metrics.jsonl")
    stop = [r for r in rows if r.get("kind") == "early_stop"]
    assert result["stop_reason"] == "early_stop" and result["step"] < 400 and len(stop) == 1
    vals = [r["loss"] for r in rows if r["split"] == "val"]
    best = min(vals)
    assert all(v >= best for v in vals[vals.index(best) + 1:]) and len(vals) - 1 - vals.index(best) == 2


def test_token_and_epoch_budgets_stop_where_they_should(tmp_path):
    from trainlab.train import run as run_mod

    cfg = resolve("tiny", overrides=["train.max_steps=null", "train.max_tokens=1000"])
    assert run_mod.train(cfg, tmp_path / "t", log=lambda s: None)["step"] == math.ceil(1000 / 128)
    t = make_trainer(tmp_path / "e", "train.max_steps=null", "train.epochs=0.001")
    assert t.total_steps == math.ceil(0.001 * t.task.examples_per_epoch / 4)


def test_calibration_metrics_match_a_direct_computation(tmp_path):
    import numpy as np

    t = make_trainer(tmp_path, "train.eval_batches=2")
    for _ in range(10):
        t.train_step()
    val = t.evaluate()
    T = t.cfg.model.seq_len
    rows = torch.from_numpy(np.stack([np.asarray(t.data.val[s:s + T + 1], dtype=np.int64) for s in t.task.val_starts]))
    with torch.no_grad():
        probs = t.model.eval()(rows[:, :-1]).float().softmax(-1).reshape(-1, t.cfg.model.vocab_size).numpy()
    y = rows[:, 1:].reshape(-1).numpy()
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf <= hi)
        if inside.any():
            ece += abs((pred[inside] == y[inside]).mean() - conf[inside].mean()) * inside.mean()
    entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(1).mean()
    assert abs(val["ece"] - ece) < 1e-4 and abs(val["entropy"] - entropy) < 1e-4
    assert abs(val["confidence"] - conf.mean()) < 1e-5 and abs(val["acc"] - (pred == y).mean()) < 1e-9
