"""The energy network: an MLP energy f(x) with a learnable log-normaliser c = log Z.

    log p(x) = −f(x) − c

NCE learns c like any other parameter (Gutmann & Hyvärinen 2010), so ``log_prob`` is a normalised
log-density once training has converged; ``ebm.energy.evaluate`` measures how close it is.

Optionally the energy is taken relative to a base density b (in practice the NCE noise q):

    f(x) = g(x) − log b(x),   log p(x) = log b(x) − g(x) − c,

with g the MLP. At initialisation (g ≈ 0, c = 0) the model is then b itself, already normalised, and the
network only learns the log-ratio −log(p_data/b) − c, which is bounded and smooth where b covers the data.
With b = q the NCE logit G = −g − c − log ν no longer contains q at all.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh}


class EnergyMLP(nn.Module):
    """MLP energy 2 → width → … → width → 1 (``depth`` hidden layers) plus the scalar ``log_z``.

    Args:
        width: hidden units per layer.
        depth: number of hidden layers.
        activation: one of ``ACTIVATIONS``.
        base: a module with ``log_prob(x)``: (B, 2) → (B,) (e.g. the noise), or None for a plain MLP energy.
    """

    def __init__(self, width: int = 128, depth: int = 6, activation: str = "silu", base: nn.Module | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be positive, got width={width}, depth={depth}")
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(2 if i == 0 else width, width), ACTIVATIONS[activation]()]
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        self.log_z = nn.Parameter(torch.zeros(()))
        self.base = base

    def energy(self, x: Tensor) -> Tensor:
        """f(x) = g(x) [− log b(x) with a base]: (B, 2) → (B,)."""
        g = self.net(x).squeeze(-1)  # (B,)
        return g if self.base is None else g - self.base.log_prob(x)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = −f(x) − log_z: (B, 2) → (B,)."""
        return -self.energy(x) - self.log_z
