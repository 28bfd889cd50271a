"""Noise-contrastive estimators against a fixed noise q: binary NCE, ranking NCE, eNCE, and conditional NCE.

Each draws its noise points, evaluates the model (one forward pass over data and noise together) and hands
the log-densities to a pure objective of ``ebm.nce``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator, LogDensityModel, check_batch, check_noise, noise_dims, standard_normal
from ebm.energy.objective import energy_nce_loss, log_prob_joint, log_ratio_joint
from ebm.nce import classifier_accuracy, conditional_nce_loss, exponential_nce_loss, ranking_nce_loss
from ebm.utils.checks import positive_float, whole_number


class _AgainstNoise(Estimator):
    """An estimator that contrasts the data with points of a fixed noise q (``sample``, ``log_prob``), ν per data
    point; ``whole_ratio`` estimators draw a whole number of noise points for each data point."""

    contrasts_noise = True
    uses_noise_ratio = True

    def __init__(self, noise: nn.Module, noise_ratio: float = 4.0):
        super().__init__()
        self.noise = check_noise(self.name, noise)
        self.noise_ratio = (whole_number if self.whole_ratio else positive_float)("noise_ratio", noise_ratio)

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        return cls(noise, options.noise_ratio)

    def _noise_points(self, data: Tensor, generator: torch.Generator | None) -> Tensor:
        """ν points per data point: (B, ν, D) for whole-ratio estimators, else round(ν·B) points (M, D), after
        checking that ``data`` is a batch (B, D) of the noise's dimension."""
        check_batch(data, noise_dims(self.name, self.noise))
        if self.whole_ratio:
            return self.noise.sample((len(data), self.noise_ratio), generator)
        return self.noise.sample((max(1, round(self.noise_ratio * len(data))),), generator)


class NCE(_AgainstNoise):
    """Binary NCE (Gutmann & Hyvärinen 2010): ν·B noise points per batch of B, loss −J of ``ebm.nce``.

    J = E_data[log σ(G)] + ν·E_noise[log σ(−G)],   G = log p_model − log q − log ν.
    """

    name = "nce"
    learns_log_z = True

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        noise_points = self._noise_points(data, generator)  # (M, D)
        loss, accuracy = energy_nce_loss(model, self.noise, data, noise_points, self.noise_ratio)
        return loss, {"accuracy": accuracy.detach()}


class RankingNCE(_AgainstNoise):
    """Ranking NCE (Ma & Collins 2018): each data point against its own ν noise points, a softmax over the ν + 1
    logits o = log p_model − log q, loss −log softmax(o)_data (``ebm.nce.ranking_nce_loss``), averaged.

    The softmax is unchanged by a constant added to log p_model, so ``log_z`` is left free. Statistic:
    ``accuracy``, the fraction of data points ranked above all their noise points.
    """

    name = "rnce"
    learns_log_z = False
    whole_ratio = True

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        noise_points = self._noise_points(data, generator)  # (B, ν, D)
        r_data, r_noise = log_ratio_joint(model, self.noise, data, noise_points)  # (B,), (B, ν)
        loss = ranking_nce_loss(r_data, r_noise).mean()
        accuracy = (r_data > r_noise.max(dim=1).values).float().mean()
        return loss, {"accuracy": accuracy.detach()}


class ExponentialNCE(_AgainstNoise):
    """eNCE (Liu et al. 2022): the exponential loss ½E_data[e^{−r/2}] + ½E_noise[e^{r/2}], r = log p_model − log q,
    with ν·B noise points per batch of B (``ebm.nce.exponential_nce_loss``). Its optimum is p_model = p_data,
    normaliser included. Statistic: the balanced ``accuracy`` of the sign of r.
    """

    name = "ence"
    learns_log_z = True

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        noise_points = self._noise_points(data, generator)  # (M, D)
        r_data, r_noise = log_ratio_joint(model, self.noise, data, noise_points)
        loss = exponential_nce_loss(r_data, r_noise)
        return loss, {"accuracy": classifier_accuracy(r_data, r_noise).detach()}


def silverman_bandwidth(points: Tensor) -> float:
    """Silverman's rule of thumb for an isotropic Gaussian kernel in D dimensions, from points (N, D):

        h = σ·(4 / ((D + 2)·n))^(1/(D + 4)),   σ² the mean of the D variances   (D = 2: h = σ·n^(−1/6)).

    It is the scale at which n points resolve a density's structure: the default spread of conditional NCE's noise.
    """
    if points.dim() != 2 or points.shape[1] < 1 or len(points) < 2:
        raise ValueError(f"points must have shape (N, D) with N ≥ 2 and D ≥ 1, got {tuple(points.shape)}")
    n, dims = points.shape
    sigma = points.detach().double().cpu().var(dim=0).mean().sqrt().item()
    return sigma * (4 / ((dims + 2) * n)) ** (1 / (dims + 4))


class ConditionalNCE(Estimator):
    """Conditional NCE (Ceylan & Gutmann 2018): ν points y = x + ε·z, z ~ N(0, I), around each data point x,
    loss mean_j log(1 + exp(−(log p̃(x) − log p̃(y_j)))) (``ebm.nce.conditional_nce_loss``). The symmetric
    kernel and the normaliser cancel, so ``log_z`` is left free.

    ``epsilon`` is a buffer, so a checkpoint restores it. Statistic: ``accuracy``, the fraction of pairs with
    log p̃(x) > log p̃(y).
    """

    name = "cnce"
    learns_log_z = False
    uses_noise_ratio = True
    whole_ratio = True

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        epsilon = options.cnce_epsilon or (silverman_bandwidth(fit_points) if fit_points is not None else 1.0)
        return cls(epsilon, options.noise_ratio)

    @classmethod
    def needs_fit_points(cls, options: Any) -> bool:
        return options.cnce_epsilon == 0

    def __init__(self, epsilon: float, noise_ratio: float = 4.0):
        super().__init__()
        self.register_buffer("epsilon", torch.tensor(positive_float("epsilon", epsilon)))
        self.noise_ratio = whole_number("noise_ratio", noise_ratio)

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_batch(data)
        z = standard_normal((len(data), self.noise_ratio, data.shape[1]), generator, data.device)  # (B, ν, D)
        noise_points = data.unsqueeze(1) + self.epsilon * z  # (B, ν, D)
        model_data, model_noise = log_prob_joint(model, data, noise_points)  # (B,), (B, ν)
        loss = conditional_nce_loss(model_data, model_noise).mean()
        accuracy = (model_data.unsqueeze(1) > model_noise).float().mean()
        return loss, {"accuracy": accuracy.detach()}


__all__ = ["NCE", "ConditionalNCE", "ExponentialNCE", "RankingNCE", "silverman_bandwidth"]
