"""The noise gap is KL(data ‖ noise) in 2D and D dimensions; the density-chasm warning fires only when the noise is
far off."""

import math

import pytest
import torch

from ebm.data.toy import log_prob, sample
from ebm.energy.chasm import chasm_warning, noise_gap
from ebm.energy.noise import fixed_gaussian


def _kl_unit_vs_wide(dims):
    """KL(N(0, I) ‖ N(0, 4I)) in D dimensions = ½[tr(Σq⁻¹Σp) − D + log(det Σq / det Σp)] = ½D[¼ − 1 + log 4]."""
    return 0.5 * dims * (0.25 - 1 + math.log(4))


def _standard_normal(n, seed, dims=2):
    x = torch.randn(n, dims, generator=torch.Generator().manual_seed(seed))
    return x, -0.5 * x.double().square().sum(1) - dims / 2 * math.log(2 * math.pi)


@pytest.mark.parametrize("dims", (2, 4))
def test_exact_gap_is_the_kl_divergence(dims):
    # Per point log p − log q = −(3/8)‖x‖² + (D/2)·log 4: variance (9/64)·Var‖x‖² = (9/32)·D, s.e. √(9D/32)/√n.
    x, log_p = _standard_normal(10_000, 0, dims)
    se = math.sqrt(9 * dims / 32) / 100
    assert noise_gap(x, fixed_gaussian(2.0, dims), log_p) == pytest.approx(_kl_unit_vs_wide(dims), abs=5 * se)


@pytest.fixture(scope="module")
def eight_gaussians():
    return sample("8gaussians", 4000, torch.Generator().manual_seed(2))


def test_warning_fires_for_a_too_narrow_noise_and_names_the_mixture(eight_gaussians):
    message = chasm_warning("8gaussians", "narrow", eight_gaussians, noise=fixed_gaussian(0.1))
    assert message is not None and "density chasm" in message and "'gmm'" in message


def test_warning_stays_quiet_for_the_mixture_noise(eight_gaussians):
    assert chasm_warning("8gaussians", "gmm", eight_gaussians) is None


def test_warning_in_d_dimensions_uses_the_exact_d_dimensional_density():
    """D = 8 (four rotated 8gaussians): the fixed N(0, 4I) is about four times its 2D gap away, the narrow noise
    far beyond the threshold; the message names the dimension and the gap measured with the exact density."""
    points = sample("8gaussians", 4000, torch.Generator().manual_seed(3), dims=8)
    wide_gap = noise_gap(points, fixed_gaussian(2.0, 8), log_prob("8gaussians", points))
    points_2d = sample("8gaussians", 4000, torch.Generator().manual_seed(3))
    gap_2d = noise_gap(points_2d, fixed_gaussian(2.0), log_prob("8gaussians", points_2d))
    assert wide_gap == pytest.approx(4 * gap_2d, rel=0.05)  # four independent copies: four times the 2D gap
    message = chasm_warning("8gaussians", "narrow", points, noise=fixed_gaussian(0.1, 8))
    assert message is not None and "in 8 dimensions" in message and "'gmm'" in message


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda points: chasm_warning("spiral", "gmm", points), "unknown toy dataset"),
        (lambda points: chasm_warning("8gaussians", "flow", points), "pass the 'flow' noise built"),
        (lambda points: chasm_warning("8gaussians", "gmm", points, threshold=0.0), "threshold"),
        (lambda points: noise_gap(points, fixed_gaussian(), torch.zeros(3)), "data_log_prob"),
        (lambda points: noise_gap(points[:3], fixed_gaussian(), torch.zeros(3)), "data_points"),
        (lambda points: noise_gap(points, fixed_gaussian(dims=4), torch.zeros(len(points))), r"\(\.\.\., 4\)"),
    ],
)
def test_bad_input_is_rejected(call, match, eight_gaussians):
    with pytest.raises(ValueError, match=match):
        call(eight_gaussians)
