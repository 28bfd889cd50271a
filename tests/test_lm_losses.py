"""Sampled losses: formulas on hand-checked tensors, limits that must hold exactly or statistically."""

import math

import pytest
import torch

from ebm.lm.losses import (
    LOSS_NAMES,
    SAMPLED_LOSSES,
    check_loss_name,
    chunked_cross_entropy,
    full_softmax_loss,
    mix_loss,
    nce_loss,
    negative_sampling_loss,
    sampled_softmax_loss,
)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# Two tokens, k = 2 shared noise samples. Values are log p̃ (scores minus norm) and log q.
TARGET = torch.tensor([-1.0, 0.5], dtype=torch.float64)
NOISE = torch.tensor([[-2.0, 0.0], [1.0, -0.5]], dtype=torch.float64)
LOGQ_TARGET = torch.tensor([-1.5, -2.0], dtype=torch.float64)
LOGQ_NOISE = torch.tensor([-0.7, -3.0], dtype=torch.float64)


def test_nce_formula():
    k = 2
    expected = []
    for n in range(2):
        g_t = TARGET[n].item() - LOGQ_TARGET[n].item() - math.log(k)
        loss = -math.log(sigmoid(g_t))
        for j in range(k):
            g = NOISE[n, j].item() - LOGQ_NOISE[j].item() - math.log(k)
            loss -= math.log(1 - sigmoid(g))
        expected.append(loss)
    torch.testing.assert_close(nce_loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE), torch.tensor(expected).double())


def test_sampled_formula():
    expected = []
    for n in range(2):
        o_t = TARGET[n].item() - LOGQ_TARGET[n].item()
        others = [NOISE[n, j].item() - LOGQ_NOISE[j].item() for j in range(2)]
        expected.append(-o_t + math.log(math.exp(o_t) + sum(math.exp(o) for o in others)))
    got = sampled_softmax_loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE)
    torch.testing.assert_close(got, torch.tensor(expected).double())


def test_neg_formula():
    expected = [
        -math.log(sigmoid(TARGET[n].item())) - sum(math.log(1 - sigmoid(NOISE[n, j].item())) for j in range(2))
        for n in range(2)
    ]
    got = negative_sampling_loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE)
    torch.testing.assert_close(got, torch.tensor(expected).double())


def test_mix_is_the_average():
    args = (TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE)
    torch.testing.assert_close(mix_loss(*args), 0.5 * nce_loss(*args) + 0.5 * sampled_softmax_loss(*args))


def test_full_formula():
    logits = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([1, 0])
    expected = [-(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(-1))), -(0.0 - math.log(2 + math.exp(3)))]
    torch.testing.assert_close(full_softmax_loss(logits, target), torch.tensor(expected).double())


def test_nce_is_two_log_two_when_model_equals_noise_at_k_one():
    log_q = torch.log(torch.tensor([0.1, 0.3, 0.6]))
    target, noise = torch.tensor([0, 2]), torch.tensor([[1], [0]])
    loss = nce_loss(log_q[target], log_q[noise], log_q[target], log_q[noise])
    torch.testing.assert_close(loss, torch.full((2,), 2 * math.log(2)))


def test_per_token_noise_shapes_agree_with_shared():
    per_token_logq = LOGQ_NOISE.expand(2, 2)
    for loss in SAMPLED_LOSSES.values():
        torch.testing.assert_close(
            loss(TARGET, NOISE, LOGQ_TARGET, per_token_logq), loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE)
        )


@pytest.mark.parametrize("uniform_q", [True, False])
def test_sampled_with_every_class_once_equals_full(uniform_q):
    """Noise = the whole vocabulary once, target hit removed: sampled softmax is the full softmax when the
    correction is the log expected count (log 1 = 0 for every class), or any constant (uniform q)."""
    vocab_size, n = 7, 5
    scores = torch.randn(n, vocab_size, dtype=torch.float64)
    target = torch.randint(vocab_size, (n,))
    noise = torch.arange(vocab_size)
    log_q = torch.full((vocab_size,), -math.log(vocab_size) if uniform_q else 0.0, dtype=torch.float64)
    hits = noise.unsqueeze(0) == target.unsqueeze(1)  # (N, V)
    got = sampled_softmax_loss(scores.gather(1, target[:, None]).squeeze(1), scores, log_q[target], log_q, hits)
    torch.testing.assert_close(got, full_softmax_loss(scores, target))


