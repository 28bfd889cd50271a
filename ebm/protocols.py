"""The shared shapes of the package's ideas, one definition each.

``LogProb``: a log-density as a callable, x (N, D) → (N,).

``Noise``: a noise distribution q of either setting — a 2D/D-dimensional noise (``ebm.energy.noise``,
``ebm.energy.flow``) over points (…, D), or a word noise (``ebm.lm.samplers``) over token ids (…). Both are
``nn.Module``s whose tables are buffers, and both answer

    sample(shape, generator=None) → (*shape, D) points or (*shape) ids, drawn from a CPU ``torch.Generator``
    log_prob(x)                   → (...) the exact, normalised log q

``LogDensityModel``: what an estimator needs of a model: a differentiable ``log_prob``, (B, D) → (B,).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

LogProb = Callable[[Tensor], Tensor]


class Noise(Protocol):
    """A noise distribution q: ``sample(shape, generator)`` and the exact ``log_prob``."""

    def sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


class LogDensityModel(Protocol):
    """A differentiable log-density, (B, D) → (B,)."""

    def log_prob(self, x: Tensor) -> Tensor: ...


__all__ = ["LogDensityModel", "LogProb", "Noise"]
