"""train.compile=true (shakespeare-char and kronos-btc default to it): compiled steps train as eager ones do."""

from __future__ import annotations

import torch

from trainlab.presets import resolve
from trainlab.tasks import prepared
from trainlab.train.trainer import Trainer


def test_compiled_steps_match_eager_steps(tmp_path):
    # AdamW: Muon would round the orthogonalisation of both runs' (rounding-level different) gradients apart
    cfg, data = prepared(resolve("tiny", overrides=["optim.name=adamw", "model.n_layer=1"]), log=lambda s: None)
    eager = Trainer(cfg, data, tmp_path / "eager", log=lambda s: None)
    compiled = Trainer(cfg.updated({"train": {"compile": True}}), data, tmp_path / "compiled", log=lambda s: None)
    assert isinstance(compiled.train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.train_forward._orig_mod is compiled.model
    start = [p.detach().clone() for p in compiled.model.parameters()]
    for a, b in zip(eager.model.parameters(), start):
        assert torch.equal(a, b)  # the same seed: the same initial weights
    torch._dynamo.utils.counters.clear()
    try:
        for step in range(3):
            a, b = eager.train_step(), compiled.train_step()
            assert abs(a["loss"] - b["loss"]) < 1e-4 * abs(a["loss"]), (step, a["loss"], b["loss"])
            assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-3 * a["grad_norm"], step
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really ran a compiled graph
    finally:
        torch._dynamo.reset()
    assert any(not torch.equal(p, q) for p, q in zip(compiled.model.parameters(), start))  # the steps moved it
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
