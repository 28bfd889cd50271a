"""Toy 2D distributions: sampler contracts, sampler statistics, and exact densities."""

import functools
import math

import pytest
import torch
from sklearn import datasets as skdatasets
from torch import Tensor

from ebm.data import toy
from ebm.energy.evaluate import Grid


@functools.cache
def _grid_mass(name: str, bound: float = 5.5, resolution: int = 110) -> tuple[Tensor, Grid]:
    """Exact log-density on a 0.1-spaced grid over [−5.5, 5.5]² (cached: the quadratures cost seconds).

    The box holds all eight sets' mass: the farthest reach is swissroll's (its curve ends at radius
    0.25·4.5π ≈ 3.53, blurred by 0.125); moons span [−3, 3] × [−1.5, 1.5] plus a blur of 0.1.
    """
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
    assert toy.log_prob(name, torch.zeros(0, 2)).shape == (0,)


def test_dataset_name_sets():
    assert toy.REFERENCE_DATASETS == ("8gaussians", "2spirals", "checkerboard", "rings", "pinwheel")
    assert toy.EXACT_DATASETS == toy.TOY_DATASETS
    assert set(toy.TOY_DATASETS) == set(toy.REFERENCE_DATASETS) | {"moons", "circles", "swissroll"}


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="checkerboard.*pinwheel"):
        toy.sample("spiral", 10)
    with pytest.raises(ValueError, match="checkerboard.*swissroll"):
        toy.log_prob("spiral", torch.zeros(3, 2))
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


def test_checkerboard_float32_points_stay_in_their_cells():
    """DESIGN.md's draws x₁ = 4U − 2, B, U' (in this order) put the point in cell (⌊x₁⌋, (⌊x₁⌋ mod 2) − 2B).

    With seed 6, one of the 10⁶ points, x₂ = 1.99999994 in float64, rounds to the cell edge 2.0 in float32
    (an odd cell, log p = −inf); every returned float32 point must still lie in its own half-open cell.
    """
    n, seed = 1_000_000, 6
    g = torch.Generator().manual_seed(seed)
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    b = torch.randint(2, (n,), generator=g, dtype=torch.float64)
    u2 = torch.rand(n, generator=g, dtype=torch.float64)
    col = torch.floor(x1)
    cells = torch.stack([col, torch.remainder(col, 2) - 2 * b], dim=1)  # (n, 2)
    exact = 2 * torch.stack([x1, u2 - 2 * b + torch.remainder(col, 2)], dim=1)  # the formula, in float64
    assert (torch.floor(exact.float().double() / 2) != cells).any(), "seed no longer puts a point on an edge"

    x = toy.sample("checkerboard", n, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.floor(x.double() / 2), cells)
    assert (x.double() - exact).abs().max() < 2**-20  # float32 rounding, and at most one spacing of clamping
    assert torch.isfinite(toy.log_prob("checkerboard", x)).all()


def test_rings_radii():
    x = toy.sample("rings", 40_000, torch.Generator().manual_seed(0))
    radius = x.norm(dim=1)
    nearest = torch.tensor(toy.RING_RADII)[(radius[:, None] - torch.tensor(toy.RING_RADII)).abs().argmin(1)]
    assert (radius - nearest).std() == pytest.approx(0.08, abs=0.005)
    assert torch.bincount((nearest * 4).long()).float()[[3, 6, 9, 12]].div(len(x)).sub(0.25).abs().max() < 0.01


def _pinwheel_map(f: Tensor, arm: int) -> Tensor:
    """DESIGN.md's pinwheel map: a = 2πc/5 + 0.25·exp f₁, x = 2·(f₁ cos a + f₂ sin a, −f₁ sin a + f₂ cos a)."""
    a = 2 * math.pi * arm / 5 + 0.25 * torch.exp(f[0])
    return 2 * torch.stack([f[0] * torch.cos(a) + f[1] * torch.sin(a), -f[0] * torch.sin(a) + f[1] * torch.cos(a)])


