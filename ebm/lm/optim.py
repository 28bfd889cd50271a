"""Optimisation that keeps sparse gradients sparse.

Embedding rows (input, and output rows scored by a sampled loss) get sparse gradients: only the rows a batch
touches. Everything here works on those rows only, so a step costs O(touched rows · H), not O(V · H):

* ``make_optimizer``: SGD for all parameters (torch's SGD applies sparse gradients row-wise), or Adam for
  dense parameters plus SparseAdam (lazy Adam: moments of touched rows only) for sparse ones;
* ``clip_grad_norm_``: the global L2 norm over dense gradients and the values of coalesced sparse ones;
* ``add_weight_decay_``: L2 decay added to the gradient, for sparse gradients on the touched rows only
  ("lazy" decay, as LazyAdam does), so decay never densifies a gradient.

The learning-rate schedule is the harness's (``ebm.harness.schedule``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

OPTIMIZERS = ("sgd", "adam")
_FUSED_DEVICES = ("cpu", "cuda", "mps")  # where torch's fused Adam runs (elsewhere: its default implementation)


class SplitOptimizer:
    """Several torch optimisers stepped together, with one ``param_groups`` list and one state dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("optimizer state does not match: different parameter split")
        for optimizer, optimizer_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)


def make_optimizer(
    model: nn.Module, name: str, lr: float, sparse: Iterable[nn.Parameter] = ()
) -> SplitOptimizer:
    """The optimiser called ``name`` for ``model``'s parameters; ``sparse`` lists those with sparse gradients.

    "sgd": plain SGD (no momentum, which would turn sparse updates dense). "adam": Adam on dense
    parameters (torch's fused kernel on CPU, CUDA and MPS), SparseAdam on sparse ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    sparse_ids = {id(p) for p in sparse}
    if name == "sgd":
        return SplitOptimizer([torch.optim.SGD(params, lr=lr)])
    dense = [p for p in params if id(p) not in sparse_ids]
    rows = [p for p in params if id(p) in sparse_ids]
    fused = all(p.device.type in _FUSED_DEVICES for p in dense)  # one kernel: 3× the for-loop on this CPU
    optimizers = [torch.optim.Adam(dense, lr=lr, fused=fused or None)] if dense else []
    if rows:  # torch refuses empty groups
        optimizers.append(torch.optim.SparseAdam(rows, lr=lr))
    return SplitOptimizer(optimizers)


def _grads(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Parameters with a gradient; sparse gradients are coalesced in place (duplicate rows summed)."""
    with_grad = [p for p in parameters if p.grad is not None]
    for p in with_grad:
        if p.grad.is_sparse and not p.grad.is_coalesced():
            p.grad = p.grad.coalesce()
    return with_grad


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Scale all gradients so that their global L2 norm is at most ``max_norm``; returns the norm before.

    ‖g‖² = Σ_dense Σ g² + Σ_sparse Σ values², each sparse gradient coalesced first so a row touched twice
    counts once with its summed gradient.
    """
    with_grad = _grads(parameters)
    if not with_grad:
        return torch.zeros(())
    squares = [(p.grad.values() if p.grad.is_sparse else p.grad).float().pow(2).sum() for p in with_grad]
    total = torch.stack(squares).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in with_grad:
        (p.grad.values() if p.grad.is_sparse else p.grad).mul_(scale.to(p.grad.dtype))
    return total


def add_weight_decay_(parameters: Iterable[nn.Parameter], weight_decay: float) -> None:
    """g ← g + λ·θ for dense gradients; for sparse ones g_r ← g_r + λ·θ_r on the touched rows r only."""
    if weight_decay == 0:
        return
    for p in _grads(parameters):
        if p.grad.is_sparse:
            rows = p.grad.indices()[0]
            p.grad.values().add_(p.detach()[rows], alpha=weight_decay)
        else:
            p.grad.add_(p.detach(), alpha=weight_decay)


__all__ = [
    "OPTIMIZERS",
    "SplitOptimizer",
    "add_weight_decay_",
    "clip_grad_norm_",
    "make_optimizer",
]
