"""Samplers of ebm.energy.sampling against densities known in closed form.

The grid sampler's histogram is tested against bin masses computed here: from normal CDFs (the true mixture)
and from the cells' softmax times their overlap with each bin (the grid's piecewise-constant density); MCMC
against Gaussian means and covariances; the acceptance rules against detailed balance written out from the
definitions; the diagnostics against i.i.d. draws, an AR(1) chain (ESS = N(1 − φ)/(1 + φ)) and stuck chains.
"""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter
from scipy.stats import chi2, norm
from torch import nn

from ebm.energy.evaluate import Grid
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import GaussianMixtureNoise
from ebm.energy.sampling import (
    effective_sample_size,
    grid_sample,
    hmc,
    hmc_log_accept,
    leapfrog,
    mala,
    mala_log_accept,
    split_rhat,
    value_and_grad,
)

# An axis-aligned 2D Gaussian mixture: weights, means, standard deviations (per axis).
WEIGHTS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
MEANS = torch.tensor([[-1.0, 0.5], [1.2, -0.8], [0.3, 1.5]], dtype=torch.float64)
STDS = torch.tensor([[0.5, 0.7], [0.4, 0.4], [0.8, 0.3]], dtype=torch.float64)


def mixture_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log of Σ_k w_k N(x; μ_k, diag σ_k²): (N, 2) → (N,)."""
    comp = torch.distributions.Normal(MEANS, STDS).log_prob(x.double()[:, None, :]).sum(-1)  # (N, K)
    return torch.logsumexp(comp + WEIGHTS.log(), dim=1)


def chi2_pvalue(samples: torch.Tensor, edges: np.ndarray, expected_prob: np.ndarray) -> float:
    """Pearson χ² p-value of the 2D histogram (bins [x₂, x₁]) against ``expected_prob``, bins with < 5 expected
    counts pooled into one (together with everything outside the edges)."""
    x = samples.double().numpy()
    observed, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=[edges, edges])
    expected = expected_prob * len(x)
    big = expected >= 5
    obs = np.append(observed[big], len(x) - observed[big].sum())
    exp = np.append(expected[big], len(x) - expected[big].sum())
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(chi2.sf(stat, len(obs) - 1))


def test_grid_sample_matches_the_mixture_cdf():
    generator = torch.Generator().manual_seed(0)
    samples = grid_sample(mixture_log_prob, Grid(5.0, 256), 100_000, generator)
    assert samples.shape == (100_000, 2) and samples.dtype == torch.float32
    edges = np.linspace(-5, 5, 21)
    cdf = norm.cdf((edges[None, :, None] - MEANS.numpy()[:, None, :]) / STDS.numpy()[:, None, :])  # (K, E, 2)
    mass = np.diff(cdf, axis=1)  # (K, B, 2): each component's mass per bin along each axis
    expected = np.einsum("k,ki,kj->ij", WEIGHTS.numpy(), mass[:, :, 1], mass[:, :, 0])  # (B₂, B₁)
    assert chi2_pvalue(samples, edges, expected) > 1e-3


def test_grid_sample_chi2_against_the_cell_density_and_its_power():
    """A coarse grid (cells of 0.25) and bins of width 1/3 that cut cells: the expected bin masses are the cells'
    softmax masses times the fraction of each cell inside each bin. Cell centres without the uniform jitter, and
    cells drawn with a wrongly tempered normalisation, fail the same test."""
    grid, generator = Grid(3.0, 24), torch.Generator().manual_seed(1)
    cells = torch.softmax(mixture_log_prob(grid.points()), 0).reshape(24, 24).numpy()  # (x₂, x₁)
    edges = np.linspace(-3, 3, 19)
    lo = grid.axis().numpy() - grid.spacing / 2
    overlap = np.clip(
        np.minimum(edges[1:, None], lo[None] + grid.spacing) - np.maximum(edges[:-1, None], lo[None]), 0, None
    )
    overlap /= grid.spacing  # (B, R): fraction of cell j inside bin b
    expected = overlap @ cells @ overlap.T  # (B₂, B₁)

    samples = grid_sample(mixture_log_prob, grid, 100_000, generator)
    assert chi2_pvalue(samples, edges, expected) > 1e-3
    centres = -grid.bound + grid.spacing * (torch.floor((samples + grid.bound) / grid.spacing) + 0.5)
    assert chi2_pvalue(centres, edges, expected) < 1e-6
    tempered = grid_sample(lambda x: 0.8 * mixture_log_prob(x), grid, 100_000, generator)
    assert chi2_pvalue(tempered, edges, expected) < 1e-6


def test_grid_sample_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        grid_sample(mixture_log_prob, Grid(3.0, 8), -1)
    with pytest.raises(ValueError, match="finite mass"):
        grid_sample(lambda x: torch.full((len(x),), -math.inf), Grid(3.0, 8), 10)


def gaussian(dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A correlated 2D Gaussian (ρ = 0.9) or a 4D one with eigenvalues spread over 1.5 decades: mean, cov."""
    if dims == 2:
        return torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor(
            [[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64
        )
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=torch.float64)) @ q.T
    return torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64), cov


