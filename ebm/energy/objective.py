"""The NCE objective for a 2D energy model: log-densities of model and noise into the shared core.

Pure: no parameters, no sampling. The caller draws the B data points and the ν·B noise points.
"""

from __future__ import annotations

from torch import Tensor

from ebm.energy.model import EnergyMLP
from ebm.energy.noise import GaussianMixtureNoise
from ebm.nce import classifier_accuracy, nce_logit, nce_objective


def nce_loss(
    model: EnergyMLP, noise: GaussianMixtureNoise, data: Tensor, noise_samples: Tensor, noise_ratio: float
) -> tuple[Tensor, Tensor]:
    """−J and the classifier's accuracy for data (B, 2) against noise samples (M, 2).

    J = E_data[log σ(G)] + ν·E_noise[log σ(−G)],  G(x) = log p_model(x) − log q(x) − log ν.
    """
    logit_data = nce_logit(model.log_prob(data), noise.log_prob(data), noise_ratio)  # (B,)
    logit_noise = nce_logit(model.log_prob(noise_samples), noise.log_prob(noise_samples), noise_ratio)  # (M,)
    return -nce_objective(logit_data, logit_noise, noise_ratio), classifier_accuracy(logit_data, logit_noise)
