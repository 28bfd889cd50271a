"""Maximum likelihood with the normaliser computed on a grid: the reference for what the network can reach.

    loss = −E_data[log p̃(x)] + log Ẑ,   Ẑ = h² Σ_nodes p̃(node),

over an R × R grid of spacing h = 2b/R covering the box [−b, b]² around the data. The grid is shifted by a
uniform random offset u·h, u ~ U[0, 1)², at every step: Ẑ is then an unbiased estimate of the integral over
the (shifted) box, and the model cannot hide mass between fixed nodes (a spike between the nodes of a fixed
grid raises the likelihood at no cost to Ẑ). log Ẑ is differentiable, so this is exact gradient descent on
the likelihood up to quadrature; ``log_z`` cancels. Only in 2D: a grid in D dimensions has R^D nodes, and
points of D > 2 are refused with a ValueError naming the estimators that work there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator, LogDensityModel, check_batch, uniform
from ebm.energy.evaluate import Grid
from ebm.utils.checks import positive_float


def check_plane(points: Tensor) -> None:
    """Refuse points (N, D) with D ≠ 2: the grid exists only in the plane."""
    if points.dim() != 2 or points.shape[1] != 2:
        from ebm.energy.estimators import ESTIMATORS  # the registry imports this module

        others = ", ".join(name for name in ESTIMATORS if name != GridMaximumLikelihood.name)
        raise ValueError(f"mle integrates log Z on a 2D grid and needs points of shape (N, 2), got "
                         f"{tuple(points.shape)}; in D > 2 dimensions use one of {others}")


def shifted_grid(bound: Tensor | float, resolution: int, offset: Tensor) -> Tensor:
    """Nodes −b + h·(i + offset) of an R × R grid, h = 2b/R, offset (2,) in [0, 1)²: (R², 2) on offset's device."""
    spacing = 2 * bound / resolution
    index = torch.arange(resolution, device=offset.device, dtype=offset.dtype)  # (R,)
    x1 = -bound + spacing * (index + offset[0])  # (R,)
    x2 = -bound + spacing * (index + offset[1])  # (R,)
    return torch.stack(torch.meshgrid(x1, x2, indexing="xy"), dim=-1).reshape(-1, 2)  # (R², 2)


class GridMaximumLikelihood(Estimator):
    """Maximum likelihood with log Ẑ on a randomly shifted ``resolution``² grid over [−bound, bound]².

    ``bound`` is a buffer (a checkpoint restores it). Statistic: ``log_normaliser``, log Ẑ of the model.
    """

    name = "mle"
    learns_log_z = False
    plane_only = True

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        """A grid over the box of ``fit_points`` (``Grid.covering``'s, the evaluation's box)."""
        if fit_points is not None:
            check_plane(fit_points)
        return cls(Grid.covering(fit_points.detach()).bound if fit_points is not None else 1.0, options.mle_resolution)

    @classmethod
    def needs_fit_points(cls, options: Any) -> bool:
        return True

    def __init__(self, bound: float, resolution: int = 64):
        super().__init__()
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
            raise ValueError(f"mle_resolution must be an integer ≥ 2, got {resolution!r}")
        self.resolution = resolution
        self.register_buffer("bound", torch.tensor(positive_float("bound", bound)))

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_batch(data)
        check_plane(data)
        nodes = shifted_grid(self.bound, self.resolution, uniform((2,), generator, data.device))  # (R², 2)
        log_prob = model.log_prob(torch.cat([data, nodes]))  # (B + R²,)
        log_cell = 2 * torch.log(2 * self.bound / self.resolution)  # log h²
        log_normaliser = torch.logsumexp(log_prob[len(data) :], dim=0) + log_cell
        loss = log_normaliser - log_prob[: len(data)].mean()
        return loss, {"log_normaliser": log_normaliser.detach()}


__all__ = ["GridMaximumLikelihood", "check_plane", "shifted_grid"]
