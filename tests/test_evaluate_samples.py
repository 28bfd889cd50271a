"""Sample-based evaluation: KL(data ‖ model) between two Gaussians in D = 4 against its closed form, with the learned
log Z and with a bracket on it."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from ebm.energy.evaluate_samples import log_z_error, sample_metrics

DIMS = 4
DATA = MultivariateNormal(
    torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
    torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 2.0, 0.4, 0.0], [0.0, 0.4, 0.7, 0.0], [0.1, 0.0, 0.0, 1.5]],
                 dtype=torch.float64),
)
MODEL = MultivariateNormal(torch.tensor([0.3, -0.6, 0.2, 1.5], dtype=torch.float64),
                           torch.diag(torch.tensor([1.5, 1.8, 1.0, 1.2], dtype=torch.float64)))


def _closed_form_kl() -> float:
    """KL(N(m₁, S₁) ‖ N(m₂, S₂)) = ½[tr(S₂⁻¹S₁) + (m₂ − m₁)ᵀS₂⁻¹(m₂ − m₁) − D + log det S₂ − log det S₁]."""
    s1, s2 = DATA.covariance_matrix, MODEL.covariance_matrix
    diff = MODEL.loc - DATA.loc
    inverse = torch.linalg.inv(s2)
    return 0.5 * (torch.trace(inverse @ s1) + diff @ inverse @ diff - DIMS + torch.logdet(s2) - torch.logdet(s1)).item()


def _test_points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = DATA.sample((n,))
    return x, DATA.log_prob(x)


def _model_log_prob(log_z_offset: float = 0.0):
    """The model's log_prob with a learned log_z that is ``log_z_offset`` above the true log Z."""
    return lambda x: MODEL.log_prob(x.double()) - log_z_offset


def test_kl_with_the_learned_log_z_is_the_closed_form():
    test, test_log_p = _test_points(50_000, 0)
    metrics = sample_metrics(_model_log_prob(), test, test_log_p, log_z_learned=1.7)
    assert metrics["dims"] == DIMS
    assert metrics["kl"] == pytest.approx(_closed_form_kl(), abs=5 * metrics["kl_stderr"])
    assert metrics["kl_per_copy"] == pytest.approx(metrics["kl"] / 2)
    assert metrics["entropy"] == pytest.approx(DATA.entropy().item(), abs=0.05)  # ± 5 standard errors
    assert metrics["test_nll"] == pytest.approx(metrics["entropy"] + metrics["kl"], abs=1e-9)
    assert metrics["log_z"] == 1.7 and "kl_lower" not in metrics


def test_standard_error_matches_the_spread_of_repeated_estimates():
    """kl_stderr against the standard deviation of 40 independent estimates on 1000 points each (its own
    relative error is about 1/√(2·39) ≈ 11%)."""
    runs = [sample_metrics(_model_log_prob(), *_test_points(1000, seed), log_z_learned=0.0) for seed in range(40)]
    spread = torch.tensor([run["kl"] for run in runs]).std().item()
    reported = sum(run["kl_stderr"] for run in runs) / len(runs)
    assert reported == pytest.approx(spread, rel=0.35)


@pytest.mark.parametrize("offset", (0.3, -0.2, 0.005))
def test_a_bracket_on_log_z_brackets_the_kl_and_measures_the_learned_log_z(offset):
    """A model whose learned log_z is ``offset`` above its true log Z (= c): its learned KL is off by ``offset``,
    while a bracket [c − 0.01, c + 0.01] gives a KL interval around the true KL, and the learned log Z's error
    against the bracket is its distance to the bracket (0 inside)."""
    c, half_width = 1.3, 0.01
    test, test_log_p = _test_points(20_000, 1)
    metrics = sample_metrics(_model_log_prob(offset), test, test_log_p, log_z_learned=c + offset,
                             bracket=(c - half_width, c + half_width))
    truth, se = _closed_form_kl(), metrics["kl_stderr"]
    assert metrics["kl"] == pytest.approx(truth + offset, abs=5 * se)
    assert metrics["kl_lower"] - 5 * se < truth < metrics["kl_upper"] + 5 * se
    assert metrics["kl_upper"] - metrics["kl_lower"] == pytest.approx(2 * half_width)
    expected_error = 0.0 if abs(offset) <= half_width else offset - math.copysign(half_width, offset)
    assert metrics["log_z_error"] == pytest.approx(expected_error, abs=1e-12)
    assert (metrics["log_z_lower"], metrics["log_z_upper"]) == (c - half_width, c + half_width)


def test_log_z_error_is_the_distance_outside_the_bracket():
    assert log_z_error(1.0, 0.5, 1.5) == 0.0
    assert log_z_error(2.0, 0.5, 1.5) == pytest.approx(0.5)
    assert log_z_error(0.2, 0.5, 1.5) == pytest.approx(-0.3)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(5), torch.zeros(5)), "test must have shape"),
        ((torch.zeros(5, 4), torch.zeros(4)), "test_log_p"),
        ((torch.zeros(5, 4), torch.zeros(5), 0.0, (1.0,)), "bracket"),
    ],
)
def test_bad_input_is_rejected(args, match):
    args = (*args, 0.0) if len(args) == 2 else args
    with pytest.raises(ValueError, match=match):
        sample_metrics(_model_log_prob(), *args)
