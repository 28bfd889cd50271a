"""The flow noise (2D and D = 4) is a normalised density, its samples follow it, fitting lowers held-out NLL, and it
round-trips."""

import math

import pytest
import torch

from ebm.data.toy import sample
from ebm.energy.flow import FlowArchitecture, FlowNoise, fit_flow_noise

SMALL = FlowArchitecture(transforms=2, hidden=16, layers=1, bins=8)


@pytest.fixture(scope="module")
def flow() -> FlowNoise:
    """A small flow fitted briefly to 8gaussians: far from the identity, not yet a good fit."""
    return fit_flow_noise(sample("8gaussians", 4000, torch.Generator().manual_seed(0)), steps=60, architecture=SMALL)


def _midpoint_grid(bound: float, resolution: int) -> tuple[torch.Tensor, float]:
    """Cell centres of a resolution² grid over [−bound, bound]², and the cell area."""
    h = 2 * bound / resolution
    a = -bound + h * (torch.arange(resolution) + 0.5)
    x1, x2 = torch.meshgrid(a, a, indexing="xy")
    return torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1), h * h


def test_density_integrates_to_one(flow):
    points, area = _midpoint_grid(bound=9.0, resolution=360)
    with torch.no_grad():
        log_integral = torch.logsumexp(flow.log_prob(points).double(), 0).item() + math.log(area)
    assert abs(log_integral) < 0.01


def test_sample_frequencies_match_the_density(flow):
    # Chi-square of 100k samples in 12 x 12 bins over [-4, 4]^2 (plus an "outside" bin) against the density's
    # mass in each bin, integrated by the midpoint rule on 10 x 10 points per bin.
    n, bins, sub = 100_000, 12, 10
    x = flow.sample((n,), torch.Generator().manual_seed(1))
    edges = torch.linspace(-4, 4, bins + 1)
    inside = (x.abs() < 4).all(dim=1)
    ix = torch.bucketize(x[inside].contiguous(), edges[1:-1])  # (n_in, 2) bin indices
    counts = torch.bincount(ix[:, 1] * bins + ix[:, 0], minlength=bins * bins).double()
    points, area = _midpoint_grid(bound=4.0, resolution=bins * sub)
    with torch.no_grad():
        density = flow.log_prob(points).double().exp().reshape(bins, sub, bins, sub) * area  # [row, ., col, .]
    mass = density.sum(dim=(1, 3)).reshape(-1)  # row-major: x2 bin, then x1 bin
    observed = torch.cat([counts, torch.tensor([float(n - inside.sum())])])
    expected = n * torch.cat([mass, (1 - mass.sum()).clamp(min=1e-12).reshape(1)])
    keep = expected > 5
    chi2 = ((observed - expected)[keep] ** 2 / expected[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_reparameterised_samples_carry_their_log_density(flow):
    x, log_q = flow.rsample_and_log_prob((500,), torch.Generator().manual_seed(2))
    torch.testing.assert_close(log_q, flow.log_prob(x), atol=1e-4, rtol=1e-4)  # inverse pass vs forward pass
    flow.requires_grad_(True)
    try:
        x, log_q = flow.rsample_and_log_prob((64,), torch.Generator().manual_seed(2))
        parameters = list(flow.parameters())
        through_points = torch.autograd.grad(x.square().sum(), parameters, retain_graph=True, allow_unused=True)
        through_density = torch.autograd.grad(log_q.sum(), parameters, allow_unused=True)
    finally:
        flow.requires_grad_(False)
    for grads in (through_points, through_density):  # both carry gradients to the flow's parameters
        assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2


def test_fitting_lowers_held_out_nll():
    g = torch.Generator().manual_seed(3)
    fit, held_out = sample("pinwheel", 4000, g), sample("pinwheel", 4000, g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # fit_flow_noise builds its initial weights under its seed: the same weights here
        initial = FlowNoise(fit.mean(0), fit.std(0), SMALL)
    fitted = fit_flow_noise(fit, steps=60, seed=0, architecture=SMALL)
    with torch.no_grad():
        before, after = -initial.log_prob(held_out).mean().item(), -fitted.log_prob(held_out).mean().item()
    assert after < before - 0.3


def test_sampling_follows_the_cpu_generator_and_leaves_the_global_one(flow):
    state = torch.get_rng_state()
    a = flow.sample((5, 3), torch.Generator().manual_seed(4))
    b = flow.sample((5, 3), torch.Generator().manual_seed(4))
    assert a.shape == (5, 3, 2) and torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_empty_flow_restores_a_checkpoint(flow, tmp_path):
    torch.save(flow.state_dict(), tmp_path / "flow.pt")
    restored = FlowNoise.empty(SMALL)
    restored.load_state_dict(torch.load(tmp_path / "flow.pt", weights_only=True))
    x = torch.randn(100, 2)
    assert torch.equal(restored.log_prob(x), flow.log_prob(x))
    assert not any(p.requires_grad for p in restored.parameters())


def test_fitted_flow_is_frozen(flow):
    assert not any(p.requires_grad for p in flow.parameters())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fit_flow_noise(torch.zeros(10)), "shape"),
        (lambda: FlowNoise(torch.zeros(3), torch.ones(2)), "shape"),
        (lambda: FlowArchitecture(passes=0), "passes"),
        (lambda: fit_flow_noise(torch.randn(10, 2), steps=0), "steps"),
        (lambda: fit_flow_noise(torch.randn(10, 2), lr=-1.0), "lr"),
        (lambda: FlowArchitecture(bins=0), "bins"),
        (lambda: FlowNoise(torch.zeros(2), torch.tensor([1.0, 0.0])), "scale"),
        (lambda: FlowNoise.empty(SMALL).log_prob(torch.zeros(4, 3)), "shape"),
    ],
)
def test_bad_input_is_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------- D dimensions


