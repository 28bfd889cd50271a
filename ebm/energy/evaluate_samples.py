"""Evaluation without a grid, for D > 2: KL(data ‖ model) on test points, with log Z learned or bracketed by AIS.

A model's unnormalised log-density is log p̃(x) = log_prob(x) + log_z, where ``log_prob`` (``EnergyMLP.log_prob``)
already subtracts the learned log_z. On test points x_i ~ p_data with their exact log p_data(x_i),

    KL(p_data ‖ p̃/Z) = E_data[log p_data − log p̃] + log Z

with log Z taken two ways:

    learned   log Z = log_z, so KL = E_data[log p_data − log_prob]: the paired estimator (one difference per
              point), with standard error std/√N
    bracket   lower ≤ log Z ≤ upper from annealed importance sampling (``ebm.energy.ais``: forward AIS from the
              noise gives a stochastic lower bound, reverse AIS from model samples an upper one), so
              KL ∈ [E[log p_data − log p̃] + lower, E[log p_data − log p̃] + upper], each end with the same
              standard error from the test points (the bracket's own error is AIS's)

The learned normaliser's error against the bracket is 0 when log_z lies inside it, else the signed distance to
the nearer end (log_z − upper above it, log_z − lower below it). In 2D the grid of ``ebm.energy.evaluate`` gives
log Z itself; there the three agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebm.energy.evaluate import chunked
from ebm.protocols import LogProb


def _check_inputs(test: Tensor, test_log_p: Tensor, bracket: tuple[float, float] | None) -> None:
    if test.dim() != 2 or len(test) < 2 or test.shape[1] < 1:
        raise ValueError(f"test must have shape (N, D) with N ≥ 2 and D ≥ 1, got {tuple(test.shape)}")
    if test_log_p.shape != test.shape[:1]:
        raise ValueError(f"test_log_p must have shape ({len(test)},), got {tuple(test_log_p.shape)}")
    if bracket is not None and len(bracket) != 2:
        raise ValueError(f"bracket must be two numbers (lower, upper) on log Z, got {bracket!r}")


def log_z_error(log_z: float, lower: float, upper: float) -> float:
    """How far ``log_z`` lies outside [lower, upper]: 0 inside, log_z − upper above, log_z − lower below."""
    return log_z - upper if log_z > upper else (log_z - lower if log_z < lower else 0.0)


@torch.no_grad()
def sample_metrics(
    log_prob_model: LogProb,
    test: Tensor,
    test_log_p: Tensor,
    log_z_learned: float,
    bracket: tuple[float, float] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """KL(data ‖ model) on test points, with the learned log Z and, given ``bracket``, the AIS bracket on log Z.

    Args:
        log_prob_model: the model's log-density with its learned log_z subtracted, (B, D) → (B,), run on
            ``device`` in chunks (e.g. ``model.log_prob``).
        test: (N, D) points from the data, not used in training (given to the model as float32).
        test_log_p: (N,) the exact log p_data at them (``ebm.data.toy.log_prob``).
        log_z_learned: the model's learned log_z (``model.log_z.item()``), so log p̃ = log_prob + log_z.
        bracket: (lower, upper) on log Z of p̃, e.g. from ``ebm.energy.ais``.

    Returns: dims, test_nll (−E log_prob), entropy (−E log p_data), kl and kl_stderr (learned log Z), kl_per_copy
    (kl per 2D copy, kl / (D/2)), log_z (the learned one); with a bracket also log_z_lower, log_z_upper, kl_lower,
    kl_upper (the KL interval the bracket implies; same standard error), log_z_error (``log_z_error``).
    """
    _check_inputs(test, test_log_p, bracket)
    model_log_prob = chunked(log_prob_model, test.float().to(device)).cpu().double()  # (N,)
    data_log_prob = test_log_p.detach().cpu().double()  # (N,)
    gap = data_log_prob - model_log_prob  # (N,): log p_data − log p̃ + log_z
    dims = test.shape[1]
    kl = gap.mean().item()
    metrics = {
        "dims": dims,
        "test_nll": -model_log_prob.mean().item(),
        "entropy": -data_log_prob.mean().item(),
        "kl": kl,
        "kl_stderr": (gap.std() / math.sqrt(len(gap))).item(),
        "kl_per_copy": kl / (dims / 2),
        "log_z": float(log_z_learned),
    }
    if bracket is not None:
        lower, upper = float(bracket[0]), float(bracket[1])
        unnormalised_gap = kl - float(log_z_learned)  # E[log p_data − log p̃]
        metrics.update(
            log_z_lower=lower,
            log_z_upper=upper,
            kl_lower=unnormalised_gap + lower,
            kl_upper=unnormalised_gap + upper,
            log_z_error=log_z_error(float(log_z_learned), lower, upper),
        )
    return metrics


__all__ = ["log_z_error", "sample_metrics"]