def test_pinwheel_arms_turn_as_the_formula_says():
    """On an arm's centre line (f₂ = 0, f₁ = ‖x‖/2) the formula puts x at the polar angle −2πc/5 − 0.25·e^{‖x‖/2}.

    So the angle plus 0.25·e^{‖x‖/2}, taken modulo 2π/5, is near 0 (spread by f₂/f₁ ≈ 0.1); for the mirror
    image (a rotation by +a) it is the angle minus that term that is near 0 instead.
    """
    x = toy.sample("pinwheel", 20_000, torch.Generator().manual_seed(0)).double()
    angle, turn = torch.atan2(x[:, 1], x[:, 0]), 0.25 * torch.exp(x.norm(dim=1) / 2)
    period = 2 * math.pi / 5

    def mean_wrapped(v: Tensor) -> float:
        return (torch.remainder(v + period / 2, period) - period / 2).abs().mean().item()

    assert mean_wrapped(angle + turn) < 0.12  # ≈ 0.09
    assert mean_wrapped(angle - turn) > 0.2  # ≈ 0.27; uniform angles would give period/4 ≈ 0.31


def test_pinwheel_density_is_the_change_of_variables_of_the_formula():
    """log p(x(f)) = log N(f; (1, 0), diag(0.3², 0.1²)) − log 5 − log |det ∂x/∂f|, the Jacobian by autograd.

    At these f (near the arm's centre, f₁ ≥ 1) the other arms and preimages add less than 1e-9, and they
    can only add. A mirrored density, or the Jacobian 4·(1 − 0.25·e^{f₁}f₂) of the mirror map, fails.
    """
    mean, std = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.3, 0.1], dtype=torch.float64)
    normal = torch.distributions.Normal(mean, std)
    for arm in range(5):
        for f1 in (1.0, 1.3, 1.6):
            for f2 in (-0.2, -0.1, 0.0, 0.1, 0.2):
                f = torch.tensor([f1, f2], dtype=torch.float64)
                x = _pinwheel_map(f, arm)
                jacobian = torch.autograd.functional.jacobian(lambda v, c=arm: _pinwheel_map(v, c), f)  # (2, 2)
                expected = normal.log_prob(f).sum() - math.log(5) - torch.linalg.det(jacobian).abs().log()
                excess = (toy.log_prob("pinwheel", x[None])[0] - expected).item()
                assert -1e-9 < excess < 1e-6, (arm, f1, f2, excess)


def _blurred_points_density(x: Tensor, points: Tensor, weights: Tensor, std: float) -> Tensor:
    """Σ_i weights_i·N(x; points_i, std²·I) / Σ_i weights_i: (N, 2), (M, 2), (M,) → (N,)."""
    kernel = torch.exp(-torch.cdist(x, points).square() / (2 * std**2)) / (2 * math.pi * std**2)  # (N, M)
    return kernel @ weights / weights.sum()


