"""Exact evaluation of a 2D energy model by normalising it on a grid.

In 2D, Z = ∫ exp(log p_model(x)) dx can be computed by quadrature, so every run reports

    normaliser error   |log ∫ exp(log p_model)|           (0 when NCE learned c = log Z exactly)
    test NLL           −E_test[log p_model − log Ẑ]        (the grid-normalised model)
    entropy            −E_test[log p_data]                 (exact reference densities only)
    KL gap             E_test[log p_data − log p_model + log Ẑ] = KL(p_data ‖ p_model)

The KL gap uses the paired estimator: both log-densities on the same test points, so its standard error
(reported as ``kl_stderr``) is that of their difference, far below that of either term. The grid's
fineness is checked by redoing the sum on every other node (spacing 2h): ``grid_check`` is the change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ebm.data.toy import log_prob as data_log_prob

LogProb = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Grid:
    """A square grid of resolution² cell centres covering [−bound, bound]²."""

    bound: float
    resolution: int

    @property
    def spacing(self) -> float:
        return 2 * self.bound / self.resolution

    def axis(self) -> Tensor:
        """Cell centres along one axis: (R,)."""
        return -self.bound + self.spacing * (torch.arange(self.resolution) + 0.5)

    def points(self) -> Tensor:
        """All cell centres, row-major with x₂ the slow index: (R², 2)."""
        a = self.axis()
        x1, x2 = torch.meshgrid(a, a, indexing="xy")
        return torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)

    @classmethod
    def covering(cls, points: Tensor, resolution: int = 256, margin: float = 1.0) -> Grid:
        """The grid over the points' range plus ``margin``, its bound rounded up to a multiple of 0.5."""
        bound = math.ceil(2 * (points.abs().max().item() + margin)) / 2
        return cls(bound, resolution)


@torch.no_grad()
def chunked(log_prob: LogProb, x: Tensor, chunk: int = 65536) -> Tensor:
    """``log_prob`` over x (N, 2) in chunks, without gradients: (N,) on x's device."""
    return torch.cat([log_prob(xc) for xc in x.split(chunk)]) if len(x) else x.new_zeros(0)


def grid_log_prob(log_prob: LogProb, grid: Grid, device: torch.device | str = "cpu") -> Tensor:
    """log p on the grid's cell centres, as an image: (R, R), row i at x₂ = axis[i]."""
    values = chunked(log_prob, grid.points().to(device))
    return values.reshape(grid.resolution, grid.resolution).cpu()


def log_normaliser(grid_values: Tensor, grid: Grid) -> tuple[float, float]:
    """log ∫ exp(log p) by the midpoint rule, and its change on the 2×-coarser subgrid (the fineness check)."""
    values = grid_values.double()
    fine = torch.logsumexp(values.reshape(-1), 0) + 2 * math.log(grid.spacing)
    coarse = torch.logsumexp(values[::2, ::2].reshape(-1), 0) + 2 * math.log(2 * grid.spacing)
    return fine.item(), abs(fine.item() - coarse.item())


def density_metrics(
    grid_values: Tensor, grid: Grid, model_log_prob: Tensor, data_log_prob: Tensor | None = None
) -> dict[str, float]:
    """The metrics above from log p_model on the grid (R, R) and on the test points (N,).

    ``data_log_prob`` (N,), the exact log p_data on the same points, adds entropy, KL gap and its error.
    """
    log_z, grid_check = log_normaliser(grid_values, grid)
    model_log_prob = model_log_prob.double().cpu()
    metrics = {
        "log_normaliser": log_z,
        "normaliser_error": abs(log_z),
        "grid_check": grid_check,
        "grid_bound": grid.bound,
        "grid_resolution": grid.resolution,
        "test_nll": -(model_log_prob - log_z).mean().item(),
    }
    if data_log_prob is not None:
        gap = data_log_prob.double().cpu() - (model_log_prob - log_z)  # (N,)
        metrics["entropy"] = -data_log_prob.double().mean().item()
        metrics["kl"] = gap.mean().item()
        metrics["kl_stderr"] = (gap.std() / math.sqrt(len(gap))).item()
    return metrics


def evaluate_density(
    log_prob: LogProb,
    test_points: Tensor,
    dataset: str | None = None,
    resolution: int = 512,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Grid-normalise ``log_prob`` (e.g. ``model.log_prob``) and score it on ``test_points`` (N, 2).

    With ``dataset`` one of ``ebm.data.toy.REFERENCE_DATASETS``, also the exact entropy and KL gap.

    Example:
        >>> model = load_model("runs/pinwheel/checkpoint.pt")
        >>> evaluate_density(model.log_prob, sample("pinwheel", 100_000), "pinwheel")["kl"]
    """
    grid = Grid.covering(test_points, resolution)
    values = grid_log_prob(log_prob, grid, device)
    model_lp = chunked(log_prob, test_points.to(device))
    return density_metrics(values, grid, model_lp, data_log_prob(dataset, test_points) if dataset else None)
