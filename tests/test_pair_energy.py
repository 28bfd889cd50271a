"""The pair energy: a sum of per-pair MLPs in the noise's basis, and its normaliser, exact in any dimension."""

import math

import pytest
import torch
from torch import nn

from ebm.data import toy
from ebm.energy import EnergyConfig, load_model, train_energy
from ebm.energy.ais import ais_bracket
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import ais_start, make_noise
from ebm.energy.pair_energy import PairLinear, PairSumNet, pair_log_normaliser
from ebm.energy.pairs import PairMixtureNoise


def _random_noise(dims: int, k: int = 3, seed: int = 0) -> PairMixtureNoise:
    g = torch.Generator().manual_seed(seed)
    pairs = dims // 2
    tril = torch.randn(pairs, k, 2, 2, generator=g).tril(-1) * 0.3 + torch.diag_embed(
        0.5 + torch.rand(pairs, k, 2, generator=g))
    unmixing = torch.randn(dims, dims, generator=g) + 2 * torch.eye(dims)
    return PairMixtureNoise(torch.randn(dims, generator=g), unmixing, torch.randn(pairs, k, generator=g),
                            2 * torch.randn(pairs, k, 2, generator=g), tril)


def _pair_model(dims: int, base: bool = True, seed: int = 0, **options) -> EnergyMLP:
    noise = _random_noise(dims, seed=seed)
    torch.manual_seed(seed)
    options = {"width": 16, "depth": 2, **options}
    return EnergyMLP(base=noise if base else None, dims=dims, basis=(noise.loc, noise.unmixing), **options).eval()


def test_the_energy_is_the_sum_of_one_mlp_per_pair_of_the_basis():
    """g(x) = Σ_j MLP_j((W(x − μ))_j), each MLP_j rebuilt here from its slice of the batched weights."""
    model = _pair_model(6, fourier_features=3)
    net = model.net
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    s = (x - net.loc) @ net.unmixing.T
    expected = torch.zeros(40)
    for j in range(3):
        h = net.features(s[:, 2 * j : 2 * j + 2])
        for layer in net.net:
            h = h @ layer.weight[j] + layer.bias[j] if isinstance(layer, PairLinear) else layer(h)
        expected += h.squeeze(-1)
    torch.testing.assert_close(net(x).squeeze(-1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.energy(x), expected - model.base.log_prob(x), atol=1e-5, rtol=1e-5)
    # one pair alone, as the exact normaliser evaluates it
    torch.testing.assert_close(net.one_pair(1, s[:, 2:4]), net.pair_energies(net.coordinates(x))[1])


def test_the_pair_normaliser_matches_importance_sampling_from_the_noise():
    """With the noise q as base, ∫ q e^{−g} dx = E_q[e^{−g}]: 4·10⁵ draws at D = 4 agree with the pair grids."""
    model = _pair_model(4)
    with torch.no_grad():
        model.net.net[-1].weight.mul_(8)  # a g that varies by a few nats, so the test can tell
        model.log_z.fill_(0.3)
    draws = model.base.sample((400_000,), torch.Generator().manual_seed(2))
    with torch.no_grad():
        terms = -model.net(draws).squeeze(-1).double()  # log(p̃/q) = −g
    assert terms.std() > 0.5
    log_z_sampled = torch.logsumexp(terms, 0).item() - math.log(len(terms))
    stderr = (terms - terms.max()).exp().std().item() / (terms - terms.max()).exp().mean().item() / math.sqrt(
        len(terms))
    exact = pair_log_normaliser(model, draws[:20_000])
    assert exact["pair_mass_converged"] and exact["pair_grid_check"] < 1e-3
    assert exact["log_normaliser"] == pytest.approx(log_z_sampled - 0.3, abs=4 * stderr + 1e-3)


class _Squares(nn.Module):
    def forward(self, s):
        return s**2


def test_without_a_base_the_normaliser_carries_the_basis_jacobian():
    """g_j(s) = ½|s|² + c_j (built by hand) and no base: ∫ e^{−g} dx = (2π)^P e^{−Σc} / |det W| in closed form."""
    model = _pair_model(6, base=False)
    net = model.net
    model.net = PairSumNet(net.loc, net.unmixing, 1, 1, nn.Identity, _Squares(), 2)
    c = torch.tensor([0.2, -0.1, 0.4])
    with torch.no_grad():
        first, last = model.net.net[0], model.net.net[-1]
        first.weight.fill_(1.0), first.bias.zero_()
        last.weight.fill_(0.5), last.bias.copy_(c[:, None, None])
    test = _random_noise(6).sample((5_000,), torch.Generator().manual_seed(3))
    expected = 3 * math.log(2 * math.pi) - c.sum().item() - torch.linalg.slogdet(net.unmixing.double())[1].item()
    assert pair_log_normaliser(model, test)["log_normaliser"] == pytest.approx(expected, abs=1e-4)


def test_the_pair_energy_needs_the_pair_noise():
    with pytest.raises(ValueError, match="--energy pairs reads the pair noise's basis: use --noise pairs"):
        EnergyConfig(energy="pairs", noise="gmm", dims=4)


def test_a_pair_energy_run_reports_the_exact_kl_inside_the_ais_bracket(tmp_path):
    """D = 6: the final exact KL equals E_test[log p_data − log_prob] + log ∫exp(log_prob) recomputed here from
    the saved model, and the AIS bracket (which knows nothing of the pairs) contains the exact log Z."""
    config = EnergyConfig(dataset="8gaussians", dims=6, epochs=1, samples=1024, batch_size=128, width=16, depth=2,
                          eval_points=4000, noise="pairs", energy="pairs", ais_distributions=200, ais_chains=128,
                          out=str(tmp_path / "run"), frames="none", progress=False)
    result = train_energy(config)
    model = load_model(config.run_dir)
    test = toy.sample("8gaussians", config.eval_points, torch.Generator().manual_seed(config.seed + 1_000_003), dims=6)
    with torch.no_grad():
        gap = (toy.log_prob("8gaussians", test).double() - model.log_prob(test).double()).mean().item()
    exact = pair_log_normaliser(model, test)["log_normaliser"]
    assert result["kl_exact"] == pytest.approx(gap + exact, abs=1e-6)
    log_z = result["log_z"] + result["log_normaliser"]  # log ∫ exp(log_prob + log_z)
    slack = 3 * max(result["ais_lower_stderr"], result["ais_upper_stderr"])
    assert result["log_z_lower"] - slack <= log_z <= result["log_z_upper"] + slack


def test_exact_pair_samples_have_the_models_moments():
    """Draws by per-pair grids against the model's mean and covariance by self-normalised importance sampling from
    the noise, E_p[f] = E_q[f e^{−g}] / E_q[e^{−g}] (4·10⁵ draws), at D = 4."""
    model = _pair_model(4, seed=1)
    with torch.no_grad():
        model.net.net[-1].weight.mul_(4)
    generator = torch.Generator().manual_seed(4)
    x = model.sample(40_000, generator)  # "auto": the pair sampler
    draws = model.base.sample((400_000,), generator)
    with torch.no_grad():
        weights = torch.softmax(-model.net(draws).squeeze(-1).double(), 0)  # (N,)
    draws = draws.double()
    mean = weights @ draws
    cov = (weights[:, None] * (draws - mean)).T @ (draws - mean)
    x = x.double()
    se = (cov.diagonal() / len(x)).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.05 * cov.diagonal().max(), rtol=0)
    with pytest.raises(ValueError, match="pairs sampler needs a pair energy"):
        EnergyMLP(dims=4).sample(10, generator, method="pairs")


