"""The NCE objective of the 2D model: its formula, its value at p = q, and the optimal log Z."""

import math

import pytest
import torch
import torch.nn.functional as F

from ebm.energy.model import EnergyMLP
from ebm.energy.noise import fixed_gaussian
from ebm.energy.objective import energy_nce_loss


def test_loss_equals_formula_on_hand_computed_values():
    noise = fixed_gaussian()
    model = EnergyMLP(width=8, depth=1)
    data, noise_points, nu = torch.randn(5, 2), torch.randn(15, 2), 3.0
    loss, _ = energy_nce_loss(model, noise, data, noise_points, nu)
    # P(real | x) = p / (p + ν q), written with probabilities rather than logits.
    p_d, q_d = model.log_prob(data).exp(), noise.log_prob(data).exp()
    p_n, q_n = model.log_prob(noise_points).exp(), noise.log_prob(noise_points).exp()
    expected = -(torch.log(p_d / (p_d + nu * q_d)).mean() + nu * torch.log(nu * q_n / (p_n + nu * q_n)).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # … and as a weighted binary cross-entropy on logits.
    logits_d = model.log_prob(data) - noise.log_prob(data) - math.log(nu)
    logits_n = model.log_prob(noise_points) - noise.log_prob(noise_points) - math.log(nu)
    bce = F.binary_cross_entropy_with_logits(logits_d, torch.ones(5)) + nu * F.binary_cross_entropy_with_logits(
        logits_n, torch.zeros(15)
    )
    assert loss.item() == pytest.approx(bce.item(), rel=1e-5)


def test_two_log_two_when_model_equals_noise():
    noise = fixed_gaussian()
    model = EnergyMLP(width=8, depth=1, base=noise)
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)  # g = 0, c = 0: the model is q exactly
    loss, accuracy = energy_nce_loss(model, noise, torch.randn(64, 2), noise.sample((64,)), 1.0)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_large_scores_do_not_overflow():
    noise = fixed_gaussian()
    model = EnergyMLP(width=8, depth=1)
    with torch.no_grad():
        model.log_z.fill_(-1e4)
    loss, _ = energy_nce_loss(model, noise, torch.randn(8, 2), torch.randn(8, 2), 1.0)
    assert torch.isfinite(loss)


def test_every_parameter_gets_a_finite_gradient():
    noise = fixed_gaussian()
    model = EnergyMLP(width=16, depth=2, base=noise)
    loss, _ = energy_nce_loss(model, noise, torch.randn(32, 2), noise.sample((128,)), 4.0)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


class HalfSquareEnergy(torch.nn.Module):
    """E(x) = ½‖x‖² fixed, only log_z learned: p(x) = exp(−½‖x‖² − log_z), normalised at log_z = log 2π."""

    def __init__(self):
        super().__init__()
        self.log_z = torch.nn.Parameter(torch.zeros(()))

    def log_prob(self, x):
        return -0.5 * x.square().sum(-1) - self.log_z


def test_optimal_log_z_is_log_integral_of_exp_minus_energy():
    """The library's objective, maximised over log_z alone, gives c = log ∫ exp(−½‖x‖²) dx = log 2π."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(100_000, 2, generator=g)  # exact samples of p ∝ exp(−½‖x‖²)
    noise = fixed_gaussian()
    noise_points = noise.sample((200_000,), g)  # ν = 2
    model = HalfSquareEnergy()
    optimizer = torch.optim.LBFGS([model.log_z], max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss, _ = energy_nce_loss(model, noise, data, noise_points, 2.0)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert model.log_z.item() == pytest.approx(math.log(2 * math.pi), abs=0.02)