def test_accidental_hits_remove_exactly_the_hits():
    """With hits masked, each loss equals the loss computed on that row's noise with the hit columns deleted,
    and the masked entries get no gradient."""
    n, k = 4, 6
    target = torch.tensor([0, 1, 2, 3])
    noise_ids = torch.tensor([0, 5, 2, 2, 7, 1])  # shared: hits row 0 col 0, row 1 col 5, row 2 cols 2-3
    hits = noise_ids.unsqueeze(0) == target.unsqueeze(1)  # (N, k)
    assert hits.sum() == 4
    log_t = torch.randn(n, dtype=torch.float64)
    log_noise = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    log_q_t = torch.randn(n, dtype=torch.float64)
    log_q_noise = torch.randn(k, dtype=torch.float64)
    for name, loss in SAMPLED_LOSSES.items():
        masked = loss(log_t, log_noise, log_q_t, log_q_noise, hits)
        for row in range(n):
            keep = ~hits[row]
            # NCE's log k counts the samples drawn (k), not those kept: shifting log q by log(k / kept)
            # makes the k_kept-sample formula use the same logits (a constant shift, invisible to sampled).
            shift = math.log(k / int(keep.sum()))
            alone = loss(log_t[row : row + 1], log_noise[row : row + 1, keep], log_q_t[row : row + 1] + shift,
                         log_q_noise[keep] + shift)
            torch.testing.assert_close(masked[row : row + 1], alone, msg=f"{name} row {row}")
        (grad,) = torch.autograd.grad(masked.sum(), log_noise)
        assert (grad[hits] == 0).all() and (grad[~hits] != 0).all(), name


def test_nce_gradient_approaches_full_softmax_gradient():
    """For a self-normalised model (norm = log Z), the expected NCE gradient tends to the softmax gradient as
    k grows (Mnih & Teh 2012): the relative error shrinks with k. Per-token noise, N replicas of one context."""
    vocab_size, n = 50, 2000
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(vocab_size, dtype=torch.float64, generator=gen)
    q = torch.softmax(0.5 * torch.randn(vocab_size, dtype=torch.float64, generator=gen), 0)
    target = torch.multinomial(torch.softmax(scores, 0), n, replacement=True, generator=gen)

    s = scores.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(full_softmax_loss(s.expand(n, vocab_size), target).mean(), s)
    errors = []
    for k in (10, 100, 1000):
        noise = torch.multinomial(q, n * k, replacement=True, generator=gen).view(n, k)
        log_model = s - torch.logsumexp(s, 0).detach()  # p̃ = p: norm is the true log Z
        loss = nce_loss(log_model[target], log_model[noise], q.log()[target], q.log()[noise]).mean()
        (g_nce,) = torch.autograd.grad(loss, s)
        errors.append(((g_nce - g_full).norm() / g_full.norm()).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1 and errors[2] < errors[0] / 4  # seeds 0-3 give 0.03-0.07 at k = 1000


@pytest.mark.parametrize("name", sorted(SAMPLED_LOSSES))
def test_stable_at_huge_scores(name):
    target = torch.tensor([1e4, -1e4, 1e4], requires_grad=True)
    noise = torch.tensor([[1e4, -1e4], [1e4, 1e4], [-1e4, -1e4]], requires_grad=True)
    log_q_t, log_q_n = torch.full((3,), -5.0), torch.full((2,), -5.0)
    loss = SAMPLED_LOSSES[name](target, noise, log_q_t, log_q_n)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(target.grad).all() and torch.isfinite(noise.grad).all()
    logits = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    full = full_softmax_loss(logits, torch.tensor([1]))
    assert full.item() == pytest.approx(2e4)
    full.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(SAMPLED_LOSSES))
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    args = (TARGET.float(), NOISE.float(), LOGQ_TARGET.float(), LOGQ_NOISE.float())
    reference = SAMPLED_LOSSES[name](*args)
    half = SAMPLED_LOSSES[name](args[0].to(dtype), args[1].to(dtype), args[2], args[3])
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, rtol=1e-2, atol=1e-2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="full, nce, sampled, neg, mix"):
        check_loss_name("softmax")
    assert check_loss_name("nce") == "nce" and "full" in LOSS_NAMES
    with pytest.raises(ValueError):  # noise not (N, k)
        nce_loss(TARGET, NOISE[0], LOGQ_TARGET, LOGQ_NOISE)
    with pytest.raises(ValueError):  # log q of the noise of the wrong length
        sampled_softmax_loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE[:1])
    with pytest.raises(ValueError):  # hits of the wrong shape
        nce_loss(TARGET, NOISE, LOGQ_TARGET, LOGQ_NOISE, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):  # k = 0
        nce_loss(TARGET, NOISE[:, :0], LOGQ_TARGET, LOGQ_NOISE[:0])


