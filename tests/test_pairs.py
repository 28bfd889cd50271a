"""The pair noise: a density by the change of variables, samples with its moments, and a fit that finds the pairs."""

import functools
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from ebm.data import toy
from ebm.energy.noise import make_noise
from ebm.energy.pairs import PairMixtureNoise, fit_pair_mixture, mutual_information, pair_components


def _random_noise(dims: int = 4, k: int = 3, seed: int = 0) -> PairMixtureNoise:
    g = torch.Generator().manual_seed(seed)
    pairs = dims // 2
    tril = torch.randn(pairs, k, 2, 2, generator=g).tril(-1) * 0.3 + torch.diag_embed(
        0.2 + torch.rand(pairs, k, 2, generator=g))
    return PairMixtureNoise(torch.randn(dims, generator=g), torch.randn(dims, dims, generator=g) + 2 * torch.eye(dims),
                            torch.randn(pairs, k, generator=g), 2 * torch.randn(pairs, k, 2, generator=g), tril)


def test_log_prob_is_the_change_of_variables_of_the_pair_mixtures():
    """log q(x) = log|det W| + Σ_j log Σ_k w_jk N(s_j; m_jk, L L^T), s = W(x − μ), computed here with scipy."""
    noise = _random_noise()
    x = noise.sample((50,), torch.Generator().manual_seed(1))  # where q lives (float32 tails lose digits)
    w, loc = noise.unmixing.double().numpy(), noise.loc.double().numpy()
    s = (x.double().numpy() - loc) @ w.T
    expected = np.full(len(x), np.linalg.slogdet(w)[1])
    for j in range(2):
        weights = noise.logits[j].double().softmax(0).numpy()
        pair = s[:, 2 * j : 2 * j + 2]
        density = sum(
            weight * multivariate_normal(m.double().numpy(), (tril @ tril.T).double().numpy()).pdf(pair)
            for weight, m, tril in zip(weights, noise.means[j], noise.scale_tril[j], strict=True))
        expected += np.log(density)
    torch.testing.assert_close(noise.log_prob(x).double(), torch.from_numpy(expected), atol=2e-4, rtol=1e-5)


def test_samples_have_the_mixed_moments():
    """mean = μ + A m and cov = A blockdiag(C_j) Aᵀ, A = W⁻¹, with the pairs' mixture moments m_j, C_j."""
    noise = _random_noise()
    draws = noise.sample((400, 500), torch.Generator().manual_seed(2))
    assert draws.shape == (400, 500, 4)
    draws = draws.reshape(-1, 4).double()
    w = noise.logits.double().softmax(-1)  # (P, K)
    m = noise.means.double()
    cov_k = noise.scale_tril.double() @ noise.scale_tril.double().transpose(-1, -2)  # (P, K, 2, 2)
    pair_mean = (w[..., None] * m).sum(1)  # (P, 2)
    pair_cov = (w[..., None, None] * (cov_k + m[..., :, None] * m[..., None, :])).sum(1) - (
        pair_mean[:, :, None] * pair_mean[:, None, :])
    mixing = torch.linalg.inv(noise.unmixing.double())
    mean = noise.loc.double() + mixing @ pair_mean.flatten()
    cov = mixing @ torch.block_diag(*pair_cov) @ mixing.T
    se = (cov.diagonal() / len(draws)).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(draws.T), cov, atol=5 * math.sqrt(2 / len(draws)) * cov.diagonal().max(),
                               rtol=0)


def test_mutual_information_of_gaussian_pairs_is_the_closed_form():
    """I = −½ log(1 − ρ²) for a bivariate normal with correlation ρ (16 rank bins lose a little at ρ = 0.9)."""
    g = torch.Generator().manual_seed(0)
    for rho, tolerance in ((0.0, 0.01), (0.5, 0.02), (0.9, 0.1)):
        z = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
        x = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], 1)
        assert mutual_information(x)[0, 1].item() == pytest.approx(-0.5 * math.log(1 - rho**2), abs=tolerance)


