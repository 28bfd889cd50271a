"""Bounds on log Z of an unnormalised density p̃ from both sides, by annealed importance sampling.

AIS (Neal 2001) moves chains from a normalised noise q to p̃ along the geometric path

    log f_β(x) = (1 − β) log q(x) + β log p̃(x),   0 = β_0 < β_1 < … < β_K = 1,

with a MALA transition that leaves f_{β_k} invariant after each increment, and accumulates the weight

    log w = Σ_k (β_k − β_{k−1}) (log p̃(x_{k−1}) − log q(x_{k−1})),   E[w] = Z_K / Z_0 = Z.

**Forward** (chains from q): Jensen gives E[log w] ≤ log Z, so the mean log-weight is a stochastic lower bound
and log mean w a consistent estimate. **Reverse** (chains from exact draws of p = p̃/Z, the same path run from
β = 1 to 0): E[w_rev] = 1/Z, so −E[log w_rev] ≥ log Z is a stochastic upper bound (Grosse, Ghahramani & Adams
2015, "Sandwiching the marginal likelihood using bidirectional Monte Carlo"). Both gaps shrink as K grows: their
sum is a bound on the divergence between the forward and reverse chains.

The transitions' step sizes are tuned on a separate pilot run (few chains, Robbins–Monro on log ε toward the
target acceptance at each β) and then frozen, so the weights of both directions stay exactly unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebm.energy.sampling import mala_step, value_and_grad
from ebm.protocols import LogProb

SCHEDULES = ("sigmoid", "linear")
SIGMOID_SHARPNESS = 4.0  # δ of the sigmoid schedule (Grosse et al. 2015)


@dataclass(frozen=True)
class Bracket:
    """Stochastic bounds on log Z in nats, with their Monte-Carlo standard errors."""

    lower: float  # mean forward log-weight, E[log w] ≤ log Z
    upper: float  # minus the mean reverse log-weight, ≥ log Z; +inf without model samples
    log_z: float  # log of the mean forward weight (consistent, biased low for few chains)
    lower_stderr: float  # standard error of ``lower``
    upper_stderr: float  # standard error of ``upper``; NaN without model samples
    ess: float  # (Σw)² / Σw² of the forward weights
    n_distributions: int  # K + 1: the path β_0 = 0 < … < β_K = 1, both ends included


def beta_schedule(n_steps: int, kind: str = "sigmoid") -> Tensor:
    """β_0 = 0, …, β_K = 1 with K = ``n_steps``: (K + 1,) float64.

    linear: β_k = k/K. sigmoid: β̃_k = σ(δ(2k/K − 1)), β_k = (β̃_k − β̃_0)/(β̃_K − β̃_0), δ = 4, which spends
    more of the steps near both ends, where the path changes fastest.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    k = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    if kind == "linear":
        return k
    raw = torch.sigmoid(SIGMOID_SHARPNESS * (2 * k - 1))
    return (raw - raw[0]) / (raw[-1] - raw[0])


def _anneal(
    log_q: LogProb,
    log_p_tilde: LogProb,
    x: Tensor,
    betas: Tensor,
    step_sizes: list[float],
    generator: torch.Generator | None,
    mcmc_steps: int,
    target_accept: float | None = None,
) -> Tensor:
    """Run chains x (N, D), drawn from f_{betas[0]}, along ``betas`` (either direction): log-weights (N,) float64.

    ``step_sizes[k]`` is the MALA step at betas[k] (k = 1 … K − 1). With ``target_accept``, ``step_sizes`` is
    tuned in place instead (pilot run): before each transition log ε_k += ᾱ − target, starting from ε_{k−1}.
    """
    log_w = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    for k in range(1, len(betas)):
        with torch.no_grad():
            log_w += (betas[k] - betas[k - 1]).item() * (log_p_tilde(x) - log_q(x)).double()
        if k == len(betas) - 1:
            break
        beta = betas[k].item()

        def log_f(y: Tensor, beta: float = beta) -> Tensor:
            return torch.lerp(log_q(y), log_p_tilde(y), beta)

        log_p, grad = value_and_grad(log_f, x)
        if target_accept is not None:
            step_sizes[k] = step_sizes[k - 1]
        for _ in range(mcmc_steps):
            x, log_p, grad, alpha = mala_step(log_f, x, log_p, grad, step_sizes[k], generator)
            if target_accept is not None:
                step_sizes[k] *= math.exp(alpha.mean().item() - target_accept)
    return log_w


