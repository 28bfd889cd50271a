"""Normalisation over the whole plane (box plus rings) and the exact metrics, against closed forms."""

import math

import pytest
import torch
from scipy import integrate
from torch.distributions import MultivariateNormal

from ebm.data import toy
from ebm.energy.evaluate import MAX_RINGS, Grid, chunked, density_metrics, evaluate_density, grid_log_prob
from ebm.energy.noise import make_noise


def _covering_grid(dataset: str, resolution: int) -> Grid:
    return Grid.covering(toy.sample(dataset, 10_000, torch.Generator().manual_seed(0)), resolution)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def _gaussian_box_mass(mean: torch.Tensor, cov: torch.Tensor, bound: float) -> float:
    """P(X ∈ [−B, B]²) for X ~ N(mean, cov): ∫ over x₁ of N(x₁) · P(x₂ in range | x₁), by quadrature."""
    m1, m2 = mean.double().tolist()
    s11, s12, s22 = cov[0, 0].item(), cov[0, 1].item(), cov[1, 1].item()
    conditional_std = math.sqrt(s22 - s12**2 / s11)

    def integrand(t: float) -> float:
        m = m2 + s12 / s11 * (t - m1)
        inside = _normal_cdf((bound - m) / conditional_std) - _normal_cdf((-bound - m) / conditional_std)
        return math.exp(-((t - m1) ** 2) / (2 * s11)) / math.sqrt(2 * math.pi * s11) * inside

    return integrate.quad(integrand, -bound, bound, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


def test_grid_geometry():
    grid = Grid(2.0, 4)
    assert grid.spacing == 1.0
    assert torch.equal(grid.axis(), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    points = grid.points()
    assert points.shape == (16, 2) and torch.equal(points[1], torch.tensor([-0.5, -1.5]))  # x₁ varies fastest
    assert Grid.covering(torch.tensor([[3.2, -1.0]])).bound == 4.5


def test_chunked_equals_unchunked():
    f = MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob
    x = torch.randn(1000, 2)
    assert torch.equal(chunked(f, x, chunk=7), f(x))


@pytest.mark.parametrize(
    "mean, std", [((0.5, 0.5), 0.3), ((-4.0, 3.0), 1.0), ((1.0, -2.0), 3.0), ((-6.0, 2.0), 10.0), ((3.0, 1.0), 100.0)]
)
def test_normalised_gaussian_counts_all_its_mass(mean, std):
    """N(μ, σ²I) integrates to 1 however much of it lies outside the data box; the outside mass is
    1 − Π_i [Φ((B − μ_i)/σ) − Φ((−B − μ_i)/σ)]."""
    grid = _covering_grid("8gaussians", 512)
    gaussian = MultivariateNormal(torch.tensor(mean), std**2 * torch.eye(2))
    metrics = density_metrics(gaussian.log_prob, grid, torch.zeros(1, 2))
    b = grid.bound
    inside = math.prod(_normal_cdf((b - m) / std) - _normal_cdf((-b - m) / std) for m in mean)
    assert metrics["mass_converged"] and abs(metrics["log_normaliser"]) <= 1e-3
    assert metrics["mass_outside"] == pytest.approx(1 - inside, abs=1e-4)
    assert metrics["log_normaliser_box"] == pytest.approx(math.log(inside), abs=1e-4)
    assert abs(metrics["log_normaliser"]) <= metrics["grid_check"] + 1e-6  # the check bounds the actual error


@pytest.mark.parametrize("dataset, noise_name", [("8gaussians", "gmm"), ("checkerboard", "fitted")])
def test_fitted_noise_counts_all_its_mass(dataset, noise_name):
    """Noises (the training defaults, covariances × 1.5) that a box-only grid saw as log Z = −0.020 (gmm,
    8gaussians) and −0.162 (fitted Gaussian, checkerboard): log Z = 0, and the mass outside the box is
    that of the mixture's components."""
    grid = _covering_grid(dataset, 512)
    noise = make_noise(noise_name, toy.sample(dataset, 2000, torch.Generator().manual_seed(1)))
    metrics = density_metrics(noise.log_prob, grid, torch.zeros(1, 2))
    covariances = noise.scale_tril.double() @ noise.scale_tril.double().mT  # (K, 2, 2)
    weights = noise.logits.double().softmax(0).tolist()
    components = zip(weights, noise.loc, covariances, strict=True)
    inside = sum(w * _gaussian_box_mass(m, c, grid.bound) for w, m, c in components)
    assert metrics["mass_converged"] and abs(metrics["log_normaliser"]) <= 1e-3
    assert metrics["mass_outside"] == pytest.approx(1 - inside, abs=1e-4)


@pytest.mark.parametrize("shift, std", [((0.5, -0.3), 1.5), ((-1.0, 0.5), 0.8)])
def test_kl_and_nll_match_closed_form(shift, std):
    """Data N(0, I), model N(δ, s²I) with a wrong constant: KL = ½[2/s² + |δ|²/s² − 2 + 4 ln s] and
    cross-entropy E[−log N(x; δ, s²I)] = log(2πs²) + (2 + |δ|²)/(2s²), whatever the constant."""
    test = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(2))
    data_log_prob = -0.5 * (test.double() ** 2).sum(1) - math.log(2 * math.pi)  # (N,)
    model = MultivariateNormal(torch.tensor(shift), std**2 * torch.eye(2))
    offset = 0.4  # the model is off by a constant, which the normaliser must remove
    metrics = density_metrics(lambda x: model.log_prob(x) + offset, Grid.covering(test, 128), test, data_log_prob)
    d2 = sum(s * s for s in shift)
    kl = 0.5 * (2 / std**2 + d2 / std**2 - 2 + 4 * math.log(std))
    cross_entropy = math.log(2 * math.pi * std**2) + (2 + d2) / (2 * std**2)
    assert metrics["log_normaliser"] == pytest.approx(offset, abs=1e-3)
    assert abs(metrics["kl"] - kl) < min(4 * metrics["kl_stderr"], 0.01)
    nll_stderr = model.log_prob(test).double().std().item() / math.sqrt(len(test))
    assert abs(metrics["test_nll"] - cross_entropy) < 4 * nll_stderr


def test_growing_model_is_not_normalisable():
    """log p(x) = ½‖x‖ has infinite mass: no finite number may be reported for it."""
    test = torch.randn(100, 2)
    grid = Grid(3.0, 32)
    metrics = density_metrics(lambda x: 0.5 * x.norm(dim=1), grid, test, torch.zeros(100, dtype=torch.float64))
    assert metrics["mass_converged"] is False
    assert metrics["outer_bound"] == grid.bound * 2**MAX_RINGS
    assert metrics["log_normaliser"] == math.inf
    assert metrics["normaliser_error"] == metrics["test_nll"] == metrics["kl"] == math.inf
    assert metrics["mass_outside"] == 1.0


def test_tail_beyond_the_rings_is_not_truncated():
    """The bivariate Cauchy density (2π)⁻¹(1 + ‖x‖²)^(−3/2) keeps ~1/r of its mass beyond radius r, more than
    10⁻⁷ of it even beyond 1024·B: reported as unconverged, not as a truncated log Z just below 0."""
    metrics = density_metrics(
        lambda x: -1.5 * torch.log1p((x**2).sum(1)) - math.log(2 * math.pi), Grid(5.0, 32), torch.zeros(1, 2)
    )
    assert metrics["mass_converged"] is False and metrics["normaliser_error"] == math.inf


def test_mass_beyond_the_box_is_found():
    """A narrow Gaussian at distance 3B from the centre: the box holds none of it, the rings all of it."""
    grid = Grid(5.0, 128)
    far = MultivariateNormal(torch.tensor([0.0, -3 * grid.bound]), 0.5**2 * torch.eye(2))
    metrics = density_metrics(far.log_prob, grid, torch.zeros(1, 2))
    assert metrics["mass_converged"] and metrics["normaliser_error"] <= 1e-3
    assert metrics["mass_outside"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["outer_bound"] >= 4 * grid.bound


def test_resolution_that_is_no_multiple_of_eight():
    """An even resolution that does not split into aligned rings (50) still sums a broad off-centre Gaussian."""
    gaussian = MultivariateNormal(torch.tensor([2.0, -1.0]), 3.0**2 * torch.eye(2))
    metrics = density_metrics(gaussian.log_prob, Grid(5.0, 50), torch.zeros(1, 2))
    assert metrics["mass_outside"] > 0.1 and abs(metrics["log_normaliser"]) <= 1e-3


def test_grid_check_flags_a_coarse_grid():
    narrow = MultivariateNormal(torch.tensor([0.01, 0.02]), 0.02**2 * torch.eye(2))
    coarse = density_metrics(narrow.log_prob, Grid(1.0, 32), torch.zeros(1, 2))  # spacing 0.0625 ≫ std 0.02
    fine = density_metrics(narrow.log_prob, Grid(1.0, 512), torch.zeros(1, 2))  # spacing 0.0039
    assert coarse["grid_check"] > 0.1 and fine["grid_check"] < 1e-4


def test_box_values_from_the_caller_are_used():
    """The caller's (R, R) image of the model on the grid stands in for the box: a copy raised by log 2
    doubles the box's mass."""
    gaussian = MultivariateNormal(torch.zeros(2), torch.eye(2))
    grid = Grid(6.0, 64)
    image = grid_log_prob(gaussian.log_prob, grid)
    metrics = density_metrics(gaussian.log_prob, grid, torch.zeros(1, 2), box_values=image + math.log(2))
    assert metrics["log_normaliser_box"] == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(ValueError, match="box_values"):
        density_metrics(gaussian.log_prob, grid, torch.zeros(1, 2), box_values=image[1:])


def test_the_model_sees_only_float32_points():
    """The model is evaluated in float32 (float64 never reaches the training device; MPS has none)."""

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32
        return MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob(x)

    assert density_metrics(log_prob, Grid(4.0, 32), torch.zeros(5, 2, dtype=torch.float64))["mass_converged"]


def test_exact_density_scores_zero_kl():
    """The data density itself as the model: KL 0, normaliser 0, NLL = entropy."""
    test = toy.sample("8gaussians", 20_000, torch.Generator().manual_seed(0))
    metrics = evaluate_density(lambda x: toy.log_prob("8gaussians", x).float(), test, "8gaussians", resolution=256)
    assert metrics["normaliser_error"] < 1e-4
    assert abs(metrics["kl"]) < 1e-4 and metrics["test_nll"] == pytest.approx(metrics["entropy"], abs=1e-4)


def test_grid_normalisation_removes_a_wrong_constant():
    """log p_data + 0.25 as the model: log Z = 0.25 is found and removed before scoring, so KL stays 0."""
    test = toy.sample("8gaussians", 20_000, torch.Generator().manual_seed(0))
    data_log_prob = toy.log_prob("8gaussians", test)
    metrics = evaluate_density(
        lambda x: toy.log_prob("8gaussians", x).float() + 0.25, test, data_log_prob=data_log_prob, resolution=256
    )
    assert metrics["log_normaliser"] == pytest.approx(0.25, abs=1e-4)
    assert abs(metrics["kl"]) < 1e-4 and math.isfinite(metrics["kl_stderr"])


def test_bad_input_is_refused():
    f = MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob
    test = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="not both"):
        evaluate_density(f, test, "8gaussians", data_log_prob=torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="test_points"):
        density_metrics(f, Grid(2.0, 8), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="data_log_prob"):
        density_metrics(f, Grid(2.0, 8), test, torch.zeros(9, dtype=torch.float64))