def dense_cross_entropy_and_grads(h, weight, bias, target, upstream):
    """The reference: F.cross_entropy on the full (N, V) logits, and autograd's gradients of Σ g·loss."""
    h, weight, bias = (t.detach().clone().requires_grad_() for t in (h, weight, bias))
    loss = torch.nn.functional.cross_entropy(h @ weight.T + bias, target, reduction="none")
    return (loss, *torch.autograd.grad((upstream * loss).sum(), (h, weight, bias)))


@pytest.mark.parametrize("chunk", [1, 7, 16, 40, 41, 1000])  # 7 and 16 do not divide V = 41; 41 = V; 1000 > V
def test_chunked_cross_entropy_and_its_gradients_equal_the_dense_ones(chunk):
    n, h_dim, v = 23, 6, 41
    h = torch.randn(n, h_dim, dtype=torch.float64, requires_grad=True)
    weight = (3 * torch.randn(v, h_dim, dtype=torch.float64)).requires_grad_()  # spread logits: a peaked softmax
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True)
    target = torch.randint(v, (n,))
    target[:5] = 3  # a row of the output matrix hit several times
    upstream = torch.randn(n, dtype=torch.float64)  # a weighted sum, as a masked mean gives
    loss = chunked_cross_entropy(h, weight, bias, target, chunk)
    got = (loss, *torch.autograd.grad((upstream * loss).sum(), (h, weight, bias)))
    for value, expected in zip(got, dense_cross_entropy_and_grads(h, weight, bias, target, upstream), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)


def test_chunked_cross_entropy_in_float32_and_without_bias():
    n, h_dim, v = 30, 8, 50
    h, weight = torch.randn(n, h_dim, requires_grad=True), torch.randn(v, h_dim, requires_grad=True)
    target = torch.randint(v, (n,))
    loss = chunked_cross_entropy(h, weight, None, target, 9)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss.mean(), (h, weight))
    dense = torch.nn.functional.cross_entropy(h.double() @ weight.double().T, target, reduction="none")
    dense_grads = torch.autograd.grad(dense.mean(), (h, weight))
    torch.testing.assert_close(loss.double(), dense, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_chunked_cross_entropy_rejects_bad_shapes():
    h, weight, target = torch.randn(4, 3), torch.randn(10, 3), torch.randint(10, (4,))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(h, weight, None, target, 0)
    with pytest.raises(ValueError, match="weight"):
        chunked_cross_entropy(h, torch.randn(10, 4), None, target, 3)
    with pytest.raises(ValueError, match="bias"):
        chunked_cross_entropy(h, weight, torch.randn(9), target, 3)
