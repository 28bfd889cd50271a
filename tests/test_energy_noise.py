"""Noise distributions in 2D and D = 4: normalised, samplers match their densities, state dicts restore them."""

import functools
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import ebm.energy.noise as noise_module
from ebm.data.toy import sample
from ebm.energy.evaluate import Grid, grid_log_prob, plane_mass
from ebm.energy.flow import FlowArchitecture, FlowNoise, fit_flow_noise
from ebm.energy.noise import DEFENSIVE_WEIGHT, NOISE_NAMES, empty_noise, make_noise


@pytest.fixture(scope="module")
def data():
    return sample("8gaussians", 5000, torch.Generator().manual_seed(0))


MIXTURES = ("gaussian", "fitted", "gmm")  # GaussianMixtureNoise; flow and pairs have tests of their own


@functools.cache
def _fitted(name: str):
    """Each noise fitted once per session (the mixture's EM with five starts takes seconds; the flow is fitted
    briefly: only its state's round trip is tested here)."""
    data = sample("8gaussians", 5000, torch.Generator().manual_seed(0))
    return fit_flow_noise(data, steps=20) if name == "flow" else make_noise(name, data)


def test_make_noise_fits_a_flow_for_flow(monkeypatch, data):
    monkeypatch.setattr(noise_module, "fit_flow_noise", lambda points, seed: ("flow fitted to", len(points), seed))
    assert make_noise("flow", data, seed=3) == ("flow fitted to", len(data), 3)


@pytest.mark.parametrize("name", MIXTURES)
def test_noise_integrates_to_one(name):
    noise = _fitted(name)
    mass = plane_mass(noise.log_prob, Grid(12.0, 400))  # the box and the plane beyond it
    assert mass.converged and mass.log_total == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", MIXTURES)
def test_samples_match_density_moments(name):
    noise = _fitted(name)
    x = noise.sample((200, 300), torch.Generator().manual_seed(1))
    assert x.shape == (200, 300, 2)
    x = x.reshape(-1, 2).double()
    dist = noise.distribution()
    assert torch.allclose(x.mean(0), dist.mean.double(), atol=0.03)
    # Exact check of the whole distribution: the mean log-density of its own samples equals its entropy.
    grid = Grid(12.0, 400)
    log_q = grid_log_prob(noise.log_prob, grid).double()
    entropy = -(log_q.exp() * log_q).sum() * grid.spacing**2
    assert -noise.log_prob(x[:50_000].float()).mean().item() == pytest.approx(entropy.item(), abs=0.02)


def test_fixed_gaussian_is_the_seed_default(data):
    noise = make_noise("gaussian", data)
    x = noise.sample((100_000,), torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(x.T), 4 * torch.eye(2), atol=0.06)


def test_fitted_gaussian_uses_data_moments(data):
    noise = make_noise("fitted", data, widen=2.0)
    cov = noise.scale_tril[0] @ noise.scale_tril[0].T
    assert torch.allclose(cov, 2.0 * torch.cov(data.T), atol=1e-4)
    assert torch.allclose(noise.loc[0], data.mean(0), atol=1e-5)


def test_gmm_finds_the_eight_modes(data):
    noise = make_noise("gmm", data, components=8, widen=1.0)
    angles = torch.arange(8) * torch.pi / 4
    means = 2 * 2**0.5 * torch.stack([angles.cos(), angles.sin()], 1)
    weights = noise.logits.softmax(0)
    assert torch.cdist(noise.loc[:8], means).min(1).values.max() < 0.05
    assert torch.allclose(weights[:8], torch.full((8,), (1 - DEFENSIVE_WEIGHT) / 8), atol=0.02)


