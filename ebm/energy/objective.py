"""The NCE objective for an energy model in D dimensions: log-densities of model and noise into the shared core.

Pure: no parameters, no sampling. The caller draws the B data points and the M = ν·B noise points (the
``nce`` estimator of ``ebm.energy.estimators`` does, and calls this).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebm.nce import classifier_accuracy, nce_logit, nce_objective


def log_prob_joint(module: nn.Module, data: Tensor, noise_points: Tensor) -> tuple[Tensor, Tensor]:
    """``module.log_prob`` at data (B, D) and noise points (*S, D) in one pass: (B,) and (*S,)."""
    values = module.log_prob(torch.cat([data, noise_points.reshape(-1, data.shape[-1])]))  # (B + |S|,)
    return values[: len(data)], values[len(data) :].reshape(noise_points.shape[:-1])


def energy_nce_loss(
    model: nn.Module, noise: nn.Module, data: Tensor, noise_samples: Tensor, noise_ratio: float
) -> tuple[Tensor, Tensor]:
    """−J and the classifier's balanced accuracy for data (B, D) against noise samples (M, D).

    J = E_data[log σ(G)] + ν·E_noise[log σ(−G)],  G(x) = log p_model(x) − log q(x) − log ν
    (Gutmann & Hyvärinen 2010). ``model`` and ``noise`` are anything with ``log_prob``: (N, D) → (N,).
    """
    model_data, model_noise = log_prob_joint(model, data, noise_samples)
    noise_data, noise_noise = log_prob_joint(noise, data, noise_samples)
    logit_data = nce_logit(model_data, noise_data, noise_ratio)  # (B,)
    logit_noise = nce_logit(model_noise, noise_noise, noise_ratio)  # (M,)
    return -nce_objective(logit_data, logit_noise, noise_ratio), classifier_accuracy(logit_data, logit_noise)
