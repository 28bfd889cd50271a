"""Grid normalisation and the exact metrics."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from ebm.data import toy
from ebm.energy.evaluate import Grid, chunked, evaluate_density, grid_log_prob, log_normaliser


def test_grid_geometry():
    grid = Grid(2.0, 4)
    assert grid.spacing == 1.0
    assert torch.equal(grid.axis(), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    points = grid.points()
    assert points.shape == (16, 2) and torch.equal(points[1], torch.tensor([-0.5, -1.5]))  # x₁ varies fastest
    assert Grid.covering(torch.tensor([[3.2, -1.0]])).bound == 4.5


def test_normaliser_is_zero_for_a_normalised_gaussian():
    gaussian = MultivariateNormal(torch.tensor([0.3, -0.2]), torch.tensor([[1.0, 0.4], [0.4, 0.6]]))
    grid = Grid(8.0, 256)
    log_z, check = log_normaliser(grid_log_prob(gaussian.log_prob, grid), grid)
    assert abs(log_z) < 1e-6 and check < 1e-6
    shifted, _ = log_normaliser(grid_log_prob(lambda x: gaussian.log_prob(x) + 1.5, grid), grid)
    assert shifted == pytest.approx(1.5, abs=1e-6)


def test_grid_check_flags_a_coarse_grid():
    narrow = MultivariateNormal(torch.tensor([0.01, 0.02]), 0.02**2 * torch.eye(2))
    grid = Grid(1.0, 32)  # spacing 0.0625 ≫ std 0.02
    _, check = log_normaliser(grid_log_prob(narrow.log_prob, grid), grid)
    assert check > 0.1


def test_chunked_equals_unchunked():
    f = MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob
    x = torch.randn(1000, 2)
    assert torch.equal(chunked(f, x, chunk=7), f(x))


def test_exact_density_scores_zero_kl():
    """The data density itself as the model: KL 0, normaliser 0, NLL = entropy."""
    test = toy.sample("8gaussians", 20_000, torch.Generator().manual_seed(0))
    metrics = evaluate_density(lambda x: toy.log_prob("8gaussians", x).float(), test, "8gaussians", resolution=256)
    assert metrics["normaliser_error"] < 1e-4
    assert abs(metrics["kl"]) < 1e-4 and metrics["test_nll"] == pytest.approx(metrics["entropy"], abs=1e-4)


def test_kl_of_a_shifted_model_matches_closed_form():
    """Model N(δ, σ²I) against the single-Gaussian limit: a known KL for a known shift."""
    test = toy.sample("8gaussians", 50_000, torch.Generator().manual_seed(0))
    wrong_c = lambda x: toy.log_prob("8gaussians", x).float() + 0.25  # noqa: E731 - an unnormalised model
    metrics = evaluate_density(wrong_c, test, "8gaussians", resolution=256)
    assert metrics["log_normaliser"] == pytest.approx(0.25, abs=1e-4)
    assert abs(metrics["kl"]) < 1e-4  # grid normalisation removes a wrong c before scoring
    assert math.isfinite(metrics["kl_stderr"])
