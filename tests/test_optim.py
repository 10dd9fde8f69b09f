"""Weight-decay groups and schedules, against torch's own optimizers and schedulers."""

from __future__ import annotations

import pytest
import torch

from trainlab.config import ModelConfig, ScheduleConfig
from trainlab.models.gpt import GPT
from trainlab.train.schedules import lr_multiplier
from trainlab.train.optimizers import param_groups


def names_in(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("tied", [True, False])
def test_weight_decay_only_on_matrices_not_norms_or_embeddings(tied):
    model = GPT(ModelConfig(n_layer=2, n_head=2, d_model=16, seq_len=8, vocab_size=30, tie_embeddings=tied))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed, not_decayed = names_in(model, decay["params"]), names_in(model, no_decay["params"])
    assert "embed.weight" in not_decayed and "embed.weight" not in decayed
    assert all("norm" in n for n in not_decayed - {"embed.weight", "lm_head.weight"})
    assert {f"blocks.{i}.attn.qkv_proj.weight" for i in range(2)} <= decayed
    assert {f"blocks.{i}.mlp.down_proj.weight" for i in range(2)} <= decayed
    assert ("lm_head.weight" in decayed) == (not tied)
    # every parameter is in exactly one group, tied ones once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    decay_e, _ = param_groups(model, 0.1, decay_embeddings=True)
    assert "embed.weight" in names_in(model, decay_e["params"])


def torch_lrs(make_scheduler, steps, lr=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total,pct,div,final", [(100, 0.3, 25.0, 1e4), (57, 0.1, 10.0, 100.0), (1000, 0.03, 25.0, 1e4)])
def test_onecycle_equals_torch_onecycle(total, pct, div, final):
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=2e-4, total_steps=total, pct_start=pct, div_factor=div, final_div_factor=final), total)
    cfg = ScheduleConfig(name="onecycle", pct_start=pct, div_factor=div, final_div_factor=final)
    ours = [2e-4 * lr_multiplier(cfg, s, total) for s in range(total)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("total,ratio", [(50, 0.0), (200, 0.1)])
def test_cosine_without_warmup_equals_torch_cosine_annealing(total, ratio):
    expected = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=ratio * 3e-3),
                         total, lr=3e-3)
    cfg = ScheduleConfig(name="cosine", warmup_steps=0, min_lr_ratio=ratio)
    ours = [3e-3 * lr_multiplier(cfg, s, total) for s in range(total)]
    torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)


