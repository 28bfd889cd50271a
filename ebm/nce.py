"""The NCE estimator shared by the 2D energy model and the token-level language model.

Both settings classify "real" items against items drawn from a noise distribution q, with ν noise
items per real one. The posterior that an item x is real is

    P(real | x) = p(x) / (p(x) + ν q(x)) = σ(G(x)),    G(x) = log p(x) − log q(x) − log ν,

and NCE maximises the log-likelihood of that classifier (Gutmann & Hyvärinen 2010; Mnih & Teh 2012):

    J = E_data[log σ(G)] + ν · E_noise[log(1 − σ(G))],   with log(1 − σ(G)) = log σ(−G).

Everything here is a pure function of log-densities: no parameters, no sampling. Logistic terms use
``logsigmoid`` so no score, however large, overflows.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def _check_noise_ratio(noise_ratio: float) -> None:
    if not noise_ratio > 0:
        raise ValueError(f"noise_ratio must be positive, got {noise_ratio}")


def nce_logit(log_model: Tensor, log_noise: Tensor, noise_ratio: float) -> Tensor:
    """The classifier's logit G = log p_model − log q − log ν (any matching shapes)."""
    _check_noise_ratio(noise_ratio)
    return log_model - log_noise - math.log(noise_ratio)


def nce_objective(logit_data: Tensor, logit_noise: Tensor, noise_ratio: float) -> Tensor:
    """The NCE value function J (to be maximised) from unpaired samples.

    J = mean_i log σ(G(x_i)) + ν · mean_j log σ(−G(y_j)),   x_i ~ p_data, y_j ~ q.

    Args:
        logit_data: (B,) logits G of the data samples.
        logit_noise: (M,) logits G of the noise samples (typically M = ν·B, any M works).
        noise_ratio: ν, the number of noise samples per data sample the logits were built with.

    Returns:
        A scalar. At ν = 1 with p = q every logit is 0 and J = −2·log 2.
    """
    _check_noise_ratio(noise_ratio)
    return F.logsigmoid(logit_data).mean() + noise_ratio * F.logsigmoid(-logit_noise).mean()


def nce_token_loss(logit_target: Tensor, logit_noise: Tensor) -> Tensor:
    """Per-item NCE loss with k noise items per real item (the language-model form).

    loss_n = −log σ(G_target,n) − Σ_j log σ(−G_noise,n,j)

    Args:
        logit_target: (N,) logits of the real items.
        logit_noise: (N, k) logits of each item's noise samples, or (1, k) / (k,) for noise shared by
            the whole batch (broadcast).

    Returns:
        (N,) losses. With noise drawn per item, their mean estimates −J at ν = k.
    """
    if logit_noise.dim() == 1:
        logit_noise = logit_noise.unsqueeze(0)
    return -F.logsigmoid(logit_target) - F.logsigmoid(-logit_noise).sum(dim=-1)


def classifier_accuracy(logit_data: Tensor, logit_noise: Tensor) -> Tensor:
    """Balanced accuracy of the real-vs-noise classifier: mean of [G_data > 0] and [G_noise < 0]."""
    return 0.5 * ((logit_data > 0).float().mean() + (logit_noise < 0).float().mean())


__all__ = ["nce_logit", "nce_objective", "nce_token_loss", "classifier_accuracy"]