@pytest.fixture(scope="module")
def flow_4d() -> FlowNoise:
    """A small flow fitted briefly to two rotated copies of pinwheel (D = 4)."""
    return fit_flow_noise(sample("pinwheel", 4000, torch.Generator().manual_seed(0), dims=4), steps=60,
                          architecture=SMALL)


def test_samples_in_d_dimensions_have_the_densitys_moments(flow_4d):
    """E_q[x] and E_q[x xᵀ] from 200k samples against the same expectations under log_prob, by importance sampling
    from a broad Gaussian r (weights q/r), each within five standard errors of the difference."""
    n = 200_000
    x = flow_4d.sample((n,), torch.Generator().manual_seed(5)).double()
    assert x.shape == (n, 4)
    r = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(4, dtype=torch.float64), 5.0), 1)
    z = r.sample((n,))
    with torch.no_grad():
        w = torch.exp(flow_4d.log_prob(z.float()).double() - r.log_prob(z))  # (n,)
    features = lambda p: torch.cat([p, p.square(), p[:, :1] * p[:, 1:]], dim=1)  # noqa: E731
    sampled, weighted = features(x), w[:, None] * features(z)
    se = (sampled.var(0) / n + weighted.var(0) / n).sqrt()
    difference = sampled.mean(0) - weighted.mean(0) / w.mean()
    assert (difference.abs() < 5 * se).all(), (difference, se)


def test_reparameterised_samples_carry_their_log_density_in_d_dimensions(flow_4d):
    x, log_q = flow_4d.rsample_and_log_prob((500,), torch.Generator().manual_seed(6))
    assert x.shape == (500, 4) and flow_4d.dims == 4
    torch.testing.assert_close(log_q, flow_4d.log_prob(x), atol=1e-4, rtol=1e-4)


def test_coupling_is_the_autoregressive_flow_in_2d():
    """passes = 2 (coupling) and zuko's fully autoregressive default build the same 2D flow from one seed."""
    points = torch.randn(50, 2)
    flows = []
    for passes in (2, 2 * 10):  # zuko caps passes at the number of features
        torch.manual_seed(7)
        flows.append(FlowNoise(torch.zeros(2), torch.ones(2), FlowArchitecture(2, 16, 1, 8, passes=passes)))
    assert torch.equal(flows[0].log_prob(points), flows[1].log_prob(points))
