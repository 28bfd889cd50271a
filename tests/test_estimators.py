"""The estimators: closed forms, optima solved by hand, the CD gradient, FCE's flow step, options and state."""

import copy
import functools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ebm.data.toy import sample
from ebm.energy.estimators import ESTIMATORS, EstimatorOptions, empty_estimator, make_estimator
from ebm.energy.estimators.contrastive import silverman_bandwidth
from ebm.energy.estimators.contrastive_divergence import contrastive_divergence_loss
from ebm.energy.estimators.flow_contrastive import FlowContrastiveEstimation
from ebm.energy.estimators.score_matching import denoising_score_matching_loss, sliced_score_matching_loss
from ebm.energy.flow import FlowArchitecture, fit_flow_noise
from ebm.energy.langevin import langevin_sample
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import fixed_gaussian
from ebm.nce import exponential_nce_loss, ranking_nce_loss


class GaussianEnergy(nn.Module):
    """log p(x) = −½(x − μ)ᵀA(x − μ) − c, with a fixed precision A or a learnable diagonal one, A = diag(exp(a))."""

    def __init__(self, mu, precision=None, log_precision=None, log_z=0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float64))
        self.log_precision = None if log_precision is None else nn.Parameter(torch.as_tensor(log_precision).double())
        self.fixed_precision = None if precision is None else torch.as_tensor(precision, dtype=torch.float64)
        self.log_z = nn.Parameter(torch.tensor(float(log_z), dtype=torch.float64))

    @property
    def precision(self):
        return self.fixed_precision if self.log_precision is None else torch.diag(self.log_precision.exp())

    def log_prob(self, x):
        d = x.double() - self.mu  # (N, 2)
        return -0.5 * ((d @ self.precision) * d).sum(-1) - self.log_z


A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
M_DATA = torch.tensor([1.0, 0.0], dtype=torch.float64)
SIGMA_DATA = torch.diag(torch.tensor([0.5, 1.5], dtype=torch.float64))


# The same in D = 4: a precision with off-diagonal terms across the pairs, data N(m, Σ) with a full Σ.
A4 = torch.tensor([[2.0, 0.5, 0.2, 0.0], [0.5, 1.0, 0.0, 0.3], [0.2, 0.0, 1.5, 0.4], [0.0, 0.3, 0.4, 0.8]],
                  dtype=torch.float64)
MU4 = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
M_DATA4 = torch.tensor([1.0, 0.0, -0.5, 0.2], dtype=torch.float64)
SIGMA_DATA4 = torch.tensor([[0.5, 0.1, 0.0, 0.0], [0.1, 1.5, 0.2, 0.0], [0.0, 0.2, 0.8, -0.1], [0.0, 0.0, -0.1, 1.2]],
                           dtype=torch.float64)


def _gaussian_data(n, seed, mean=M_DATA, cov=SIGMA_DATA):
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mean + z @ torch.linalg.cholesky(cov).T


def _fit_term(a=A, mu=MU, mean=M_DATA, cov=SIGMA_DATA):
    """½ E‖A(x − μ)‖² for x ~ N(m, Σ): ½[tr(A²Σ) + ‖A(m − μ)‖²]."""
    return 0.5 * (torch.trace(a @ a @ cov) + (a @ (mean - mu)).square().sum()).item()


def _assert_mean_close(values, expected):
    se = values.std().item() / math.sqrt(len(values))
    assert abs(values.mean().item() - expected) < 5 * se, (values.mean().item(), expected, se)


# ------------------------------------------------------------------------------ score matching closed forms


def test_denoising_score_matching_equals_its_closed_form():
    # s(x̃) = −A(x̃ − μ), x̃ = x + σε: ½E‖−A(x − μ) + (I − σ²A)ε/σ‖² = fit term + tr((I − σ²A)²)/(2σ²).
    sigma, n = 0.5, 200_000
    model, x = GaussianEnergy(MU, precision=A), _gaussian_data(n, 0)
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    residual = torch.eye(2, dtype=torch.float64) - sigma**2 * A
    expected = _fit_term() + torch.trace(residual @ residual).item() / (2 * sigma**2)
    _assert_mean_close(denoising_score_matching_loss(model.log_prob, x, eps, sigma).detach(), expected)