@pytest.mark.parametrize("method", ["mala", "hmc"])
@pytest.mark.parametrize("dims", [2, 4])
def test_mcmc_matches_gaussian_moments(method, dims):
    mean, cov = gaussian(dims)
    precision = torch.linalg.inv(cov)

    def log_prob(x):
        return -0.5 * (((x - mean) @ precision) * (x - mean)).sum(-1)

    generator = torch.Generator().manual_seed(dims)
    x0 = 3 * torch.randn(64, dims, generator=generator, dtype=torch.float64)
    if method == "mala":
        chains, target = mala(log_prob, x0, 600, 0.1, generator, warmup=300), 0.574
    else:
        chains, target = hmc(log_prob, x0, 300, 0.1, 5, generator, warmup=300), 0.65
    assert chains.samples.shape == (chains.samples.shape[0], 64, dims)
    assert abs(chains.accept_rate - target) < 0.1
    assert (chains.rhat < 1.1).all()  # ≈ √(1 + τ/n): MALA's τ ≈ 35 here, n = 300 per split chain
    draws = chains.samples.reshape(-1, dims)
    ess, var = chains.ess, cov.diagonal()
    assert ((draws.mean(0) - mean).abs() < 5 * (var / ess).sqrt()).all()
    cov_stderr = ((var[:, None] * var[None, :] + cov**2) / ess.min()).sqrt()
    assert ((torch.cov(draws.T) - cov).abs() < 5 * cov_stderr).all()


def quartic(x: torch.Tensor) -> torch.Tensor:
    """A non-Gaussian 1D log-density (unnormalised): −x⁴/4 − x²/2 + x: (N, 1) → (N,)."""
    return (-(x**4) / 4 - x**2 / 2 + x).sum(-1)


def test_mala_acceptance_satisfies_detailed_balance():
    """π(x) q(y | x) α(x → y) = π(y) q(x | y) α(y → x) with q(y | x) = N(y; x + η ∇log π(x), 2η), for all pairs."""
    eta = 0.3
    points = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64)[:, None]
    x, y = points.repeat_interleave(41, 0), points.repeat(41, 1)  # (41², 1): all pairs
    log_pi_x, grad_x = value_and_grad(quartic, x)
    log_pi_y, grad_y = value_and_grad(quartic, y)

    def log_q(to, start, grad):
        return torch.distributions.Normal(start + eta * grad, math.sqrt(2 * eta)).log_prob(to).sum(-1)

    forward = log_pi_x + log_q(y, x, grad_x) + mala_log_accept(x, y, log_pi_x, log_pi_y, grad_x, grad_y, eta)
    backward = log_pi_y + log_q(x, y, grad_y) + mala_log_accept(y, x, log_pi_y, log_pi_x, grad_y, grad_x, eta)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-10)
    assert (mala_log_accept(x, y, log_pi_x, log_pi_y, grad_x, grad_y, eta) < 0).any()  # a non-trivial check


def test_hmc_leapfrog_reversible_volume_preserving_and_balanced():
    """Detailed balance of HMC's deterministic proposal (x, ρ) → (x', −ρ'): it is an involution, it preserves
    volume (Jacobian determinant 1), and exp(−H(z)) α(z → z') = exp(−H(z')) α(z' → z)."""
    eps, steps = 0.25, 7
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    rho = torch.linspace(1.5, -1.5, 9, dtype=torch.float64)[:, None]
    _, grad = value_and_grad(quartic, x)
    x_new, rho_new, log_pi_new, grad_new = leapfrog(quartic, x, rho, grad, eps, steps)
    x_back, rho_back, _, _ = leapfrog(quartic, x_new, -rho_new, grad_new, eps, steps)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(-rho_back, rho, rtol=0, atol=1e-12)

    def flow(z):
        z = z[None]
        return torch.cat(
            leapfrog(quartic, z[:, :1], z[:, 1:], value_and_grad(quartic, z[:, :1])[1], eps, steps)[:2], 1
        )[0]

    for start in torch.stack([x[:, 0], rho[:, 0]], 1):
        jacobian = torch.autograd.functional.jacobian(flow, start, create_graph=False)
        assert torch.linalg.det(jacobian).item() == pytest.approx(1.0, abs=1e-4)

    log_pi = quartic(x)
    hamiltonian, hamiltonian_new = -log_pi + rho[:, 0] ** 2 / 2, -log_pi_new + rho_new[:, 0] ** 2 / 2
    forward = -hamiltonian + hmc_log_accept(log_pi, log_pi_new, rho, rho_new)
    backward = -hamiltonian_new + hmc_log_accept(log_pi_new, log_pi, -rho_new, -rho)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-10)
    assert (forward < -hamiltonian - 1e-6).any()  # some proposals are rejected with positive probability


