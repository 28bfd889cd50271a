"""Samples from an unnormalised log-density: exactly on a 2D grid, or by MCMC (MALA, HMC) in any dimension.

**Grid sampler (2D, exact up to the grid).** The midpoint rule gives each cell of an ``evaluate.Grid`` the mass
exp(log p(centre))·h², so the cells' probabilities are softmax(cell values); a cell is drawn by inverting their
cumulative sum, then a point uniformly inside it. The draws follow the piecewise-constant density that equals
p at the cell centres and is zero outside the box: the grid must reach all of the model's mass.

**MCMC.** C chains x (C, D) move under a Metropolis–Hastings kernel that leaves p invariant:

    MALA   y = x + η ∇log p(x) + √(2η) ξ,   ξ ~ N(0, I)        (Roberts & Tweedie 1996)
           α = min(1, p(y) q(x | y) / (p(x) q(y | x))),   q(y | x) = N(y; x + η ∇log p(x), 2η I)
    HMC    momentum ρ ~ N(0, I), L leapfrog steps of size ε,  (Neal 2011, "MCMC using Hamiltonian dynamics")
           α = min(1, exp(−ΔH)),   H(x, ρ) = −log p(x) + ½‖ρ‖²

During ``warmup`` steps the step size is tuned toward a target acceptance rate by dual averaging on its
logarithm (Hoffman & Gelman 2014, "The No-U-Turn sampler", Algorithm 5, fed the chains' mean acceptance
probability), then frozen at the averaged iterate; only the frozen steps are kept (so they are a valid chain).
The optimal rates are 0.574 for MALA (Roberts & Rosenthal 1998) and about 0.65 for HMC (Beskos et al. 2013).

**Diagnostics** (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-normalization, folding, and
localization: an improved R̂"): ``effective_sample_size`` with Geyer's initial monotone sequence over split
chains, and the rank-normalised split R̂, the larger of the bulk and the folded (tail) values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ebm.energy.evaluate import Grid, grid_log_prob
from ebm.protocols import LogProb


def grid_sample(
    log_prob: LogProb, grid: Grid, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """n points (n, 2) float32 on the CPU from the density ∝ exp(log_prob) on ``grid``'s cells (module docstring).

    ``log_prob``: (N, 2) → (N,), evaluated on ``device`` in chunks without gradients; then ``sample_cells``.
    """
    return sample_cells(grid_log_prob(log_prob, grid, device), grid, n, generator)


def sample_cells(values: Tensor, grid: Grid, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points (n, 2) float32 on the CPU from log-density ``values`` (R, R) at ``grid``'s cell centres.

    Cell k (row-major, x₂ the slow index, as ``Grid.points``) is drawn with probability softmax(values)_k, then
    the point is centre_k + h·(u − ½), u ~ U[0, 1)². All random numbers come from the CPU ``generator``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    values = values.detach().cpu().double().reshape(-1)  # (R²,)
    if not torch.isfinite(torch.logsumexp(values, 0)):
        raise ValueError("log_prob has no finite mass on the grid (its logsumexp is ±inf or NaN)")
    probs = torch.softmax(values, 0)  # (R²,)
    cell = torch.multinomial(probs, n, replacement=True, generator=generator) if n else torch.zeros(0, dtype=torch.long)
    jitter = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
    index = torch.stack([cell % grid.resolution, cell // grid.resolution], dim=1)  # (n, 2): x₁ and x₂ cell indices
    return (-grid.bound + grid.spacing * (index + jitter)).float()


def value_and_grad(log_prob: LogProb, x: Tensor) -> tuple[Tensor, Tensor]:
    """log p(x) (C,) and ∇ₓ log p(x) (C, D), both detached; works inside ``torch.no_grad``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = log_prob(x)  # (C,)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad.detach()


def _mala_log_proposal(y: Tensor, x: Tensor, grad_x: Tensor, step_size: float) -> Tensor:
    """log q(y | x) + const = −‖y − x − η ∇log p(x)‖² / (4η): (C,)."""
    return -(y - x - step_size * grad_x).square().sum(-1) / (4 * step_size)


