"""Optimizers: AdamW, or Muon for the transformer blocks' matrices with AdamW for everything else.

Muon (Keller Jordan, 2024) keeps a momentum of the gradient and replaces it by the nearest
semi-orthogonal matrix (a few Newton-Schulz iterations, in bf16 where the device has fast bf16) before
the step, so every direction of a weight matrix moves at the same rate. On our small causal LMs it
reaches a given loss in about a quarter fewer steps than AdamW, which more than pays for its
orthogonalisation. Embeddings, output heads, norms and biases are not matrices it suits; AdamW keeps
them.

Our Muon is torch's `torch.optim.Muon` (torch >= 2.9) step for step, with the update scaled to AdamW's
RMS (Moonshot's `match_rms_adamw`: lr x 0.2 x sqrt(max(rows, cols))), but it orthogonalises all
matrices of one shape in one batched product (a 4-layer model's 16 matrices take 4 batched calls, not
16) and runs on every torch the package supports.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Optional

import torch

from trainlab.errors import ConfigError
from trainlab.hardware import fast_bf16

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic iteration's (a, b, c), as in torch and Keller's Muon
NS_STEPS = 5
_BLOCK = re.compile(r"(^|\.)\w*blocks\.\d+\.")  # a parameter inside a stack of transformer blocks


def orthogonalise(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T for each matrix of a (k, m, n) batch, in `dtype`."""
    x = g.to(dtype)
    wide = x.size(-2) > x.size(-1)
    if wide:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if wide else x


def ns_dtype_for(device: torch.device) -> torch.dtype:
    """bf16 (torch's and Keller's choice) where the device multiplies it fast, else fp32: on a CPU without
    AVX-512 bf16 the demo's orthogonalisation took 0.85 s a step in bf16 and 26 ms in fp32."""
    return torch.bfloat16 if fast_bf16(device) else torch.float32


class Muon(torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose update is orthogonalised; decoupled weight decay; 2-D parameters only.
    `ns_dtype` is the orthogonalisation's precision; None picks it for the parameters' device (`ns_dtype_for`)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = NS_STEPS, ns_dtype: Optional[torch.dtype] = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    by_shape[tuple(p.shape)].append(p)
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for shape, params in by_shape.items():
                # one multi-tensor op per stage rather than one op per matrix: same arithmetic, fewer launches
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    bufs.append(state["momentum_buffer"])
                grads = [p.grad for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - mu)
                updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
                dtype = self.ns_dtype or ns_dtype_for(params[0].device)
                ortho = orthogonalise(torch.stack(updates), group["ns_steps"], dtype=dtype).to(params[0].dtype)
                scaled_lr = lr * 0.2 * math.sqrt(max(shape))  # the update's RMS matches AdamW's
                torch._foreach_mul_(params, 1 - lr * wd)
                torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-scaled_lr)
        return loss


def muon_parameter(name: str, p: torch.nn.Parameter) -> bool:
    """Matrices inside the transformer blocks; embeddings, heads, norms and biases stay with AdamW."""
    return p.ndim == 2 and bool(_BLOCK.search(name))


def param_groups(model: torch.nn.Module, weight_decay: float, decay_embeddings: bool = False,
                 exclude: Optional[set[int]] = None) -> list[dict]:
    """Matrices of linear layers decay; norms, biases and (by default) embeddings do not."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set(exclude or ())
    for _, p in model.named_parameters():
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        is_embedding = id(p) in embedding_ids
        if p.ndim >= 2 and (decay_embeddings or not is_embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict], lr: float, betas, eps: float) -> torch.optim.Optimizer:
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


class MuonWithAdamW:
    """Muon for the blocks' matrices and AdamW for the rest, stepped together.

    It has what the trainer and torch's GradScaler use of an optimizer: `param_groups` (all of both; a
    group's `lr_scale` multiplies the lr the trainer sets), `step`, `zero_grad` and a state dict.
    """

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:  # loading a state dict replaces the group dicts: always the current ones
        return self.adamw.param_groups + self.muon.param_groups

    def step(self, closure=None):
        self.adamw.step()
        self.muon.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(model: torch.nn.Module, optim) -> Any:
    """`optim` is the run's OptimConfig."""
    if optim.name == "adamw":
        return _adamw(param_groups(model, optim.weight_decay, optim.decay_embeddings), optim.lr, optim.betas, optim.eps)
    matrices = [p for name, p in model.named_parameters() if muon_parameter(name, p)]
    if not matrices:
        raise ConfigError("optim.name=muon: this model has no transformer-block matrices for Muon; use adamw")
    muon = Muon([{"params": matrices, "lr_scale": optim.muon_lr_scale}], lr=optim.lr,
                weight_decay=optim.weight_decay, momentum=optim.muon_momentum)
    rest = param_groups(model, optim.weight_decay, optim.decay_embeddings, exclude={id(p) for p in matrices})
    return MuonWithAdamW(muon, _adamw(rest, optim.lr, optim.betas, optim.eps))
