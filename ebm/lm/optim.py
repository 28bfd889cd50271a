"""Optimisation that keeps sparse gradients sparse.

Embedding rows (input, and output rows scored by a sampled loss) get sparse gradients: only the rows a batch
touches. Everything here works on those rows only, so a step costs O(touched rows · H), not O(V · H):

* ``make_optimizer``: SGD for all parameters (torch's SGD applies sparse gradients row-wise), or Adam for
  dense parameters plus SparseAdam (lazy Adam: moments of touched rows only) for sparse ones;
* ``clip_grad_norm_``: the global L2 norm over dense gradients and the values of coalesced sparse ones;
* ``add_weight_decay_``: L2 decay added to the gradient, for sparse gradients on the touched rows only
  ("lazy" decay, as LazyAdam does), so decay never densifies a gradient.

And the learning rate over a run, as pure functions of where the run is:

* ``scheduled_lr``: linear warm-up, then cosine or linear decay over the run's progress (a fraction of its
  steps or of its time budget), or constant ("plateau");
* ``plateau_lr``: the learning rate multiplied by a factor whenever the validation perplexity does not improve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("plateau", "cosine", "linear")


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
    parameters, SparseAdam on sparse ones.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    sparse_ids = {id(p) for p in sparse}
    if name == "sgd":
        return SplitOptimizer([torch.optim.SGD(params, lr=lr)])
    dense = [p for p in params if id(p) not in sparse_ids]
    rows = [p for p in params if id(p) in sparse_ids]
    pairs = ((torch.optim.Adam, dense), (torch.optim.SparseAdam, rows))
    optimizers = [optimizer(group, lr=lr) for optimizer, group in pairs if group]  # torch refuses empty groups
    return SplitOptimizer(optimizers)


def set_lr(optimizer: SplitOptimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def scheduled_lr(
    base_lr: float, progress: float, schedule: str, warmup: float = 0.0, hold: float = 0.0, final: float = 0.0
) -> float:
    """The learning rate at ``progress`` ∈ [0, 1] of a run (the fraction of its steps, or of its time budget).

    Warm-up: base_lr · progress / warmup while progress < warmup; then base_lr until progress reaches ``hold``.
    After that, with start = max(warmup, hold) and x = (progress − start) / (1 − start) ∈ [0, 1]:

        cosine   base_lr · (final + (1 − final) · ½ (1 + cos πx))     (Loshchilov & Hutter 2017)
        linear   base_lr · (final + (1 − final) · (1 − x))
        plateau  base_lr (changed between epochs by ``plateau_lr`` instead)

    ``final`` is the last learning rate as a fraction of ``base_lr``. Progress beyond 1 counts as 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not (0 <= warmup < 1 and 0 <= hold < 1 and 0 <= final <= 1):
        raise ValueError(f"warmup and hold must be in [0, 1) and final in [0, 1], got {warmup}, {hold} and {final}")
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return base_lr * progress / warmup
    start = max(warmup, hold)
    if schedule == "plateau" or progress <= start:
        return base_lr
    x = (progress - start) / (1 - start)
    shape = 0.5 * (1 + math.cos(math.pi * x)) if schedule == "cosine" else 1 - x
    return base_lr * (final + (1 - final) * shape)


def plateau_lr(lr: float, best: float, metric: float, factor: float) -> tuple[float, float]:
    """(learning rate, best metric) after an evaluation: lr · factor when ``metric`` is not below ``best``
    (a plateau), else lr unchanged and ``metric`` the new best."""
    if metric < best:
        return lr, metric
    return lr * factor, best


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
    "SCHEDULES",
    "SplitOptimizer",
    "add_weight_decay_",
    "clip_grad_norm_",
    "make_optimizer",
    "plateau_lr",
    "scheduled_lr",
    "set_lr",
]