def test_gmm_has_a_broad_defensive_component(data):
    noise = make_noise("gmm", data, components=8, widen=1.0)
    assert noise.logits.softmax(0)[-1].item() == pytest.approx(DEFENSIVE_WEIGHT, rel=1e-5)
    broad_cov = noise.scale_tril[-1] @ noise.scale_tril[-1].T
    assert torch.allclose(broad_cov, 4.0 * torch.cov(data.T), rtol=1e-4, atol=1e-4)
    far = torch.tensor([[4.0, -4.0]])  # between and beyond the modes, where the fitted mixture alone is ~0
    assert noise.log_prob(far).item() > -15


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_state_dict_round_trip(name):
    noise = _fitted(name)
    restored = empty_noise(name)
    restored.load_state_dict(noise.state_dict())
    x = torch.randn(10, 2)
    assert torch.equal(noise.log_prob(x), restored.log_prob(x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(noise.sample((7,), g1), restored.sample((7,), g2))


def test_errors(data):
    with pytest.raises(ValueError, match="gaussian, fitted, gmm, flow"):
        make_noise("uniform", data)
    with pytest.raises(ValueError, match="gaussian, fitted, gmm, flow"):
        empty_noise("uniform")
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        make_noise("gaussian", data).log_prob(torch.zeros(4, 3))


# ------------------------------------------------------------------------------------- D dimensions

DIMS = 4


@functools.cache
def _fitted_in_d(name: str):
    """Each noise fitted once to D = 4 data (two rotated 8gaussians); the flow small and brief."""
    data = sample("8gaussians", 5000, torch.Generator().manual_seed(0), dims=DIMS)
    if name == "flow":
        return fit_flow_noise(data, steps=60, architecture=FlowArchitecture(transforms=2, hidden=16, layers=1, bins=8))
    return make_noise(name, data)


def _scipy_mixture_log_prob(noise, x):
    """log Σ_k w_k N(x; μ_k, L_k L_kᵀ) by scipy, from the buffers: an outside reference for the mixtures."""
    weights = noise.logits.double().softmax(0).numpy()
    terms = [
        np.log(w) + multivariate_normal(mu.double().numpy(), (tril @ tril.T).double().numpy()).logpdf(x.numpy())
        for w, mu, tril in zip(weights, noise.loc, noise.scale_tril, strict=True)
    ]
    return torch.from_numpy(logsumexp(np.stack(terms, axis=1).reshape(len(x), -1), axis=1))


@pytest.mark.parametrize("name", MIXTURES)
def test_mixtures_in_d_dimensions_have_scipys_density_and_its_moments(name):
    noise = _fitted_in_d(name)
    assert noise.dims == DIMS and noise.loc.shape[1:] == (DIMS,)
    x = sample("8gaussians", 200, torch.Generator().manual_seed(2), dims=DIMS)
    torch.testing.assert_close(noise.log_prob(x).double(), _scipy_mixture_log_prob(noise, x.double()),
                               atol=1e-4, rtol=1e-5)
    # samples: the mixture's mean Σ w_k μ_k and covariance Σ w_k (C_k + μ_k μ_kᵀ) − μ μᵀ, computed here
    draws = noise.sample((400, 500), torch.Generator().manual_seed(3))
    assert draws.shape == (400, 500, DIMS)
    draws = draws.reshape(-1, DIMS).double()
    w, mu = noise.logits.double().softmax(0), noise.loc.double()
    cov_k = noise.scale_tril.double() @ noise.scale_tril.double().transpose(1, 2)
    mean = w @ mu
    cov = (w[:, None, None] * (cov_k + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(mean, mean)
    se = (cov.diagonal() / len(draws)).sqrt()  # of the mean; the covariance's is at most ~√(2/n)·var
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=5 * math.sqrt(2 / len(draws)) * cov.diagonal().max(),
                               rtol=0)


def test_fixed_gaussian_in_d_dimensions_is_n_0_4i():
    noise = make_noise("gaussian", torch.randn(10, DIMS))
    x = torch.randn(5, DIMS)
    expected = -0.5 * x.double().square().sum(1) / 4 - DIMS / 2 * math.log(2 * math.pi * 4)  # closed form
    torch.testing.assert_close(noise.log_prob(x).double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_noises_normalise_in_d_dimensions(name):
    """E_r[q/r] = ∫q = 1 at D = 4 with a broad Gaussian r around the data, within five standard errors."""
    noise = _fitted_in_d(name)
    n = 100_000
    r = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(DIMS), 5.0), 1)
    x = r.sample((n,))
    with torch.no_grad():
        weights = torch.exp(noise.log_prob(x).double() - r.log_prob(x).double())
    se = weights.std().item() / math.sqrt(n)
    assert se < 0.03
    assert weights.mean().item() == pytest.approx(1.0, abs=5 * se)


@pytest.mark.parametrize("name", NOISE_NAMES)
def test_empty_noise_in_d_dimensions_restores_a_state_dict(name):
    noise = _fitted_in_d(name)
    restored = (empty_noise(name, dims=DIMS) if name != "flow"
                else FlowNoise.empty(noise.architecture, dims=DIMS))
    restored.load_state_dict(noise.state_dict())
    x = torch.randn(10, DIMS)
    assert torch.equal(noise.log_prob(x), restored.log_prob(x))
    assert torch.equal(noise.sample((7,), torch.Generator().manual_seed(5)),
                       restored.sample((7,), torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match=rf"\(\.\.\., {DIMS}\)"):
        restored.log_prob(torch.zeros(3, 2))
    assert empty_noise(name, dims=6).dims == 6
