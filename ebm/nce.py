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

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_noise_ratio(noise_ratio: float) -> None:
    if not noise_ratio > 0:
        raise ValueError(f"noise_ratio must be positive, got {noise_ratio}")


def nce_logit(log_model: Tensor, log_noise: Tensor | float, noise_ratio: float) -> Tensor:
    """The classifier's logit G = log p_model − log q − log ν (any matching shapes; log q = 0 when log_model is
    already the log-ratio log p_model − log q)."""
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


def ranking_nce_loss(logit_target: Tensor, logit_noise: Tensor) -> Tensor:
    """Ranking NCE: per-item cross-entropy of picking the real item out of {real} ∪ {k noise items}.

    With o = log p̃ − log q for the real item t and its noise items y_1 … y_k (each drawn from q),

        loss_n = −o_t + logsumexp(o_t, o_1, …, o_k) = −log( e^{o_t} / (e^{o_t} + Σ_j e^{o_j}) ),

    the negative log-posterior that the real item is t when one of the k + 1 items came from p and the rest
    from q (Ma & Collins 2018, "Noise contrastive estimation and negative sampling for conditional models:
    consistency and statistical efficiency"). Its optimum is log p̃ = log p + c, c any constant (per
    context), for every k ≥ 1: it learns p up to a normaliser, which it cannot fix. Sampled softmax with the
    log q correction (Jean et al. 2015; TensorFlow's ``sampled_softmax_loss``) is this objective. A logit of
    −∞ removes its noise item (an accidental hit), and logsumexp keeps any finite logit from overflowing.

    Args:
        logit_target: (N,) logits o of the real items.
        logit_noise: (N, k) logits of each item's noise items, or (1, k) / (k,) for noise shared by the
            whole batch (broadcast).

    Returns:
        (N,) losses.
    """
    n = logit_target.shape[0] if logit_target.dim() == 1 else -1
    if n < 0 or logit_noise.dim() not in (1, 2) or (logit_noise.dim() == 2 and logit_noise.shape[0] not in (1, n)):
        raise ValueError(f"expected logit_target (N,) and logit_noise (N, k) or (k,), got "
                         f"{tuple(logit_target.shape)} and {tuple(logit_noise.shape)}")
    logit_noise = logit_noise.expand(n, logit_noise.shape[-1])  # (N, k)
    logits = torch.cat([logit_target.unsqueeze(1), logit_noise], dim=1)  # (N, 1 + k)
    return torch.logsumexp(logits, dim=1) - logit_target


def classifier_accuracy(logit_data: Tensor, logit_noise: Tensor) -> Tensor:
    """Balanced accuracy of the real-vs-noise classifier: mean of [G_data > 0] and [G_noise < 0]."""
    return 0.5 * ((logit_data > 0).float().mean() + (logit_noise < 0).float().mean())


def exponential_nce_loss(log_ratio_data: Tensor, log_ratio_noise: Tensor) -> Tensor:
    """eNCE: NCE with the exponential loss in place of the logistic one (Liu, Rosenfeld, Ravikumar & Risteski,
    ICLR 2022, "Analyzing and improving the optimization landscape of noise-contrastive estimation").

    With the log-ratio r = log p_model − log q (no log ν: the classes are weighed equally),

        L = ½ E_data[exp(−r/2)] + ½ E_noise[exp(r/2)] = ½ E_data[√(q/p_model)] + ½ E_noise[√(p_model/q)].

    For any x the pointwise minimiser of p_data(x)·e^{−r/2} + q(x)·e^{r/2} is e^r = p_data/q, so the optimum is
    p_model = p_data, normaliser included, where L = ∫√(p_data q), the Bhattacharyya coefficient. The paper
    pairs it with normalised gradient descent; ν noise points per data point only sharpen the noise mean.
    Values are exponentials of the log-ratio: finite only while |r| stays below about 170 in float32.

    Args:
        log_ratio_data: (B,) r at the data points.
        log_ratio_noise: (M,) r at the noise points.

    Returns:
        A scalar, to be minimised.
    """
    return 0.5 * (torch.exp(-0.5 * log_ratio_data).mean() + torch.exp(0.5 * log_ratio_noise).mean())


def conditional_nce_loss(log_model_data: Tensor, log_model_noise: Tensor) -> Tensor:
    """Conditional NCE (Ceylan & Gutmann 2018, "Conditional noise-contrastive estimation of unnormalised
    models"): each data point x_n is classified against k points y_nj drawn around it from a symmetric kernel
    (e.g. y = x + ε·z, z ~ N(0, I)), so the kernel's ratio cancels and so does the normaliser:

        loss_n = (1/k) Σ_j log(1 + exp(−G_nj)),   G_nj = log p̃(x_n) − log p̃(y_nj).

    Only differences of log p̃ enter, so any unnormalised log-density (or one with a learned log Z, which
    gets no gradient) works. The paper's J is twice this mean; the factor changes no optimum.

    Args:
        log_model_data: (N,) log p̃ at the data points.
        log_model_noise: (N, k) log p̃ at each data point's k conditional noise points.

    Returns:
        (N,) losses.
    """
    if log_model_data.dim() != 1 or log_model_noise.dim() != 2 or log_model_noise.shape[0] != log_model_data.shape[0]:
        raise ValueError(f"expected log_model_data (N,) and log_model_noise (N, k), got "
                         f"{tuple(log_model_data.shape)} and {tuple(log_model_noise.shape)}")
    return F.softplus(log_model_noise - log_model_data.unsqueeze(1)).mean(dim=1)


__all__ = ["nce_logit", "nce_objective", "nce_token_loss", "ranking_nce_loss", "classifier_accuracy",
           "exponential_nce_loss", "conditional_nce_loss"]