def mala_log_accept(
    x: Tensor, y: Tensor, log_p_x: Tensor, log_p_y: Tensor, grad_x: Tensor, grad_y: Tensor, step_size: float
) -> Tensor:
    """log α(x → y) = min(0, log p(y) + log q(x | y) − log p(x) − log q(y | x)) for MALA: (C,).

    x, y, grad_x, grad_y: (C, D); log_p_x, log_p_y: (C,); step_size η > 0. NaN becomes −inf.
    """
    log_ratio = (
        log_p_y - log_p_x + _mala_log_proposal(x, y, grad_y, step_size) - _mala_log_proposal(y, x, grad_x, step_size)
    )
    return log_ratio.clamp(max=0.0).nan_to_num(nan=-math.inf)


def hmc_log_accept(log_p_x: Tensor, log_p_y: Tensor, momentum_x: Tensor, momentum_y: Tensor) -> Tensor:
    """log α = min(0, H(x, ρ) − H(y, ρ')), H(x, ρ) = −log p(x) + ½‖ρ‖²: (C,). NaN becomes −inf.

    log_p_x, log_p_y: (C,); momentum_x, momentum_y: (C, D). The momentum flip ρ' → −ρ' that makes the
    proposal an involution leaves H unchanged, so it is not written out.
    """
    energy_x = -log_p_x + 0.5 * momentum_x.square().sum(-1)
    energy_y = -log_p_y + 0.5 * momentum_y.square().sum(-1)
    return (energy_x - energy_y).clamp(max=0.0).nan_to_num(nan=-math.inf)


