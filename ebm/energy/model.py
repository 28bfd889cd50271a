"""The energy network: an MLP energy f(x) with a learnable log-normaliser c = log Z.

    log p(x) = −f(x) − c

NCE learns c like any other parameter (Gutmann & Hyvärinen 2010), so ``log_prob`` is a normalised
log-density once training has converged; ``ebm.energy.evaluate`` measures how close it is.
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
    """

    def __init__(self, width: int = 128, depth: int = 3, activation: str = "silu"):
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

    def energy(self, x: Tensor) -> Tensor:
        """f(x): (B, 2) → (B,)."""
        return self.net(x).squeeze(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = −f(x) − log_z: (B, 2) → (B,)."""
        return -self.energy(x) - self.log_z