def test_sliced_score_matching_equals_its_closed_form():
    # ½‖s‖² + vᵀ∇s v with ∇s = −A and E[vᵀAv] = tr A: fit term − tr A.
    n = 100_000
    model, x = GaussianEnergy(MU, precision=A), _gaussian_data(n, 2)
    v = torch.randn(n, 3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = _fit_term() - torch.trace(A).item()
    _assert_mean_close(sliced_score_matching_loss(model.log_prob, x, v).detach(), expected)


@pytest.mark.parametrize("name", ["dsm", "ssm"])
def test_score_matching_estimators_match_their_closed_forms(name):
    options = EstimatorOptions(dsm_sigma=0.5, ssm_projections=2)
    estimator, model = make_estimator(name, options), GaussianEnergy(MU, precision=A)
    x = _gaussian_data(100_000, 4)
    loss, _ = estimator.loss(model, x, torch.Generator().manual_seed(5))
    if name == "dsm":
        residual = torch.eye(2, dtype=torch.float64) - 0.25 * A
        expected = _fit_term() + torch.trace(residual @ residual).item() / 0.5
    else:
        expected = _fit_term() - torch.trace(A).item()
    per_point_sd = 5.0  # a bound on the per-point standard deviation (measured: 4.9 for dsm, 4.4 for ssm)
    assert abs(loss.item() - expected) < 5 * per_point_sd / math.sqrt(len(x))


@pytest.mark.parametrize("name", ["dsm", "ssm"])
def test_score_matching_estimators_match_their_closed_forms_in_4d(name):
    """The same closed forms with D = 4 noise and projections: dsm fit term + tr((I − σ²A)²)/(2σ²), ssm fit − tr A."""
    sigma, n = 0.5, 100_000
    estimator = make_estimator(name, EstimatorOptions(dsm_sigma=sigma, ssm_projections=2))
    model, x = GaussianEnergy(MU4, precision=A4), _gaussian_data(n, 4, M_DATA4, SIGMA_DATA4)
    loss, _ = estimator.loss(model, x, torch.Generator().manual_seed(5))
    fit = _fit_term(A4, MU4, M_DATA4, SIGMA_DATA4)
    residual = torch.eye(4, dtype=torch.float64) - sigma**2 * A4
    expected = fit + torch.trace(residual @ residual).item() / (2 * sigma**2) if name == "dsm" \
        else fit - torch.trace(A4).item()
    # the per-point standard deviation, from the per-point losses on fresh random numbers
    g = torch.Generator().manual_seed(6)
    per_point = (denoising_score_matching_loss(model.log_prob, x, torch.randn(n, 4, generator=g, dtype=torch.float64),
                                               sigma) if name == "dsm"
                 else sliced_score_matching_loss(model.log_prob, x, torch.randn(n, 2, 4, generator=g,
                                                                                  dtype=torch.float64)))
    assert abs(loss.item() - expected) < 5 * per_point.std().item() / math.sqrt(n)


# ---------------------------------------------------------------------- optima of ranking NCE and eNCE


P_STAR = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # the data distribution on {0, 1, 2}
Q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)  # the noise
DATA_ITEMS = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)  # exactly P_STAR: means over these are expectations
NOISE_ITEMS = torch.tensor([0, 1, 2, 2, 2])  # exactly Q


def _minimise(loss_of, theta):
    theta = theta.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        loss = loss_of(theta)
        loss.backward()
        return loss

    optimizer.step(closure)
    return theta.detach()