def _trapezoid_weights(n: int, arcs: int) -> Tensor:
    """Weights of the trapezoid rule over ``arcs`` runs of n/arcs evenly spaced points that include both ends."""
    weights = torch.ones(arcs, n // arcs, dtype=torch.float64)
    weights[:, [0, -1]] = 0.5
    return weights.reshape(-1)


def _moons_oracle(x: Tensor) -> Tensor:
    """scikit-learn's noiseless moons (2·10⁵ evenly spaced points, ends included), moved by −(0.5, 0.25), ×2,
    blurred by 2·0.05, weighted by the trapezoid rule along each arc."""
    curve = torch.from_numpy(skdatasets.make_moons(200_000, shuffle=False)[0])  # (M, 2): upper arc, then lower
    points = 2 * (curve - torch.tensor([0.5, 0.25], dtype=torch.float64))
    return _blurred_points_density(x, points, _trapezoid_weights(200_000, 2), 0.1)


def _circles_oracle(x: Tensor) -> Tensor:
    """scikit-learn's noiseless circles (factor 0.5, 2·10⁵ evenly spaced points), ×3, blurred by 3·0.05."""
    curve = torch.from_numpy(skdatasets.make_circles(200_000, shuffle=False, factor=0.5)[0])
    return _blurred_points_density(x, 3 * curve, torch.ones(200_000, dtype=torch.float64), 0.15)


def _swissroll_oracle(x: Tensor) -> Tensor:
    """make_swiss_roll's t = 1.5π(1 + 2U) at 2·10⁵ evenly spaced U (midpoints), curve 0.25·(t cos t, t sin t),
    blurred by 0.25·0.5."""
    t = 1.5 * math.pi * (1 + 2 * (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000)
    points = 0.25 * t[:, None] * torch.stack([t.cos(), t.sin()], dim=1)
    return _blurred_points_density(x, points, torch.ones(200_000, dtype=torch.float64), 0.125)


def _2spirals_oracle(x: Tensor) -> Tensor:
    """DESIGN.md's 2spirals at 5·10⁴ evenly spaced U (midpoints): each coordinate ±(c_i(t) + U_i/2)/3 + 0.1·z."""
    t = 3 * math.pi * torch.sqrt((torch.arange(50_000, dtype=torch.float64) + 0.5) / 50_000)
    curve = torch.stack([-t.cos() * t, t.sin() * t], dim=1) / 3  # (M, 2)
    density = torch.zeros(len(x), dtype=torch.float64)
    for sign in (1.0, -1.0):
        y = sign * x[:, None, :] - curve  # (N, M, 2): the box U_i/6 + 0.1·z must reach y
        box = (torch.special.ndtr(y / 0.1) - torch.special.ndtr((y - 1 / 6) / 0.1)) * 6  # (N, M, 2)
        density += 0.5 * box.prod(dim=2).mean(dim=1)
    return density


@pytest.mark.parametrize(
    "name, oracle, ends",
    [
        ("moons", _moons_oracle, [[1.05, -0.55], [-3.0, -0.45], [-1.1, 0.55], [3.0, 0.6]]),
        ("circles", _circles_oracle, [[0.0, 0.0], [2.9, 0.1]]),
        ("swissroll", _swissroll_oracle, [[0.05, -1.25], [-0.05, 3.6], [0.1, -1.05]]),
        ("2spirals", _2spirals_oracle, [[3.25, 0.1], [-3.2, -0.05], [0.0, 0.0]]),
    ],
)
def test_curve_density_matches_direct_integration(name, oracle, ends):
    """log_prob vs the defining integral over the curve parameter, by a brute-force sum far finer than the
    quadrature, at samples and next to the curve's ends (where the quadrature is least accurate)."""
    samples = toy.sample(name, 16, torch.Generator().manual_seed(2)).double()
    x = torch.cat([samples, torch.tensor(ends, dtype=torch.float64)])
    assert torch.allclose(toy.log_prob(name, x), oracle(x).log(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", toy.EXACT_DATASETS)
def test_exact_density_integrates_to_one(name):
    log_p, grid = _grid_mass(name)
    mass = torch.exp(log_p).sum() * grid.spacing**2
    assert mass.item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("name", toy.EXACT_DATASETS)
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


# ------------------------------------------------------------------------------------- D dimensions

D_SETS = ("8gaussians", "checkerboard", "rings", "pinwheel")


def test_rotation_is_a_fixed_orthogonal_matrix_and_the_identity_in_2d():
    assert torch.equal(toy.rotation(2), torch.eye(2, dtype=torch.float64))
    for dims in (4, 8, 32):
        q = toy.rotation(dims)
        assert q.shape == (dims, dims) and q.dtype == torch.float64
        torch.testing.assert_close(q @ q.T, torch.eye(dims, dtype=torch.float64), atol=1e-12, rtol=0)
        assert torch.equal(q, toy.rotation(dims))  # fixed: the same on every call
        assert (q - torch.eye(dims, dtype=torch.float64)).abs().max() > 0.1  # a real rotation, not the axes
    q = toy.rotation(4)
    q.zero_()  # the caller's copy: the module's matrix is unchanged
    torch.testing.assert_close(toy.rotation(4) @ toy.rotation(4).T, torch.eye(4, dtype=torch.float64))


@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_sample_contract_in_d_dimensions(name):
    for n in (0, 1, 7):
        x = toy.sample(name, n, torch.Generator().manual_seed(0), dims=6)
        assert x.shape == (n, 6) and x.dtype == torch.float32 and torch.isfinite(x).all()
    a = toy.sample(name, 300, torch.Generator().manual_seed(3), dims=4)
    assert torch.equal(a, toy.sample(name, 300, torch.Generator().manual_seed(3), dims=4))
    assert torch.equal(toy.sample(name, 300, torch.Generator().manual_seed(3), dims=2),
                       toy.sample(name, 300, torch.Generator().manual_seed(3)))
    assert toy.log_prob(name, torch.zeros(0, 4)).shape == (0,)


@pytest.mark.parametrize("dims", (4, 8))
@pytest.mark.parametrize("name", D_SETS)
def test_unrotated_pairs_are_independent_draws_of_the_2d_distribution(name, dims):
    """x = Q·y: the pairs of y = Qᵀx each follow the 2D density (binned as in test_exact_density_matches_samples)
    and are uncorrelated with each other, in the coordinates and in their squares."""
    n = 30_000
    y = toy.sample(name, n, torch.Generator().manual_seed(4), dims=dims).double() @ toy.rotation(dims)  # (n, D)
    log_p, grid = _grid_mass(name)
    bins = 22
    binned = (torch.exp(log_p) * grid.spacing**2).reshape(bins, 5, bins, 5).sum((1, 3))
    edges = torch.linspace(-grid.bound, grid.bound, bins + 1, dtype=torch.float64)
    for pair in y.reshape(n, dims // 2, 2).unbind(dim=1):
        hist = torch.histogramdd(pair[:, [1, 0]].contiguous(), bins=[edges, edges]).hist / n
        assert 0.5 * (hist - binned).abs().sum() < 0.035  # sampling noise alone gives ≈ 0.02
    for values in (y, y.square()):
        corr = torch.corrcoef(values.T)
        across = torch.block_diag(*[torch.ones(2, 2)] * (dims // 2)) == 0  # entries of two different pairs
        assert corr[across].abs().max() < 5 / math.sqrt(n)


@pytest.mark.parametrize("dims", (4, 8))
@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_log_prob_is_the_sum_of_the_pairs_2d_log_densities(name, dims):
    g = torch.Generator().manual_seed(5)
    x = torch.cat([toy.sample(name, 40, g, dims=dims).double(), 2 * torch.randn(10, dims, generator=g).double()])
    q = toy.rotation(dims)
    pairs = [(x @ q[:, 2 * j : 2 * j + 2]) for j in range(dims // 2)]  # y_j = (Qᵀx)_{2j, 2j+1}, each (N, 2)
    expected = sum(toy.log_prob(name, pair) for pair in pairs)
    torch.testing.assert_close(toy.log_prob(name, x), expected, atol=1e-9, rtol=0)
    assert torch.isfinite(toy.log_prob(name, x[:40])).all()


@pytest.mark.parametrize("name", ("8gaussians", "checkerboard", "rings"))
def test_d_dimensional_density_normalises_by_importance_sampling(name):
    """E_q[p/q] = ∫p = 1 at D = 4 with a broad Gaussian q, within five Monte Carlo standard errors."""
    n, std = 200_000, 2.5
    q = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(4, dtype=torch.float64), std), 1)
    x = q.sample((n,))
    weights = torch.exp(toy.log_prob(name, x) - q.log_prob(x))  # (n,)
    se = weights.std().item() / math.sqrt(n)
    assert se < 0.03
    assert weights.mean().item() == pytest.approx(1.0, abs=5 * se)


def test_checkerboard_points_keep_a_finite_density_through_the_float32_rotation(monkeypatch):
    """Pairs exactly on their squares' edges, rotated to D = 32 and rounded to float32, come back inside."""
    def on_the_edges(n, g):
        x = toy._sample_checkerboard(n, g).double()
        lo = 2 * torch.floor(x / 2)
        return torch.where(torch.rand(n, 2, generator=g) < 0.5, lo, lo + 2 - 1e-12)

    monkeypatch.setitem(toy._SAMPLERS, "checkerboard", on_the_edges)
    x = toy.sample("checkerboard", 2000, torch.Generator().manual_seed(6), dims=32)
    assert torch.isfinite(toy.log_prob("checkerboard", x)).all()


@pytest.mark.parametrize("dims", (0, 3, -2, 2.0, True))
def test_bad_dims_are_rejected(dims):
    with pytest.raises(ValueError, match="dims must be an even integer"):
        toy.sample("rings", 10, dims=dims)
    with pytest.raises(ValueError, match="even integer"):
        toy.rotation(dims)


def test_log_prob_rejects_an_odd_dimension():
    with pytest.raises(ValueError, match="D even"):
        toy.log_prob("rings", torch.zeros(3, 5))