def test_ais_from_the_noise_without_its_defensive_part_is_tight_where_the_full_noise_is_loose():
    """p̃ = the noise's core (its mixtures without the broad last component, renormalised; normaliser 0): forward
    AIS from the full noise must carry the chains that start in the broad component (weight 0.05 per pair, so a
    third of them at D = 16) into the modes and stays loose; from ``ais_start`` (the core itself) every weight is 1
    and the lower bound is exact."""
    noise = _random_noise(16, k=4, seed=5)
    logits, tril = noise.logits.clone(), noise.scale_tril.clone()
    logits[:, :-1] = logits[:, :-1].log_softmax(-1) + math.log(0.95)
    logits[:, -1] = math.log(0.05)
    tril[:, -1] = 8 * torch.eye(2)
    noise = PairMixtureNoise(noise.loc, noise.unmixing, logits, noise.means, tril)
    start = ais_start("pairs", noise)
    torch.testing.assert_close(start.logits.softmax(-1), noise.logits[:, :-1].softmax(-1))  # renormalised
    x = noise.sample((1000,), torch.Generator().manual_seed(0))
    broad = PairMixtureNoise(noise.loc, noise.unmixing, logits[:, -1:], noise.means[:, -1:], tril[:, -1:])
    s = ((x - noise.loc) @ noise.unmixing.T).unflatten(-1, (-1, 2))  # (N, P, 2)
    pair_mix = 0.95 * start.pair_log_prob(s).exp() + 0.05 * broad.pair_log_prob(s).exp()  # (N, P)
    torch.testing.assert_close(noise.log_prob(x), pair_mix.log().sum(-1) + noise.log_det, atol=1e-4, rtol=1e-5)
    g = torch.Generator().manual_seed(1)
    loose = ais_bracket(start.log_prob, noise, 128, 20, g)
    tight = ais_bracket(start.log_prob, start, 128, 20, g)
    assert abs(tight.lower) < 1e-4 and tight.lower_stderr < 1e-4
    assert loose.lower < -0.2


def test_ais_start_drops_the_gmm_noises_defensive_component_and_leaves_the_others():
    data = toy.sample("8gaussians", 2000, torch.Generator().manual_seed(0), dims=4)
    gmm = make_noise("gmm", data, components=3)
    start = ais_start("gmm", gmm)
    assert len(start.logits) == 3 and torch.equal(start.loc, gmm.loc[:-1])
    torch.testing.assert_close(start.logits.softmax(-1), gmm.logits[:-1].softmax(-1))
    fitted = make_noise("fitted", data)
    assert ais_start("fitted", fitted) is fitted