def test_exponential_nce_optimum_is_the_normalised_data_distribution():
    # Exact population loss on a discrete toy: the minimiser is θ = log p*, normaliser included.
    def loss_of(theta):
        ratio = theta - Q.log()
        return exponential_nce_loss(ratio[DATA_ITEMS], ratio[NOISE_ITEMS])

    theta = _minimise(loss_of, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(theta.exp(), P_STAR, atol=1e-6, rtol=0)
    # and its value there is the Bhattacharyya coefficient Σ √(p* q)
    assert loss_of(theta).item() == pytest.approx((P_STAR * Q).sqrt().sum().item(), abs=1e-10)


def test_ranking_nce_optimum_is_the_data_distribution_up_to_a_constant():
    # Each data item against every ordered pair of noise items (k = 2): the exact population loss.
    pairs = torch.cartesian_prod(NOISE_ITEMS, NOISE_ITEMS)  # (25, 2)
    targets = DATA_ITEMS.repeat_interleave(len(pairs))  # (250,)
    noise = pairs.repeat(len(DATA_ITEMS), 1)  # (250, 2)

    def loss_of(theta):
        ratio = theta - Q.log()
        return ranking_nce_loss(ratio[targets], ratio[noise]).mean()

    theta = _minimise(loss_of, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(theta.softmax(0), P_STAR, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name, dims", [(name, dims) for name in ("nce", "rnce", "ence", "cnce", "dsm", "ssm") for dims in (2, 4)]
    + [("mle", 2)],
)
def test_estimators_recover_a_gaussian(name, dims):
    # Data N(m*, I); model log p = −½‖x − μ‖² − c; noise N(0, 4I). With fixed data and a re-seeded generator
    # the loss is a deterministic function of (μ, c); its minimiser is μ ≈ m* (rnce without the log q
    # correction would give 4/3·m*), and for the estimators that learn log Z, c ≈ (D/2)·log 2π. Standard errors
    # of μ are at most about 0.025 (dsm: its minimiser is x̄ + (σ − 1/σ)·ε̄, so 1.5/√4000 at σ = 0.5).
    m_star = torch.tensor([1.0, -0.5, 0.5, 0.0][:dims], dtype=torch.float64)
    data = m_star + torch.randn(4000, dims, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    options = EstimatorOptions(noise_ratio=4, cnce_epsilon=0.5, dsm_sigma=0.5, mle_resolution=48)
    estimator = make_estimator(name, options, noise=fixed_gaussian(2.0, dims), fit_points=data)
    model = GaussianEnergy([0.0] * dims, precision=torch.eye(dims, dtype=torch.float64))
    optimizer = torch.optim.LBFGS(list(model.parameters()), max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss, _ = estimator.loss(model, data.float(), torch.Generator().manual_seed(7))
        loss.backward()
        return loss

    optimizer.step(closure)
    assert (model.mu.detach() - m_star).abs().max() < 0.12
    if estimator.learns_log_z:
        assert model.log_z.item() == pytest.approx(dims / 2 * math.log(2 * math.pi), abs=0.1)


# ------------------------------------------------------------------------ contrastive divergence and Langevin


def test_contrastive_divergence_with_exact_samples_has_the_likelihood_gradient():
    # Model N(μ, diag(e^{−a})). Negative log-likelihood gradients by hand:
    #   ∂/∂μ = −A(x̄ − μ),   ∂/∂a_i = ½ e^{a_i} mean (x_i − μ_i)² − ½   (the −½ is ∂ log Z / ∂a_i).
    model = GaussianEnergy([0.2, -0.1], log_precision=[0.3, -0.4])
    data = _gaussian_data(2000, 8)
    m = 400_000
    with torch.no_grad():
        std = (-0.5 * model.log_precision).exp()
        samples = model.mu + std * torch.randn(m, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    loss = contrastive_divergence_loss(model.log_prob(data), model.log_prob(samples))
    grad_mu, grad_a = torch.autograd.grad(loss, [model.mu, model.log_precision])
    with torch.no_grad():
        precision = model.log_precision.exp()
        expected_mu = -precision * (data.mean(0) - model.mu)
        expected_a = 0.5 * precision * (data - model.mu).square().mean(0) - 0.5
    # standard errors from the model samples: √(e^{a}/m) for μ, 1/√(2m) for a
    torch.testing.assert_close(grad_mu, expected_mu, atol=(5 * (precision / m).sqrt()).max().item(), rtol=0)
    torch.testing.assert_close(grad_a, expected_a, atol=5 / math.sqrt(2 * m), rtol=0)


@pytest.mark.parametrize("dims", (2, 4))
def test_langevin_chains_reach_the_target_gaussian(dims):
    # ULA on N(μ, diag(1/λ)) with step η has the stationary variance 1/(λ(1 − ηλ/2)) (Gaussian recursion).
    precision, eta = torch.tensor([2.0, 1.0, 1.5, 0.7][:dims], dtype=torch.float64), 0.02
    mean = torch.tensor([1.0, -2.0, 0.5, 0.0][:dims], dtype=torch.float64)
    target = GaussianEnergy(mean, log_precision=precision.log())
    start = torch.randn(4000, dims, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    x = langevin_sample(target.log_prob, start, steps=400, step_size=eta, generator=torch.Generator().manual_seed(11))
    variance = 1 / (precision * (1 - eta * precision / 2))
    # standard errors with 4000 chains: √(var/4000) ≤ 0.022 for the mean, var·√(2/4000) = 2.2% for the variance
    torch.testing.assert_close(x.mean(0), mean, atol=0.1, rtol=0)
    torch.testing.assert_close(x.var(0), variance, rtol=0.11, atol=0)


@pytest.mark.parametrize("dims", (2, 4))
def test_cd_chains_persist_between_steps(dims):
    points = sample("8gaussians", 100, torch.Generator().manual_seed(12), dims=dims)
    options = EstimatorOptions(cd_buffer=300, cd_steps=2, cd_reinit=0.0)
    estimator = make_estimator("cd", options, noise=fixed_gaussian(dims=dims))
    assert estimator.chains.shape == (300, dims)
    model = EnergyMLP(width=16, depth=2, dims=dims)
    estimator.loss(model, points, torch.Generator().manual_seed(26))
    first = estimator.chains.clone()
    estimator.loss(model, points, torch.Generator().manual_seed(27))
    moved = (estimator.chains != first).any(dim=1)
    assert moved.sum().item() == 100  # the batch's chains moved on from where they were; the others kept


# ------------------------------------------------------------------------------------------- FCE


@pytest.fixture(scope="module")
def eight_gaussians():
    return sample("8gaussians", 2000, torch.Generator().manual_seed(12))


def _small_fce(points, **kwargs):
    flow = fit_flow_noise(points, steps=20, architecture=FlowArchitecture(transforms=2, hidden=16, layers=1))
    return FlowContrastiveEstimation(flow, noise_ratio=1.0, **kwargs)


def test_fce_flow_step_lowers_the_value_for_a_fixed_energy(eight_gaussians):
    torch.manual_seed(13)
    model = EnergyMLP(width=16, depth=2)
    energy_before = copy.deepcopy(model.state_dict())
    estimator = _small_fce(eight_gaussians, threshold=0.01, lr=5e-3)
    estimator.flow_turn.fill_(True)
    batch = eight_gaussians[:512]

    def value():  # J with common random numbers
        with torch.no_grad():
            samples, log_q = estimator.flow.rsample_and_log_prob((512,), torch.Generator().manual_seed(14))
            return estimator._value(model, batch, estimator.flow.log_prob(batch), samples, log_q)[0].item()

    before = value()
    for i in range(10):
        loss, stats = estimator.loss(model, batch, torch.Generator().manual_seed(100 + i))
        assert loss is None and stats["flow_step"].item() == 1
    assert value() < before - 0.01
    for key, tensor in model.state_dict().items():  # the energy is untouched
        assert torch.equal(tensor, energy_before[key])


def test_fce_accuracy_rule_switches_on_the_threshold(eight_gaussians):
    model = EnergyMLP(width=16, depth=2)
    low = _small_fce(eight_gaussians, threshold=0.01)
    high = copy.deepcopy(low)
    high.threshold = 0.99
    for estimator, flow_second in ((low, True), (high, False)):
        loss, stats = estimator.loss(model, eight_gaussians[:256], torch.Generator().manual_seed(15))
        assert loss is not None and stats["flow_step"].item() == 0  # the first step is the energy's
        assert 0.01 < stats["accuracy"].item() < 0.99
        flow_before = copy.deepcopy(estimator.flow.state_dict())
        loss, _ = estimator.loss(model, eight_gaussians[:256], torch.Generator().manual_seed(16))
        assert (loss is None) == flow_second
        changed = any(not torch.equal(t, flow_before[k]) for k, t in estimator.flow.state_dict().items())
        assert changed == flow_second


def test_fce_both_rule_updates_flow_and_returns_the_energy_loss(eight_gaussians):
    model = EnergyMLP(width=16, depth=2)
    estimator = _small_fce(eight_gaussians, rule="both")
    flow_before = copy.deepcopy(estimator.flow.state_dict())
    loss, stats = estimator.loss(model, eight_gaussians[:256], torch.Generator().manual_seed(17))
    loss.backward()
    assert stats["flow_step"].item() == 1
    assert any(not torch.equal(t, flow_before[k]) for k, t in estimator.flow.state_dict().items())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fce_refuses_its_trained_flow_as_the_model_base(eight_gaussians):
    estimator = _small_fce(eight_gaussians)
    with pytest.raises(ValueError, match="frozen copy"):
        estimator.loss(EnergyMLP(16, 2, base=estimator.flow), eight_gaussians[:64])


# -------------------------------------------------------------------------------- grid likelihood, cnce


def test_grid_likelihood_of_a_normalised_model_is_its_negative_log_likelihood():
    model = GaussianEnergy([0.5, -0.5], precision=torch.eye(2, dtype=torch.float64), log_z=math.log(2 * math.pi))
    data = _gaussian_data(500, 18)
    estimator = make_estimator("mle", EstimatorOptions(mle_resolution=96), fit_points=data)
    loss, stats = estimator.loss(model, data, torch.Generator().manual_seed(19))
    assert abs(stats["log_normaliser"].item()) < 1e-3  # ∫ p = 1
    assert loss.item() == pytest.approx(-model.log_prob(data).mean().item(), abs=1e-3)


@pytest.mark.parametrize("dims", (2, 4))
def test_cnce_default_epsilon_is_silvermans_bandwidth(dims):
    # Silverman's rule for a Gaussian kernel in d dimensions: h = σ·(4/((d + 2)n))^(1/(d + 4)); d = 2: σ·n^(−1/6).
    points = 3.0 * torch.randn(10_000, dims, generator=torch.Generator().manual_seed(20))
    assert silverman_bandwidth(points) == pytest.approx(3.0 * (4 / ((dims + 2) * 10_000)) ** (1 / (dims + 4)),
                                                        rel=0.03)
    estimator = make_estimator("cnce", EstimatorOptions(cnce_epsilon=0.0), fit_points=points)
    assert estimator.epsilon.item() == pytest.approx(silverman_bandwidth(points), rel=1e-6)


# --------------------------------------------------------------------------- every estimator, any options


def _options(**kwargs):
    return EstimatorOptions(fce_pretrain_steps=5, cd_buffer=512, cd_steps=3, mle_resolution=16, **kwargs)


IN_ANY_D = tuple(name for name in ESTIMATORS if name != "mle")  # mle integrates over a 2D grid
CASES = [(name, 2) for name in ESTIMATORS] + [(name, 4) for name in IN_ANY_D]


@functools.cache
def _points(dims):
    return sample("8gaussians", 2000, torch.Generator().manual_seed(12), dims=dims)


@functools.cache
def _built(name, dims):
    """The estimator ``name`` in ``dims`` dimensions, built once against a fixed N(0, 4I) noise."""
    return make_estimator(name, _options(), noise=fixed_gaussian(2.0, dims), fit_points=_points(dims))


@pytest.mark.parametrize("name, dims", CASES)
def test_every_estimator_gives_finite_loss_and_gradients(name, dims):
    torch.manual_seed(21)
    model = EnergyMLP(width=16, depth=2, dims=dims)
    estimator = copy.deepcopy(_built(name, dims))
    loss, stats = estimator.loss(model, _points(dims)[:128], torch.Generator().manual_seed(22))
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss)
    assert all(v.dim() == 0 and torch.isfinite(v) and not v.requires_grad for v in stats.values())
    loss.backward()
    shifts = {"log_z", f"net.{len(model.net) - 1}.bias"}  # parameters that only add a constant to log p
    for parameter_name, parameter in model.named_parameters():
        if parameter_name in shifts and not estimator.learns_log_z:  # the constant cancels: no or zero gradient
            assert parameter.grad is None or parameter.grad.abs().item() < 1e-5
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
    if estimator.learns_log_z:
        assert model.log_z.grad.abs().item() > 0


@pytest.mark.parametrize("name, dims", CASES)
def test_state_round_trip_reproduces_the_next_losses(name, dims, tmp_path):
    torch.manual_seed(23)
    model, points = EnergyMLP(width=16, depth=2, dims=dims), _points(dims)
    options = _options(fce_rule="both")
    estimator = make_estimator(name, options, noise=fixed_gaussian(2.0, dims), fit_points=points)
    generator = torch.Generator().manual_seed(24)
    for i in range(3):  # evolve chains, flow and its optimiser
        estimator.loss(model, points[128 * i : 128 * (i + 1)], generator)
    torch.save(estimator.state_dict(), tmp_path / "estimator.pt")
    restored = empty_estimator(name, options, noise=fixed_gaussian(2.0, dims))
    restored.load_state_dict(torch.load(tmp_path / "estimator.pt", weights_only=True))
    state = generator.get_state()
    batches = points[512:640], points[640:768]
    losses = []
    for candidate in (estimator, restored):
        generator.set_state(state)
        losses.append([candidate.loss(model, batch, generator)[0].detach() for batch in batches])
    for original, again in zip(*losses, strict=True):
        assert torch.equal(original, again)


def test_fce_accuracy_rule_state_round_trips(eight_gaussians):
    estimator = _small_fce(eight_gaussians, threshold=0.01)
    estimator.loss(EnergyMLP(16, 2), eight_gaussians[:128], torch.Generator().manual_seed(25))
    restored = copy.deepcopy(estimator)
    restored.flow_turn.fill_(False)
    restored.load_state_dict(estimator.state_dict())
    assert restored.flow_turn.item() is True


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_ratio": 0.0}, "noise_ratio"),
        ({"noise_ratio": float("nan")}, "noise_ratio"),
        ({"cnce_epsilon": -0.1}, "cnce_epsilon"),
        ({"fce_rule": "sometimes"}, "accuracy, both"),
        ({"fce_threshold": 1.0}, "fce_threshold"),
        ({"fce_lr": 0.0}, "fce_lr"),
        ({"fce_pretrain_steps": 0}, "fce_pretrain_steps"),
        ({"dsm_sigma": -1.0}, "dsm_sigma"),
        ({"ssm_projections": 0}, "ssm_projections"),
        ({"cd_buffer": 2.5}, "cd_buffer"),
        ({"cd_steps": 0}, "cd_steps"),
        ({"cd_step_size": float("inf")}, "cd_step_size"),
        ({"cd_reinit": 1.5}, "cd_reinit"),
        ({"mle_resolution": 0}, "mle_resolution"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EstimatorOptions(**kwargs)


def test_mle_refuses_more_than_two_dimensions_and_names_the_others():
    others = "nce, rnce, ence, cnce, fce, dsm, ssm, cd"
    with pytest.raises(ValueError, match=f"2D grid.*{others}"):
        make_estimator("mle", fit_points=_points(4))
    estimator = make_estimator("mle", EstimatorOptions(mle_resolution=8), fit_points=_points(2))
    with pytest.raises(ValueError, match=f"2D grid.*{others}"):
        estimator.loss(EnergyMLP(8, 1, dims=4), _points(4)[:16])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda points: make_estimator("sgd", noise=fixed_gaussian()), "choose one of nce, rnce"),
        (lambda points: make_estimator("nce"), "noise module"),
        (lambda points: make_estimator("cd"), "noise module"),
        (lambda points: make_estimator("fce"), "fit_points"),
        (lambda points: make_estimator("mle"), "fit_points"),
        (lambda points: make_estimator("cnce"), "fit_points"),
        (lambda points: make_estimator("rnce", EstimatorOptions(noise_ratio=2.5), fixed_gaussian()), "whole number"),
        (lambda points: make_estimator("cnce", EstimatorOptions(noise_ratio=0.5), fit_points=points), "whole"),
        (lambda points: make_estimator("nce", noise=fixed_gaussian()).loss(None, torch.zeros(4, 3)), r"\(B, 2\)"),
        (lambda points: make_estimator("cd", noise=fixed_gaussian(dims=4)).loss(None, points), r"\(B, 4\)"),
        (lambda points: make_estimator("dsm").loss(None, torch.zeros(4)), "shape"),
        (lambda points: make_estimator("cd", noise=SimpleNamespace(sample=None, log_prob=None)), "integer dims"),
        (
            lambda points: make_estimator("cd", _options(), noise=fixed_gaussian()).loss(EnergyMLP(8, 1), points),
            "cd_buffer",
        ),
    ],
)
def test_bad_construction_or_input_raises(call, match, eight_gaussians):
    with pytest.raises(ValueError, match=match):
        call(eight_gaussians)
