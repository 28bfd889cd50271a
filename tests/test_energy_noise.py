"""Noise distributions: normalised, samplers match their densities, state dicts restore them."""

import functools

import pytest
import torch

import ebm.energy.noise as noise_module
from ebm.data.toy import sample
from ebm.energy.evaluate import Grid, grid_log_prob, plane_mass
from ebm.energy.flow import fit_flow_noise
from ebm.energy.noise import DEFENSIVE_WEIGHT, NOISE_CHOICES, empty_noise, make_noise


@pytest.fixture(scope="module")
def data():
    return sample("8gaussians", 5000, torch.Generator().manual_seed(0))


MIXTURES = tuple(name for name in NOISE_CHOICES if name != "flow")  # the flow has tests of its own (test_flow.py)


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


@pytest.mark.parametrize("name", NOISE_CHOICES)
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
