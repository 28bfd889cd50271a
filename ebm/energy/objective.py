"""The NCE objective for an energy model in D dimensions: log-densities of model and noise into the shared core.

Pure: no parameters, no sampling. The caller draws the B data points and the M = ν·B noise points (the
``nce`` estimator of ``ebm.energy.estimators`` does, and calls this).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ebm.nce import classifier_accuracy, nce_logit, nce_objective


def _joint(function: Callable[[Tensor], Tensor], data: Tensor, noise_points: Tensor) -> tuple[Tensor, Tensor]:
    """``function`` at data (B, D) and noise points (*S, D) in one pass: (B,) and (*S,)."""
    values = function(torch.cat([data, noise_points.reshape(-1, data.shape[-1])]))  # (B + |S|,)
    return values[: len(data)], values[len(data) :].reshape(noise_points.shape[:-1])


def log_prob_joint(module: nn.Module, data: Tensor, noise_points: Tensor) -> tuple[Tensor, Tensor]:
    """``module.log_prob`` at data (B, D) and noise points (*S, D) in one pass: (B,) and (*S,)."""
    return _joint(module.log_prob, data, noise_points)


def log_ratio_joint(model: nn.Module, noise: nn.Module, data: Tensor, noise_points: Tensor) -> tuple[Tensor, Tensor]:
    """r = log p_model − log q at data (B, D) and noise points (*S, D): (B,) and (*S,).

    When the model's base is this noise (``EnergyMLP`` with base q: log p = log q − g − c), r = −g − c
    (``model.log_ratio``): q is not evaluated, and its log-density does not cancel in float32.
    """
    if getattr(model, "base", None) is noise:
        return _joint(model.log_ratio, data, noise_points)
    model_data, model_noise = log_prob_joint(model, data, noise_points)
    noise_data, noise_noise = log_prob_joint(noise, data, noise_points)
    return model_data - noise_data, model_noise - noise_noise


def energy_nce_loss(
    model: nn.Module, noise: nn.Module, data: Tensor, noise_samples: Tensor, noise_ratio: float
) -> tuple[Tensor, Tensor]:
    """−J and the classifier's balanced accuracy for data (B, D) against noise samples (M, D).

    J = E_data[log σ(G)] + ν·E_noise[log σ(−G)],  G(x) = log p_model(x) − log q(x) − log ν
    (Gutmann & Hyvärinen 2010). ``model`` and ``noise`` are anything with ``log_prob``: (N, D) → (N,).
    """
    ratio_data, ratio_noise = log_ratio_joint(model, noise, data, noise_samples)  # log p_model − log q
    logit_data = nce_logit(ratio_data, 0.0, noise_ratio)  # (B,)
    logit_noise = nce_logit(ratio_noise, 0.0, noise_ratio)  # (M,)
    return -nce_objective(logit_data, logit_noise, noise_ratio), classifier_accuracy(logit_data, logit_noise)
