"""The shared NCE core equals its formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from ebm.nce import classifier_accuracy, nce_logit, nce_objective, nce_token_loss, ranking_nce_loss


def test_objective_is_minus_two_log_two_when_model_equals_noise_at_ratio_one():
    log_p = torch.randn(50, dtype=torch.float64)
    logits = nce_logit(log_p, log_p, noise_ratio=1.0)
    assert torch.all(logits == 0)
    assert nce_objective(logits, logits, 1.0).item() == pytest.approx(-2 * math.log(2), abs=1e-12)


def test_objective_matches_hand_computed_values():
    # G_data = (2, -1), G_noise = (0.5, -3, 1, 0) with nu = 2.
    sig = torch.sigmoid
    data = torch.tensor([2.0, -1.0], dtype=torch.float64)
    noise = torch.tensor([0.5, -3.0, 1.0, 0.0], dtype=torch.float64)
    expected = 0.5 * (math.log(sig(data[0])) + math.log(sig(data[1]))) + 2 * 0.25 * sum(
        math.log(1 - sig(v)) for v in noise
    )
    assert nce_objective(data, noise, 2.0).item() == pytest.approx(expected, rel=1e-12)


def test_objective_equals_binary_cross_entropy_with_weights():
    data, noise, nu = torch.randn(8, dtype=torch.float64), torch.randn(24, dtype=torch.float64), 3.0
    bce = F.binary_cross_entropy_with_logits
    expected = -(bce(data, torch.ones_like(data)) + nu * bce(noise, torch.zeros_like(noise)))
    assert nce_objective(data, noise, nu).item() == pytest.approx(expected.item(), rel=1e-12)


def test_logit_subtracts_log_noise_ratio():
    assert nce_logit(torch.tensor(1.0), torch.tensor(0.25), 4.0).item() == pytest.approx(0.75 - math.log(4))


def test_token_loss_shared_noise_broadcasts_like_per_item_noise():
    target, noise = torch.randn(5), torch.randn(3)
    shared = nce_token_loss(target, noise)
    per_item = nce_token_loss(target, noise.expand(5, 3))
    torch.testing.assert_close(shared, per_item)
    expected = -torch.log(torch.sigmoid(target)) - torch.log(1 - torch.sigmoid(noise)).sum()
    torch.testing.assert_close(shared, expected)


def test_extreme_logits_stay_finite():
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(nce_objective(big, big, 10.0))
    assert torch.isfinite(nce_token_loss(big, big.expand(2, 2))).all()


def test_non_positive_noise_ratio_is_rejected():
    with pytest.raises(ValueError, match="noise_ratio"):
        nce_logit(torch.zeros(1), torch.zeros(1), 0.0)


def test_accuracy_is_balanced():
    assert classifier_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-1.0, -1.0, -1.0, 1.0])).item() == 0.625


def test_ranking_loss_is_minus_log_posterior_of_the_real_item():
    """loss = −log( e^{o_t} / (e^{o_t} + Σ_j e^{o_j}) ), the probability of picking the real item, by hand."""
    target = torch.tensor([0.3, -1.2], dtype=torch.float64)
    noise = torch.tensor([[1.0, -0.5, 2.0], [0.0, 0.7, -3.0]], dtype=torch.float64)
    expected = []
    for n in range(2):
        real = math.exp(target[n].item())
        expected.append(-math.log(real / (real + sum(math.exp(o) for o in noise[n].tolist()))))
    torch.testing.assert_close(ranking_nce_loss(target, noise), torch.tensor(expected, dtype=torch.float64))


def test_ranking_loss_shared_noise_and_removed_items():
    target, noise = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(ranking_nce_loss(target, noise), ranking_nce_loss(target, noise.expand(4, 3)))
    removed = noise.clone()
    removed[1] = -math.inf  # an item with logit −∞ leaves the softmax
    torch.testing.assert_close(ranking_nce_loss(target, removed), ranking_nce_loss(target, noise[[0, 2]]))


def test_ranking_loss_is_finite_at_extreme_logits():
    target = torch.tensor([1e4, -1e4], requires_grad=True)
    loss = ranking_nce_loss(target, torch.tensor([[-1e4, 1e4], [1e4, 1e4]]))
    assert torch.isfinite(loss).all() and loss[1].item() == pytest.approx(2e4 + math.log(2))
    loss.sum().backward()
    assert torch.isfinite(target.grad).all()


def test_ranking_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logit_target"):
        ranking_nce_loss(torch.zeros(2, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logit_noise"):
        ranking_nce_loss(torch.zeros(2), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="logit_noise"):
        ranking_nce_loss(torch.zeros(2), torch.zeros(3, 4))