def test_warmup_then_cosine_shape():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_multiplier(cfg, s, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lr_multiplier(cfg, 110, 110) == pytest.approx(0.1)


def test_cosine_restarts_wsd_and_constant():
    restarts = ScheduleConfig(name="cosine_restarts", warmup_steps=0, cycles=2, min_lr_ratio=0.0)
    assert lr_multiplier(restarts, 0, 100) == pytest.approx(1.0)
    assert lr_multiplier(restarts, 49, 100) < 0.01
    assert lr_multiplier(restarts, 50, 100) == pytest.approx(1.0)  # the restart
    wsd = ScheduleConfig(name="wsd", warmup_steps=5, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_multiplier(wsd, 50, 105) == 1.0
    assert lr_multiplier(wsd, 105, 105) == pytest.approx(0.0)
    assert 0 < lr_multiplier(wsd, 95, 105) < 1
    const = ScheduleConfig(name="constant", warmup_steps=3)
    assert [lr_multiplier(const, s, 10) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("tied,decay_embeddings", [(False, False), (True, False), (False, True)])
def test_adamw_step_matches_a_hand_computed_decoupled_update(tied, decay_embeddings):
    """Two steps of `build_optimizer`'s AdamW against Adam written out: decoupled decay (p <- p - lr*wd*p, not
    an L2 term in the gradient), bias-corrected moments, and decay on matrices only: not on norms, the output
    bias or (unless optim.decay_embeddings) the embedding."""
    from trainlab.config import OptimConfig
    from trainlab.train.optimizers import build_optimizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=30, tie_embeddings=tied,
                            output_bias=True))
    lr, wd, (b1, b2), eps = 0.05, 0.5, (0.8, 0.9), 1e-8
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=lr, weight_decay=wd, betas=(b1, b2), eps=eps,
                                             decay_embeddings=decay_embeddings))
    params = dict(model.named_parameters())  # a tied output head is the embedding, listed once
    decayed = {"blocks.0.attn.qkv_proj.weight", "blocks.0.attn.o_proj.weight", "blocks.0.mlp.gate_up_proj.weight",
               "blocks.0.mlp.down_proj.weight"}
    decayed |= set() if tied else {"lm_head.weight"}
    decayed |= {"embed.weight"} if decay_embeddings else set()
    assert set(params) == decayed | {"embed.weight", "lm_head.bias", "blocks.0.attn_norm.weight",
                                     "blocks.0.mlp_norm.weight", "norm.weight"}
    expected = {n: p.detach().double().clone() for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in expected.items()}
    v = {n: torch.zeros_like(p) for n, p in expected.items()}
    for t in (1, 2):
        grads = {n: torch.randn_like(p) * (0.1 if t == 1 else 3.0) for n, p in params.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        opt.step()
        for n, g in grads.items():
            g = g.double()
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            update = (m[n] / (1 - b1 ** t)) / ((v[n] / (1 - b2 ** t)).sqrt() + eps)
            expected[n] = expected[n] * (1 - lr * (wd if n in decayed else 0.0)) - lr * update
    for n, p in params.items():
        torch.testing.assert_close(p.detach().double(), expected[n], rtol=1e-5, atol=1e-6, msg=n)


def test_muon_equals_torch_muon_bitwise():
    # ours orthogonalises all matrices of a shape in one batched product; the result is torch's step for step
    from trainlab.train.optimizers import Muon

    torch.manual_seed(0)
    shapes = [(48, 16), (16, 16), (16, 40), (48, 16), (16, 40)]
    ours = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=1e-2, weight_decay=0.1, momentum=0.9, ns_dtype=torch.bfloat16)  # torch's precision
    b = torch.optim.Muon(theirs, lr=1e-2, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    for _ in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert p.detach().equal(q.detach())


def test_muon_orthogonalises_in_bf16_only_where_bf16_is_fast(monkeypatch):
    # on a CPU without AVX-512 bf16 a bf16 matmul runs ~100x slower than fp32, so Muon works in fp32 there
    from trainlab import hardware
    from trainlab.train.optimizers import Muon

    def steps(fast: bool, pinned=None) -> torch.Tensor:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"} if fast else {"avx2"}))
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(24, 16) * 0.02)
        opt = Muon([p], lr=1e-2, weight_decay=0.1, momentum=0.9, ns_dtype=pinned)
        for _ in range(3):
            p.grad = torch.randn_like(p)
            opt.step()
        return p.detach()

    assert steps(False).equal(steps(False, torch.float32))
    assert steps(True).equal(steps(True, torch.bfloat16))
    assert not steps(False).equal(steps(True))  # the two precisions do differ on these inputs
    torch.testing.assert_close(steps(False), steps(True), rtol=0, atol=2e-3)  # but both are the same step
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hardware.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert hardware.resolve_precision("auto", torch.device("cpu")) == "bf16"


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    from trainlab.config import OptimConfig
    from trainlab.train.optimizers import MuonWithAdamW, build_optimizer

    for tied in (True, False):
        model = GPT(ModelConfig(n_layer=2, n_head=2, d_model=16, seq_len=8, vocab_size=30, tie_embeddings=tied))
        opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-3, weight_decay=0.1, muon_lr_scale=2.0))
        assert isinstance(opt, MuonWithAdamW)
        muon = names_in(model, [p for g in opt.muon.param_groups for p in g["params"]])
        assert muon == {f"blocks.{i}.{m}.weight" for i in range(2)
                        for m in ("attn.qkv_proj", "attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")}
        adam = [p for g in opt.adamw.param_groups for p in g["params"]]
        assert names_in(model, adam) == {n for n, _ in model.named_parameters()} - muon
        assert len(adam) + sum(len(g["params"]) for g in opt.muon.param_groups) == len(list(model.parameters()))
        assert ("lm_head.weight" in names_in(model, opt.adamw.param_groups[0]["params"])) == (not tied)
        assert [g["lr_scale"] for g in opt.muon.param_groups] == [2.0]


def test_muon_steps_at_its_lr_scale():
    # the trainer sets every group's lr to lr x lr_scale; one Muon step moves a matrix by lr x scale x 0.2 x
    # sqrt(max dim) in RMS (an orthogonal update of RMS 1/sqrt(max dim)), without weight decay
    from trainlab.config import OptimConfig
    from trainlab.train.optimizers import build_optimizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, d_model=16, seq_len=8, vocab_size=30))
    opt = build_optimizer(model, OptimConfig(name="muon", lr=1e-2, weight_decay=0.0, muon_lr_scale=3.0))
    for g in opt.param_groups:
        g["lr"] = 1e-2 * g.get("lr_scale", 1.0)
    w = model.blocks[0].attn.o_proj.weight
    before = w.detach().clone()
    x = torch.randint(0, 30, (4, 8))
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    rms = float((w.detach() - before).pow(2).mean().sqrt())
    assert rms == pytest.approx(3e-2 * 0.2, rel=0.25)  # Newton-Schulz lands near, not on, orthogonal
    assert all(g["lr"] == pytest.approx(1e-2) for g in opt.adamw.param_groups)
    opt.load_state_dict(opt.state_dict())  # new group dicts: the trainer's lr must still reach them
    opt.param_groups[-1]["lr"] = 0.5
    assert opt.muon.param_groups[0]["lr"] == 0.5
