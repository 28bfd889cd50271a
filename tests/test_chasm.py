"""The noise gap estimates KL(data ‖ noise) and the density-chasm warning fires only when the noise is far off."""

import math

import pytest
import torch

from ebm.data.toy import sample
from ebm.energy.chasm import chasm_warning, noise_gap
from ebm.energy.noise import fixed_gaussian

# KL(N(0, I) ‖ N(0, 4I)) in 2D = ½[tr(Σq⁻¹Σp) − d + log(det Σq / det Σp)] = ½[½ − 2 + 2·log 4].
KL_UNIT_VS_WIDE = 0.5 * (0.5 - 2 + 2 * math.log(4))


def _standard_normal(n, seed):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    return x, -0.5 * x.double().square().sum(1) - math.log(2 * math.pi)


def test_exact_gap_is_the_kl_divergence():
    # Per point log p − log q = −(3/8)‖x‖² + log 4: variance (9/64)·Var‖x‖² = 9/16, so s.e. 0.75/√n.
    x, log_p = _standard_normal(10_000, 0)
    assert noise_gap(x, fixed_gaussian(2.0), log_p) == pytest.approx(KL_UNIT_VS_WIDE, abs=5 * 0.75 / 100)


def test_classifier_gap_is_close_to_the_kl_divergence():
    # Over seeds 0-5 this setting gave 0.58-0.73 (spread about 0.05): the tolerance is four of those.
    x, _ = _standard_normal(2000, 1)
    assert noise_gap(x, fixed_gaussian(2.0), steps=100) == pytest.approx(KL_UNIT_VS_WIDE, abs=0.2)


@pytest.fixture(scope="module")
def eight_gaussians():
    return sample("8gaussians", 4000, torch.Generator().manual_seed(2))


def test_warning_fires_for_a_too_narrow_noise_and_names_the_mixture(eight_gaussians):
    message = chasm_warning("8gaussians", "narrow", eight_gaussians, noise=fixed_gaussian(0.1))
    assert message is not None and "density chasm" in message and "'gmm'" in message


def test_warning_stays_quiet_for_the_mixture_noise(eight_gaussians):
    assert chasm_warning("8gaussians", "gmm", eight_gaussians) is None


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda points: chasm_warning("spiral", "gmm", points), "unknown toy dataset"),
        (lambda points: chasm_warning("8gaussians", "flow", points), "pass the 'flow' noise built"),
        (lambda points: chasm_warning("8gaussians", "gmm", points, threshold=0.0), "threshold"),
        (lambda points: noise_gap(points, fixed_gaussian(), torch.zeros(3)), "data_log_prob"),
        (lambda points: noise_gap(points[:, :1], fixed_gaussian()), "data_points"),
    ],
)
def test_bad_input_is_rejected(call, match, eight_gaussians):
    with pytest.raises(ValueError, match=match):
        call(eight_gaussians)