def test_ess_of_iid_draws_is_their_number():
    draws = torch.randn(1000, 8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ess = effective_sample_size(draws)
    assert ess.shape == (3,)
    assert ((ess / 8000 - 1).abs() < 0.15).all()


def test_ess_of_an_ar1_chain():
    """x_t = φ x_{t−1} + ε_t has integrated autocorrelation time (1 + φ)/(1 − φ)."""
    phi, length, chains = 0.8, 20_000, 4
    noise = np.random.default_rng(0).standard_normal((length, chains)) * math.sqrt(1 - phi**2)
    noise[0] /= math.sqrt(1 - phi**2)  # start in the stationary law N(0, 1)
    draws = torch.from_numpy(lfilter([1.0], [1.0, -phi], noise, axis=0))[:, :, None]
    expected = length * chains * (1 - phi) / (1 + phi)
    assert effective_sample_size(draws).item() == pytest.approx(expected, rel=0.15)


def test_rhat_is_one_for_mixed_chains_and_large_for_stuck_ones():
    generator = torch.Generator().manual_seed(0)
    mixed = torch.randn(1000, 4, 2, generator=generator, dtype=torch.float64)
    assert (split_rhat(mixed) < 1.01).all()
    assert (split_rhat(mixed.exp()) < 1.01).all()  # heavy tails (log-normal) do not fool the rank-normalised R̂
    modes = mixed + torch.tensor([-3.0, 3.0, -3.0, 3.0], dtype=torch.float64)[None, :, None]
    assert (split_rhat(modes) > 1.1).all()
    scales = mixed * torch.tensor([1.0, 4.0, 1.0, 4.0], dtype=torch.float64)[None, :, None]
    assert (split_rhat(scales) > 1.1).all()  # equal means: only the folded (tail) R̂ sees it
    trend = mixed[:, :1] + torch.linspace(0, 4, 1000, dtype=torch.float64)[:, None, None]
    assert (split_rhat(trend) > 1.1).all()  # a single drifting chain: only splitting sees it


@pytest.mark.parametrize("dims", [2, 3])
def test_model_sample_is_its_base_when_the_network_is_zero(dims):
    """With the last layer zeroed, p = base exactly; both methods reproduce the base's mean and covariance."""
    mean = torch.linspace(-1, 1, dims)
    cov = 0.5 * torch.eye(dims) + 0.3
    base = GaussianMixtureNoise(torch.zeros(1), mean[None], torch.linalg.cholesky(cov)[None])  # one component
    model = EnergyMLP(width=16, depth=2, base=base, dims=dims)
    nn.init.zeros_(model.net[-1].weight), nn.init.zeros_(model.net[-1].bias)
    generator = torch.Generator().manual_seed(0)
    methods = ["grid", "mala"] if dims == 2 else ["mala"]
    for method in methods:
        x = model.sample(4000, generator, method=method, **({"bound": 5.0} if method == "grid" else {"warmup": 100}))
        assert x.shape == (4000, dims)
        assert ((x.mean(0) - mean).abs() < 5 * (cov.diagonal() / 4000).sqrt()).all(), method
        assert (torch.cov(x.T) - cov).abs().max() < 0.1, method
    with pytest.raises(ValueError, match="auto, grid, pairs, mala"):
        model.sample(10, generator, method="gibbs")
    if dims == 3:
        with pytest.raises(ValueError, match="D = 2"):
            model.sample(10, generator, method="grid", bound=3.0)


def test_model_sample_grid_agrees_with_grid_sample():
    model = EnergyMLP(width=16, depth=2)
    x = model.sample(100, torch.Generator().manual_seed(5), bound=3.0, resolution=32)
    torch.testing.assert_close(x, grid_sample(model.log_prob, Grid(3.0, 32), 100, torch.Generator().manual_seed(5)))
