"""Toy 2D distributions: sampler contracts, sampler statistics, and exact densities."""

import functools
import math

import pytest
import torch
from torch import Tensor

from ebm.data import toy
from ebm.energy.evaluate import Grid


@functools.cache
def _grid_mass(name: str, bound: float = 5.5, resolution: int = 110) -> tuple[Tensor, Grid]:
    """Exact log-density on a 0.1-spaced grid over [−5.5, 5.5]² (cached: the spiral and pinwheel cost seconds)."""
    grid = Grid(bound, resolution)
    log_p = toy.log_prob(name, grid.points()).reshape(resolution, resolution)
    return log_p, grid


@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_sample_contract(name):
    for n in (0, 1, 7, 1001):
        x = toy.sample(name, n, torch.Generator().manual_seed(0))
        assert x.shape == (n, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    a = toy.sample(name, 500, torch.Generator().manual_seed(3))
    b = toy.sample(name, 500, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert toy.sample(name, 2000, torch.Generator().manual_seed(0)).abs().max() < 6


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="checkerboard.*pinwheel"):
        toy.sample("spiral", 10)
    with pytest.raises(ValueError, match="no exact density"):
        toy.log_prob("moons", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shape"):
        toy.log_prob("rings", torch.zeros(3))


def test_8gaussians_statistics():
    x = toy.sample("8gaussians", 40_000, torch.Generator().manual_seed(0)).double()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    means = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
    k = torch.cdist(x, means).argmin(1)
    counts = torch.bincount(k, minlength=8) / len(x)
    assert (counts - 1 / 8).abs().max() < 0.01  # binomial std 0.0017
    residual = x - means[k]
    assert residual.mean(0).abs().max() < 0.01
    assert torch.allclose(residual.std(0), torch.full((2,), 0.5 / math.sqrt(2), dtype=torch.float64), atol=0.01)


def test_checkerboard_support_is_eight_squares():
    x = toy.sample("checkerboard", 40_000, torch.Generator().manual_seed(0))
    assert x.abs().max() <= 4
    cells = torch.floor(x / 2).long()
    assert ((cells.sum(1) % 2) == 0).all()  # only squares of even parity
    cell_id = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(cell_id, minlength=16) / len(x)
    assert (counts > 0).sum() == 8 and (counts[counts > 0] - 1 / 8).abs().max() < 0.01
    assert torch.isfinite(toy.log_prob("checkerboard", x)).all()
    assert toy.log_prob("checkerboard", torch.tensor([[1.0, -1.0], [5.0, 0.5]])).isinf().all()


def test_rings_radii():
    x = toy.sample("rings", 40_000, torch.Generator().manual_seed(0))
    radius = x.norm(dim=1)
    nearest = torch.tensor(toy.RING_RADII)[(radius[:, None] - torch.tensor(toy.RING_RADII)).abs().argmin(1)]
    assert (radius - nearest).std() == pytest.approx(0.08, abs=0.005)
    assert torch.bincount((nearest * 4).long()).float()[[3, 6, 9, 12]].div(len(x)).sub(0.25).abs().max() < 0.01


@pytest.mark.parametrize("name", toy.REFERENCE_DATASETS)
def test_exact_density_integrates_to_one(name):
    log_p, grid = _grid_mass(name)
    mass = torch.exp(log_p).sum() * grid.spacing**2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", toy.REFERENCE_DATASETS)
def test_exact_density_matches_samples(name):
    """Histogram of samples vs the density integrated over the same bins, and cross-entropy vs entropy."""
    log_p, grid = _grid_mass(name)
    density = torch.exp(log_p) * grid.spacing**2  # (R, R) cell masses, row = x₂
    bins = 22  # 0.5-wide bins, each 5 × 5 grid cells
    binned = density.reshape(bins, 5, bins, 5).sum((1, 3))
    x = toy.sample(name, 50_000, torch.Generator().manual_seed(1)).double()
    edges = torch.linspace(-grid.bound, grid.bound, bins + 1, dtype=torch.float64)
    hist = torch.histogramdd(x[:, [1, 0]], bins=[edges, edges]).hist / len(x)
    assert 0.5 * (hist - binned).abs().sum() < 0.03  # sampling noise alone gives ≈ 0.015
    entropy = -(density * torch.nan_to_num(log_p, neginf=0.0)).sum()
    cross_entropy = -toy.log_prob(name, x[:10_000]).mean()
    assert cross_entropy.item() == pytest.approx(entropy.item(), abs=0.04)  # ± 4 standard errors