def test_pairing_joins_the_dependent_columns():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5000, generator=g), torch.rand(5000, generator=g) * 6
    columns = torch.stack([a, b.sin(), a.square() + 0.1 * torch.randn(5000, generator=g), b], 1)  # 0~2, 1~3
    assert sorted(tuple(sorted(p)) for p in pair_components(columns)) == [(0, 2), (1, 3)]


@functools.cache
def _fitted(name: str, dims: int, noise: str = "pairs"):
    data = toy.sample(name, 10_000, torch.Generator().manual_seed(0), dims=dims)
    return make_noise(noise, data)


def _kl_per_copy(name: str, dims: int, noise: str = "pairs") -> float:
    test = toy.sample(name, 20_000, torch.Generator().manual_seed(1), dims=dims)
    return (toy.log_prob(name, test) - _fitted(name, dims, noise).log_prob(test)).mean().item() / (dims // 2)


def test_the_fit_separates_the_rotated_pairs():
    """With x = Q y (y the unrotated 2D copies), s = W(x − μ) = WQ y − …: each fitted pair of rows of WQ lives
    in the columns of one copy, a different copy for each pair."""
    dims = 8
    mixed = _fitted("8gaussians", dims).unmixing.double() @ toy.rotation(dims)  # (D, D)
    energy = mixed.square().unflatten(0, (-1, 2)).sum(1).unflatten(1, (-1, 2)).sum(2)  # (P fitted, P copies)
    share = energy / energy.sum(1, keepdim=True)
    assert (share.max(1).values > 0.95).all(), share
    assert sorted(share.argmax(1).tolist()) == list(range(dims // 2))


def _leak(noise, dims: int) -> float:
    """Σ over fitted pairs of the share of their rows' energy outside their best-matching copy's plane."""
    mixed = noise.unmixing.double() @ toy.rotation(dims)  # (D, D)
    energy = mixed.square().unflatten(0, (-1, 2)).sum(1).unflatten(1, (-1, 2)).sum(2)  # (P fitted, P copies)
    return (1 - (energy / energy.sum(1, keepdim=True)).max(1).values).sum().item()


def test_refining_the_basis_by_likelihood_moves_the_planes_onto_the_copies():
    """Step 2 (maximum likelihood of W with the mixtures fixed) cuts the energy ICA leaks between planes at least
    threefold on 8gaussians at D = 8, and raises the held-out log-likelihood."""
    data = toy.sample("8gaussians", 10_000, torch.Generator().manual_seed(0), dims=8)
    test = toy.sample("8gaussians", 20_000, torch.Generator().manual_seed(1), dims=8)
    ica_only = fit_pair_mixture(data, 8, 1.0, refine_steps=0)
    refined = fit_pair_mixture(data, 8, 1.0)
    assert _leak(refined, 8) < _leak(ica_only, 8) / 3
    assert refined.log_prob(test).mean() > ica_only.log_prob(test).mean() + 0.01


def test_the_pair_noise_covers_every_combination_of_the_modes():
    """KL(data ‖ q) per 2D copy at D = 8 is what the mixture reaches in the plane; one mixture over all eight
    coordinates (the gmm noise) cannot place a component on each of 8⁴ modes and is several times worse."""
    in_the_plane = _kl_per_copy("8gaussians", 2, "gmm")
    assert _kl_per_copy("8gaussians", 8) == pytest.approx(in_the_plane, abs=0.05)
    assert _kl_per_copy("8gaussians", 8, "gmm") > 3 * in_the_plane


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="D even"):
        fit_pair_mixture(torch.randn(100, 3))
    with pytest.raises(ValueError, match="even dimension"):
        PairMixtureNoise.empty(3, dims=5)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        PairMixtureNoise(torch.zeros(4), torch.eye(4), torch.zeros(1, 3), torch.zeros(1, 3, 2),
                         torch.eye(2).repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="singular"):
        PairMixtureNoise(torch.zeros(2), torch.zeros(2, 2), torch.zeros(1, 1), torch.zeros(1, 1, 2),
                         torch.eye(2)[None, None])
