"""Contrastive divergence with persistent short-run Langevin chains (Tieleman 2008; Du & Mordatch 2019).

The gradient of the negative log-likelihood of p = exp(−E)/Z is E_data[∇E] − E_model[∇E]; CD replaces the
model expectation by chains of Langevin dynamics that are never run to convergence but persist across
steps. Each step takes B distinct chains from a buffer, restarts each from the noise with probability
``reinit``, moves them ``steps`` Langevin steps (``ebm.energy.langevin``) and writes them back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator, LogDensityModel, check_batch, check_noise, noise_dims, uniform
from ebm.energy.langevin import langevin_sample
from ebm.utils.checks import positive_float, positive_int, probability


def contrastive_divergence_loss(log_prob_data: Tensor, log_prob_samples: Tensor) -> Tensor:
    """mean E(data) − mean E(samples) = −mean log p(data) + mean log p(samples), for (B,) and (M,) inputs.

    Its gradient is that of the negative log-likelihood once the samples follow p and are held fixed
    (detached): ∇ log Z = E_p[∇ log p̃]. Any log Z in ``log_prob`` cancels.
    """
    return log_prob_samples.mean() - log_prob_data.mean()


class ContrastiveDivergence(Estimator):
    """Persistent CD: a buffer of ``buffer_size`` chains (buffer_size, D), D the noise's ``dims`` (a buffer tensor,
    so checkpoints carry it), started
    from the noise on the first call (a flag kept on the host, in the state dict's extra state: reading a device
    flag every step would synchronise the device).

    Options: ``steps`` Langevin steps of size ``step_size`` per call; ``reinit``, each chain's probability of
    restarting from the noise. Statistic: ``sample_log_prob``, the mean model log-density at the chains.
    """

    name = "cd"
    learns_log_z = False

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        """Chains start and restart from ``noise``."""
        return cls(noise, options.cd_buffer, options.cd_steps, options.cd_step_size, options.cd_reinit)

    def __init__(
        self,
        noise: nn.Module,
        buffer_size: int = 10_000,
        steps: int = 20,
        step_size: float = 0.01,
        reinit: float = 0.05,
    ):
        super().__init__()
        self.noise = check_noise(self.name, noise)
        self.steps = positive_int("cd_steps", steps)
        self.step_size = positive_float("cd_step_size", step_size)
        self.reinit = probability("cd_reinit", reinit)
        chains = torch.zeros(positive_int("cd_buffer", buffer_size), noise_dims(self.name, self.noise))
        self.register_buffer("chains", chains)  # (buffer_size, D)
        self.started = False

    def get_extra_state(self) -> dict:
        return {"started": self.started}

    def set_extra_state(self, state: dict) -> None:
        self.started = bool(state["started"])

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        check_batch(data, self.chains.shape[1])
        if len(data) > len(self.chains):
            raise ValueError(f"batch of {len(data)} points exceeds the cd_buffer of {len(self.chains)} chains")
        if not self.started:
            self.chains.copy_(self.noise.sample((len(self.chains),), generator))
            self.started = True
        index = torch.randperm(len(self.chains), generator=generator)[: len(data)].to(self.chains.device)  # (B,)
        restart = uniform((len(data), 1), generator, data.device) < self.reinit  # (B, 1)
        start = torch.where(restart, self.noise.sample((len(data),), generator), self.chains[index])  # (B, D)
        samples = langevin_sample(model.log_prob, start, self.steps, self.step_size, generator)  # (B, D), detached
        self.chains[index] = samples
        log_prob = model.log_prob(torch.cat([data, samples]))  # (2B,)
        log_prob_data, log_prob_samples = log_prob[: len(data)], log_prob[len(data) :]
        loss = contrastive_divergence_loss(log_prob_data, log_prob_samples)
        return loss, {"sample_log_prob": log_prob_samples.mean().detach()}


__all__ = ["ContrastiveDivergence", "contrastive_divergence_loss"]
