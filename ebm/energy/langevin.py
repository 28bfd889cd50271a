"""Unadjusted Langevin dynamics on a log-density in D dimensions, for contrastive divergence's negative samples.

    x ← x + η·∇ₓ log p(x) + √(2η)·ξ,   ξ ~ N(0, I)

(Roberts & Tweedie 1996; used for energy models by Du & Mordatch 2019, "Implicit generation and
generalization in energy-based models"). Without a Metropolis correction its stationary law is p up to an
O(η) bias. The normaliser of p does not enter, only its gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebm.protocols import LogProb


def langevin_sample(
    log_prob: LogProb, x: Tensor, steps: int, step_size: float, generator: torch.Generator | None = None
) -> Tensor:
    """Run ``steps`` Langevin steps of size η = ``step_size`` from x (N, D); return the end points, detached.

    ``log_prob``: (N, D) → (N,), differentiable in x. All ``steps``·N·D normal numbers are drawn on the CPU
    from ``generator`` at once and moved to x's device. No gradient reaches the parameters of ``log_prob``.
    """
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"x must have shape (N, D) with D ≥ 1, got {tuple(x.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    kicks = torch.randn(steps, *x.shape, generator=generator).to(x.device) * math.sqrt(2 * step_size)  # (T, N, D)
    x = x.detach()
    for kick in kicks:
        x.requires_grad_(True)
        (score,) = torch.autograd.grad(log_prob(x).sum(), x)  # (N, D)
        x = (x + step_size * score + kick).detach()
    return x


__all__ = ["langevin_sample"]
