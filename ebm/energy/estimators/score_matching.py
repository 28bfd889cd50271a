"""Score matching: fit the model's score s(x) = ∇ₓ log p(x), which no normaliser enters (Hyvärinen 2005).

    dsm  denoising score matching (Vincent 2011): x̃ = x + σ·ε, ε ~ N(0, I),
             loss = ½ E ‖s(x̃) + ε/σ‖²   (the score of the Gaussian kernel is −(x̃ − x)/σ² = −ε/σ).
         Its optimum is the score of p_data ⊛ N(0, σ²I), not of p_data: σ trades this bias against variance.
    ssm  sliced score matching (Song, Garg, Shi & Ermon 2019), variance-reduced form (their SSM-VR) with
         Gaussian projections v ~ N(0, I):
             loss = E_x[ ½‖s(x)‖² + (1/M) Σ_m v_mᵀ ∇ₓ(v_mᵀ s(x)) ],
         which equals Hyvärinen's ½‖s‖² + tr ∇s in expectation over v (E[v vᵀ] = I).

Both need gradients with respect to x that stay differentiable in the parameters (``create_graph=True``).
``log_z`` never enters a score, so it gets no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator, LogDensityModel, check_batch, standard_normal
from ebm.protocols import LogProb
from ebm.utils.checks import positive_float, positive_int


def _score(log_prob: LogProb, x: Tensor) -> tuple[Tensor, Tensor]:
    """x as a leaf that requires grad, and s(x) = ∇ₓ log p(x) (N, D), differentiable in the parameters."""
    x = x.detach().requires_grad_(True)
    (score,) = torch.autograd.grad(log_prob(x).sum(), x, create_graph=True)
    return x, score


def denoising_score_matching_loss(log_prob: LogProb, data: Tensor, epsilon: Tensor, sigma: float) -> Tensor:
    """Per-point DSM loss ½‖s(x + σε) + ε/σ‖² for data (N, D) and standard normal ``epsilon`` (N, D): (N,)."""
    _, score = _score(log_prob, data + sigma * epsilon)
    return 0.5 * (score + epsilon / sigma).square().sum(dim=-1)


def sliced_score_matching_loss(log_prob: LogProb, data: Tensor, projections: Tensor) -> Tensor:
    """Per-point SSM-VR loss ½‖s(x)‖² + mean_m v_mᵀ ∇ₓ(v_mᵀ s(x)) for data (N, D), projections (N, M, D): (N,)."""
    x, score = _score(log_prob, data)
    curvature = torch.zeros(len(data), device=data.device, dtype=score.dtype)  # (N,)
    for v in projections.unbind(dim=1):  # each (N, D)
        (hessian_v,) = torch.autograd.grad((score * v).sum(), x, create_graph=True)  # (N, D): ∇ₓ(vᵀs)
        curvature = curvature + (hessian_v * v).sum(dim=-1)
    return 0.5 * score.square().sum(dim=-1) + curvature / projections.shape[1]


class DenoisingScoreMatching(Estimator):
    """DSM with noise level ``sigma`` (one ε per data point)."""

    name = "dsm"
    learns_log_z = False

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        return cls(options.dsm_sigma)

    def __init__(self, sigma: float = 0.1):
        super().__init__()
        self.sigma = positive_float("dsm_sigma", sigma)

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_batch(data)
        epsilon = standard_normal(tuple(data.shape), generator, data.device)  # (B, D)
        return denoising_score_matching_loss(model.log_prob, data, epsilon, self.sigma).mean(), {}


class SlicedScoreMatching(Estimator):
    """SSM-VR with ``projections`` Gaussian directions per data point."""

    name = "ssm"
    learns_log_z = False

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        return cls(options.ssm_projections)

    def __init__(self, projections: int = 1):
        super().__init__()
        self.projections = positive_int("ssm_projections", projections)

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_batch(data)
        v = standard_normal((len(data), self.projections, data.shape[1]), generator, data.device)  # (B, M, D)
        return sliced_score_matching_loss(model.log_prob, data, v).mean(), {}


__all__ = [
    "DenoisingScoreMatching",
    "SlicedScoreMatching",
    "denoising_score_matching_loss",
    "sliced_score_matching_loss",
]