def leapfrog(
    log_prob: LogProb, x: Tensor, momentum: Tensor, grad: Tensor, step_size: float, n_steps: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n_steps`` leapfrog steps of size ε for H = −log p(x) + ½‖ρ‖² from (x, ρ) with ∇log p(x) = ``grad``.

    Shapes (C, D). Returns the end point, its momentum, log p and ∇log p there.
    Time-reversible (from (x', −ρ') it returns to (x, −ρ)) and volume-preserving.
    """
    momentum = momentum + 0.5 * step_size * grad
    for i in range(n_steps):
        x = x + step_size * momentum
        log_p, grad = value_and_grad(log_prob, x)
        momentum = momentum + (0.5 if i == n_steps - 1 else 1.0) * step_size * grad
    return x, momentum, log_p, grad


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def _metropolis(
    log_alpha: Tensor, x: Tensor, y: Tensor, cached: tuple[Tensor, ...], proposed: tuple[Tensor, ...], generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Accept y where log u < log α (u from the CPU generator): (x, log p, ∇log p, α) after the step."""
    accept = torch.rand(len(x), generator=generator, dtype=log_alpha.dtype).log().to(x.device) < log_alpha  # (C,)
    keep = accept[:, None]
    return (
        torch.where(keep, y, x),
        torch.where(accept, proposed[0], cached[0]),
        torch.where(keep, proposed[1], cached[1]),
        log_alpha.exp(),
    )


def mala_step(
    log_prob: LogProb, x: Tensor, log_p: Tensor, grad: Tensor, step_size: float, generator=None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One MALA step for C chains x (C, D) with log p (C,) and ∇log p (C, D) at x (from ``value_and_grad``).

    Returns the new x, its log p and ∇log p, and the acceptance probabilities α (C,).
    """
    y = x + step_size * grad + math.sqrt(2 * step_size) * _normal(x.shape, generator, x)  # (C, D)
    log_p_y, grad_y = value_and_grad(log_prob, y)
    log_alpha = mala_log_accept(x, y, log_p, log_p_y, grad, grad_y, step_size)
    return _metropolis(log_alpha, x, y, (log_p, grad), (log_p_y, grad_y), generator)


def hmc_step(
    log_prob: LogProb,
    x: Tensor,
    log_p: Tensor,
    grad: Tensor,
    step_size: float,
    leapfrog_steps: int,
    generator=None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One HMC step (fresh momentum, ``leapfrog_steps`` leapfrog steps, Metropolis); as ``mala_step``."""
    momentum = _normal(x.shape, generator, x)  # (C, D)
    y, momentum_y, log_p_y, grad_y = leapfrog(log_prob, x, momentum, grad, step_size, leapfrog_steps)
    log_alpha = hmc_log_accept(log_p, log_p_y, momentum, momentum_y)
    return _metropolis(log_alpha, x, y, (log_p, grad), (log_p_y, grad_y), generator)


class DualAveraging:
    """Step-size adaptation of Hoffman & Gelman (2014, Algorithm 5): log ε_m = μ − √m/γ · H̄_m with
    H̄_m = (1 − 1/(m + t₀)) H̄_{m−1} + (δ − α_m)/(m + t₀), μ = log(10 ε₀); the final ε is exp of the average
    log ε̄_m = m^{−κ} log ε_m + (1 − m^{−κ}) log ε̄_{m−1}."""

    def __init__(self, step_size: float, target: float, gamma: float = 0.2, t0: float = 10.0, kappa: float = 0.75):
        self.mu, self.target, self.gamma, self.t0, self.kappa = math.log(10 * step_size), target, gamma, t0, kappa
        self.m, self.h_bar, self.log_step, self.log_step_bar = 0, 0.0, math.log(step_size), math.log(step_size)

    def update(self, accept_prob: float) -> float:
        """Feed the mean acceptance probability of the last step; returns the next step size."""
        self.m += 1
        w = 1.0 / (self.m + self.t0)
        self.h_bar = (1 - w) * self.h_bar + w * (self.target - accept_prob)
        self.log_step = self.mu - math.sqrt(self.m) / self.gamma * self.h_bar
        eta = self.m ** (-self.kappa)
        self.log_step_bar = eta * self.log_step + (1 - eta) * self.log_step_bar
        return math.exp(self.log_step)

    @property
    def final(self) -> float:
        return math.exp(self.log_step_bar)


@dataclass
class Chains:
    """C MCMC chains after warm-up."""

    samples: Tensor  # (S, C, D) the kept states
    accept_rate: float  # mean acceptance probability over the kept steps and chains
    step_size: float  # the frozen step size
    ess: Tensor  # (D,) effective sample size of each coordinate's mean, float64
    rhat: Tensor  # (D,) rank-normalised split R̂, float64


def _check_chain_args(x0: Tensor, steps: int, step_size: float, warmup: int, target_accept: float) -> None:
    if x0.dim() != 2 or len(x0) == 0:
        raise ValueError(f"x0 must have shape (C, D) with C ≥ 1 chains, got {tuple(x0.shape)}")
    for name, value, low in (("steps", steps, 4), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")


def _run_chains(kernel, log_prob, x0, steps, step_size, generator, warmup, target_accept) -> Chains:
    """Warm-up with dual averaging, then ``steps`` frozen steps of ``kernel(log_prob, x, log_p, grad, ε, g)``."""
    _check_chain_args(x0, steps, step_size, warmup, target_accept)
    x = x0.detach()
    log_p, grad = value_and_grad(log_prob, x)
    adapt = DualAveraging(step_size, target_accept)
    for _ in range(warmup):
        x, log_p, grad, alpha = kernel(log_prob, x, log_p, grad, step_size, generator)
        step_size = adapt.update(alpha.mean().item())
    step_size = adapt.final if warmup else step_size
    samples, alphas = [], []
    for _ in range(steps):
        x, log_p, grad, alpha = kernel(log_prob, x, log_p, grad, step_size, generator)
        samples.append(x)
        alphas.append(alpha)
    samples = torch.stack(samples)  # (S, C, D)
    accept_rate = torch.stack(alphas).mean().item()
    return Chains(samples, accept_rate, step_size, effective_sample_size(samples), split_rhat(samples))


def mala(
    log_prob: LogProb,
    x0: Tensor,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    warmup: int = 500,
    target_accept: float = 0.574,
) -> Chains:
    """MALA chains from x0 (C, D) on ``log_prob`` ((N, D) → (N,)): ``warmup`` adapting steps, then ``steps`` kept.

    ``step_size`` η (the proposal variance is 2η) is the starting value of the adaptation (the fixed value when
    ``warmup`` is 0). Random numbers come from the CPU ``generator``.
    """
    return _run_chains(mala_step, log_prob, x0, steps, step_size, generator, warmup, target_accept)


def hmc(
    log_prob: LogProb,
    x0: Tensor,
    steps: int,
    step_size: float,
    leapfrog_steps: int,
    generator: torch.Generator | None = None,
    warmup: int = 500,
    target_accept: float = 0.65,
    jitter: float = 0.2,
) -> Chains:
    """HMC chains from x0 (C, D) with ``leapfrog_steps`` leapfrog steps per step; otherwise as ``mala``.

    Each step's size is ε·U(1 − jitter, 1 + jitter), drawn once per step for all chains (Neal 2011, 5.4.2.2):
    with a fixed ε·L, trajectories can resonate with the target (on a Gaussian, the acceptance rate is then
    not monotone in ε and the adaptation cannot find its target). ``step_size`` is the adapted ε.
    """
    if isinstance(leapfrog_steps, bool) or not isinstance(leapfrog_steps, int) or leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps must be a positive integer, got {leapfrog_steps!r}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must lie in [0, 1), got {jitter!r}")

    def kernel(log_prob, x, log_p, grad, step, generator):
        step = step * (1 + jitter * (2 * torch.rand((), generator=generator).item() - 1))
        return hmc_step(log_prob, x, log_p, grad, step, leapfrog_steps, generator)

    return _run_chains(kernel, log_prob, x0, steps, step_size, generator, warmup, target_accept)


def _split(samples: Tensor) -> Tensor:
    """(S, C, D) → (S//2, 2C, D) float64 on the CPU: each chain's first and second halves as separate chains."""
    if samples.dim() != 3 or samples.shape[0] < 4 or samples.shape[1] < 1:
        raise ValueError(f"samples must have shape (S, C, D) with S ≥ 4 draws, got {tuple(samples.shape)}")
    half = samples.shape[0] // 2
    samples = samples.detach().cpu().double()
    return torch.cat([samples[:half], samples[half : 2 * half]], dim=1)


def _variances(chains: Tensor) -> tuple[Tensor, Tensor]:
    """Within-chain variance W and the pooled estimate var⁺ = (n−1)/n·W + B/n of (n, M, D) chains: (D,), (D,)."""
    n = chains.shape[0]
    within = chains.var(0).mean(0)  # (D,)
    between = chains.mean(0).var(0) if chains.shape[1] > 1 else torch.zeros_like(within)  # (D,): B/n
    return within, (n - 1) / n * within + between


def effective_sample_size(samples: Tensor) -> Tensor:
    """ESS of each coordinate's mean from chains (S, C, D): (D,) float64 (Vehtari et al. 2021, eq. 10–11).

    Over the 2C split chains of length n: autocorrelations ρ_t = 1 − (W − mean_c γ̂_{c,t}) / var⁺, the pair
    sums P_k = ρ_{2k} + ρ_{2k+1} cut at the first negative one and made non-increasing (Geyer's initial
    monotone sequence), τ = −1 + 2 Σ_k P_k, ESS = n·2C / τ.
    """
    chains = _split(samples)  # (n, M, D)
    n = chains.shape[0]
    centred = chains - chains.mean(0)
    spectrum = torch.fft.rfft(centred, n=2 * n, dim=0)
    autocov = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n, dim=0)[:n] / n  # (n, M, D), biased γ̂_t
    within, var_plus = _variances(chains)
    rho = 1 - (within - autocov.mean(1)) / var_plus  # (n, D)
    pairs = rho[: 2 * (n // 2)].reshape(n // 2, 2, -1).sum(1)  # (n//2, D)
    positive = (pairs > 0).long().cumprod(0).bool()  # (n//2, D): before the first non-positive pair
    monotone = pairs.clamp(min=0).cummin(0).values
    tau = (-1 + 2 * (monotone * positive).sum(0)).clamp(min=1 / math.log10(max(n * chains.shape[1], 10)))
    return n * chains.shape[1] / tau


def _rank_normal(x: Tensor) -> Tensor:
    """Φ⁻¹((r − 3/8)/(N + 1/4)) of the ranks r of (n, M, D) draws, pooled over chains per coordinate."""
    flat = x.reshape(-1, x.shape[-1])  # (N, D)
    ranks = flat.argsort(0).argsort(0).double() + 1
    return torch.special.ndtri((ranks - 0.375) / (len(flat) + 0.25)).reshape(x.shape)


def _rhat(chains: Tensor) -> Tensor:
    within, var_plus = _variances(chains)
    return (var_plus / within).sqrt()


def split_rhat(samples: Tensor) -> Tensor:
    """Rank-normalised split R̂ of chains (S, C, D): (D,) float64, max of the bulk and folded values.

    Bulk: R̂ = √(var⁺/W) of the rank-normalised split chains; folded: the same of |x − median(x)|, which
    catches chains with equal locations but different scales (Vehtari et al. 2021, section 4).
    """
    chains = _split(samples)
    folded = (chains - chains.reshape(-1, chains.shape[-1]).median(0).values).abs()
    return torch.maximum(_rhat(_rank_normal(chains)), _rhat(_rank_normal(folded)))


__all__ = [
    "sample_cells",
    "Chains",
    "DualAveraging",
    "effective_sample_size",
    "grid_sample",
    "hmc",
    "hmc_log_accept",
    "hmc_step",
    "leapfrog",
    "mala",
    "mala_log_accept",
    "mala_step",
    "split_rhat",
    "value_and_grad",
]
