"""Annealed importance sampling's bracket against normalisers known in closed form or by quadrature.

Forward and reverse AIS give stochastic bounds, so "contains" allows three standard errors on each side; the
narrowing with K is checked on the same seeds. The 2D truth comes from ``evaluate.plane_mass``, the exact
model samples for the reverse chains from ``sampling.grid_sample``.
"""

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from ebm.energy.ais import ais_bracket, beta_schedule
from ebm.energy.evaluate import Grid, plane_mass
from ebm.energy.sampling import grid_sample


class Gaussian(nn.Module):
    """N(loc, cov) in D dimensions with the noise protocol: ``sample(shape, generator)`` and ``log_prob``."""

    def __init__(self, loc: torch.Tensor, cov: torch.Tensor):
        super().__init__()
        self.loc, self.scale_tril = loc, torch.linalg.cholesky(cov)

    def sample(self, shape, generator=None):
        z = torch.randn(*shape, len(self.loc), 1, generator=generator, dtype=self.loc.dtype)
        return self.loc + (self.scale_tril @ z).squeeze(-1)

    def log_prob(self, x):
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril).log_prob(x)


def contains(bracket, truth: float) -> bool:
    return bracket.lower - 3 * bracket.lower_stderr <= truth <= bracket.upper + 3 * bracket.upper_stderr


@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_beta_schedule_runs_from_zero_to_one(kind):
    betas = beta_schedule(20, kind)
    assert betas.shape == (21,) and betas[0] == 0 and betas[-1] == 1
    assert (betas.diff() > 0).all()
    with pytest.raises(ValueError, match="sigmoid, linear"):
        beta_schedule(20, "cosine")


def test_model_equal_to_the_noise_gives_exact_weights():
    """p̃ = c·q: every increment is (β_k − β_{k−1}) log c, so every weight is log c exactly, whatever the chains do."""
    noise = Gaussian(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    bracket = ais_bracket(
        lambda x: noise.log_prob(x) + 1.7, noise, 50, 5, generator, model_samples=noise.sample((50,), generator)
    )
    for value in (bracket.lower, bracket.upper, bracket.log_z):
        assert value == pytest.approx(1.7, abs=1e-10)
    assert bracket.ess == pytest.approx(50) and bracket.n_distributions == 6


def test_bracket_of_a_scaled_gaussian_contains_log_z_and_narrows():
    """p̃(x) = exp(c) N(x; μ, Σ) in 4D with a wide N(0, 4I) start: log Z = c."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=generator, dtype=torch.float64)
    target = Gaussian(torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=torch.float64), a @ a.T / 4 + 0.1 * torch.eye(4))
    noise = Gaussian(torch.zeros(4, dtype=torch.float64), 4 * torch.eye(4, dtype=torch.float64))
    log_z = 3.0
    brackets = {}
    for n_steps in (10, 200):
        samples = target.sample((500,), generator)
        brackets[n_steps] = ais_bracket(lambda x: target.log_prob(x) + log_z, noise, 500, n_steps, generator, samples)
        assert contains(brackets[n_steps], log_z), brackets[n_steps]
        assert brackets[n_steps].lower <= brackets[n_steps].log_z  # log-mean-exp ≥ mean (Jensen, exactly)
    assert brackets[200].upper - brackets[200].lower < 0.3 * (brackets[10].upper - brackets[10].lower)
    assert brackets[200].ess > brackets[10].ess


def ring_log_p_tilde(x: torch.Tensor) -> torch.Tensor:
    """An unnormalised 2D density with no closed-form normaliser: six bumps on a ring, tempered, times e²."""
    angle = torch.arange(6, dtype=torch.float64) * math.pi / 3
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], 1)  # (6, 2)
    bumps = -(x.double()[:, None, :] - centres).square().sum(-1) / (2 * 0.3**2)  # (N, 6)
    return 0.7 * torch.logsumexp(bumps, 1) - 0.1 * x.double().square().sum(-1) + 2.0


def test_bracket_of_a_2d_mixture_contains_the_grid_normaliser_and_narrows():
    grid, generator = Grid(4.0, 256), torch.Generator().manual_seed(2)
    log_z = plane_mass(ring_log_p_tilde, grid).log_total
    noise = Gaussian(torch.zeros(2, dtype=torch.float64), 4 * torch.eye(2, dtype=torch.float64))
    gaps = {}
    for n_steps in (10, 200):
        samples = grid_sample(ring_log_p_tilde, grid, 500, generator).double()
        bracket = ais_bracket(ring_log_p_tilde, noise, 500, n_steps, generator, samples)
        assert contains(bracket, log_z), (bracket, log_z)
        gaps[n_steps] = bracket.upper - bracket.lower
    assert gaps[200] < 0.3 * gaps[10]


def test_forward_only_has_no_upper_bound_and_bad_input_fails():
    noise = Gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    generator = torch.Generator().manual_seed(3)
    bracket = ais_bracket(lambda x: -x.square().sum(-1), noise, 100, 5, generator)
    assert bracket.upper == math.inf and math.isnan(bracket.upper_stderr)
    assert 1 <= bracket.ess <= 100
    with pytest.raises(ValueError, match="n_chains"):
        ais_bracket(noise.log_prob, noise, 1, 5, generator)
    with pytest.raises(ValueError, match="model_samples"):
        ais_bracket(noise.log_prob, noise, 10, 5, generator, model_samples=torch.zeros(10, 3))
