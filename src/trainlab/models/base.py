"""The model contract: what the trainer, checkpoints, estimates and exports ask of every model.

Each task's `build_model` returns an `nn.Module` that also satisfies `TrainableModel`; `ModelBase`
gives the defaults, so a model states only what differs. A test builds every registered task's model
and checks the contract: parameter counts on the meta device equal the real ones, `flops_per_token`
agrees with torch's own FLOP count of a forward and backward, and `load_weights` round-trips.

Naming: Muon orthogonalises the 2-D weights inside the repeated blocks, found by the name prefix
`blocks.N.`; a model whose blocks live elsewhere gets AdamW for every parameter.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrainableModel(Protocol):
    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameters; without the token tables (input, untied output and its bias) when asked."""

    def active_params(self) -> int:
        """Parameters one token passes through (a mixture of experts counts top_k of its experts)."""

    def flops_per_token(self) -> int:
        """Training FLOPs (forward and backward) per token of `model.seq_len`-long input."""

    def tied_keys(self) -> tuple[str, ...]:
        """State-dict entries that are the same tensor as another (left out of checkpoints)."""

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's weights (without the tied keys); ValueError when they do not fit."""

    def use_attention(self, kernel: str) -> None:
        """Use this attention kernel (`sdpa` or `math`) wherever the model attends."""


class ModelBase(nn.Module):
    """Defaults of the contract: no tied tensors, no token tables, every parameter active, one kernel."""

    def num_params(self, exclude_embedding: bool = False) -> int:
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        return self.num_params()

    def flops_per_token(self) -> int:
        raise NotImplementedError

    def tied_keys(self) -> tuple[str, ...]:
        return ()

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if set(missing) - set(self.tied_keys()) or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")

    def use_attention(self, kernel: str) -> None:
        pass

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The state dict a checkpoint holds: without the tied entries."""
        state = self.state_dict()
        for key in self.tied_keys():
            state.pop(key, None)
        return state


def param_counts(model: TrainableModel) -> dict[str, int]:
    """Embedding parameters are the token tables (input, untied output and its per-entry bias);
    active ones are those a token passes through (a mixture of experts uses top_k of its experts)."""
    total = model.num_params()
    non_embedding = model.num_params(exclude_embedding=True)
    return {"total": total, "embedding": total - non_embedding, "non_embedding": non_embedding,
            "active": model.active_params()}