def _stderr(values: Tensor) -> float:
    return (values.std() / math.sqrt(len(values))).item()


def ais_bracket(
    log_p_tilde: LogProb,
    noise: nn.Module,
    n_chains: int,
    n_steps: int,
    generator: torch.Generator | None = None,
    model_samples: Tensor | None = None,
    schedule: str = "sigmoid",
    mcmc_steps: int = 1,
    step_size: float = 0.1,
    target_accept: float = 0.574,
    tune_chains: int = 64,
    tune_steps: int = 2,
) -> Bracket:
    """Lower and upper stochastic bounds on log Z = log ∫ p̃ by forward and reverse AIS (module docstring).

    Args:
        log_p_tilde: log p̃, (N, D) → (N,), differentiable in x (e.g. ``model.log_prob`` or ``-model.energy``).
        noise: the normalised start q, with ``sample(shape, generator)`` → (*shape, D) and ``log_prob``.
        n_chains: forward chains (≥ 2).
        n_steps: K, the number of increments of β (K + 1 distributions).
        model_samples: (M, D) exact draws from p̃/Z (e.g. ``grid_sample`` in 2D), M ≥ 2, for the upper bound.
        schedule: spacing of β, one of SCHEDULES.
        mcmc_steps: MALA steps at each intermediate β.
        step_size, target_accept: the first step size of the pilot and its target acceptance rate.
        tune_chains, tune_steps: chains of the pilot run, and its MALA steps per β (at least ``mcmc_steps``).
    """
    for name, value, low in (("n_chains", n_chains, 2), ("mcmc_steps", mcmc_steps, 1), ("tune_chains", tune_chains, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    betas = beta_schedule(n_steps, schedule)  # (K + 1,)
    pilot = noise.sample((tune_chains,), generator)  # (T, D)
    if model_samples is not None and (
        model_samples.dim() != 2 or model_samples.shape[1:] != pilot.shape[1:] or len(model_samples) < 2
    ):
        raise ValueError(f"model_samples must have shape (M ≥ 2, {pilot.shape[1]}), got {tuple(model_samples.shape)}")
    steps = [step_size] * len(betas)
    _anneal(noise.log_prob, log_p_tilde, pilot, betas, steps, generator, max(tune_steps, mcmc_steps), target_accept)

    x = noise.sample((n_chains,), generator)  # (N, D)
    log_w = _anneal(noise.log_prob, log_p_tilde, x, betas, steps, generator, mcmc_steps).cpu()  # (N,)
    upper, upper_stderr = math.inf, math.nan
    if model_samples is not None:
        log_w_rev = _anneal(
            noise.log_prob, log_p_tilde, model_samples.to(x), betas.flip(0), steps[::-1], generator, mcmc_steps
        ).cpu()  # (M,)
        upper, upper_stderr = -log_w_rev.mean().item(), _stderr(log_w_rev)
    return Bracket(
        lower=log_w.mean().item(),
        upper=upper,
        log_z=(torch.logsumexp(log_w, 0) - math.log(len(log_w))).item(),
        lower_stderr=_stderr(log_w),
        upper_stderr=upper_stderr,
        ess=(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)).exp().item(),
        n_distributions=len(betas),
    )


__all__ = ["SCHEDULES", "Bracket", "ais_bracket", "beta_schedule"]
