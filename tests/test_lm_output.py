"""The sampled output layer: agreement with the pure losses, exact chunked evaluation, sparse row updates."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ebm.lm import AliasSampler, SampledOutput
from ebm.lm.losses import LOSS_NAMES, SAMPLED_LOSSES

V, H = 40, 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP stalls on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_layer(**kwargs) -> SampledOutput:
    counts = torch.randint(0, 50, (V,))
    options = {"noise": counts, "noise_ratio": 5} | kwargs
    return SampledOutput(H, V, **options)


def batch(b: int = 3, t: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, t, H), torch.randint(V, (b, t))


def exact_log_probs(layer: SampledOutput, hidden: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(F.linear(hidden, layer.weight, layer.bias).double(), dim=-1)


@pytest.mark.parametrize("remove_hits", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("loss", sorted(SAMPLED_LOSSES))
def test_layer_equals_pure_loss_on_its_own_samples(loss, shared, remove_hits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bias of hit removal is tested below
        layer = make_layer(loss=loss, shared_noise=shared, remove_accidental_hits=remove_hits)
    hidden, target = batch()
    got = layer(hidden, target, reduction="none", generator=torch.Generator().manual_seed(5))
    assert got.shape == target.shape

    h, t = hidden.reshape(-1, H), target.reshape(-1)
    shape = (5,) if shared else (t.numel(), 5)
    noise = layer.noise.sample(shape, generator=torch.Generator().manual_seed(5))
    scores = F.linear(h, layer.weight, layer.bias) - layer.norm  # (N, V) log p̃
    noise_scores = scores[:, noise] if shared else scores.gather(1, noise)
    hits = (noise.expand(t.numel(), 5) == t[:, None]) if remove_hits else None
    log_q = layer.noise.log_probs()
    expected = SAMPLED_LOSSES[loss](scores.gather(1, t[:, None]).squeeze(1), noise_scores, log_q[t], log_q[noise], hits)
    torch.testing.assert_close(got.reshape(-1), expected)


def test_reductions_and_flat_inputs():
    layer = make_layer(loss="nce")
    hidden, target = batch()
    per_token = layer(hidden, target, reduction="none", generator=torch.Generator().manual_seed(1))
    mean = layer(hidden, target, generator=torch.Generator().manual_seed(1))
    flat = layer(hidden.reshape(-1, H), target.reshape(-1), reduction="sum", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mean, per_token.mean())
    torch.testing.assert_close(flat, per_token.sum())


def test_full_loss_and_exact_evaluation():
    layer = make_layer(loss="full")
    hidden, target = batch()
    log_p = exact_log_probs(layer, hidden)  # (B, T, V)
    expected_nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(layer(hidden, target, reduction="none").double(), expected_nll)
    torch.testing.assert_close(layer.nll(hidden, target).double(), expected_nll)
    log_z = torch.logsumexp(F.linear(hidden, layer.weight, layer.bias).double(), -1)
    torch.testing.assert_close(layer.log_normalizer(hidden).double(), log_z)
    self_norm = layer.self_normalized_log_prob(hidden, target)
    torch.testing.assert_close(self_norm, -layer.nll(hidden, target) + layer.log_normalizer(hidden) - layer.norm)


@pytest.mark.parametrize("chunk", [1, 7, 40, 10**6])
def test_chunked_nll_equals_unchunked(chunk):
    layer = make_layer(eval_chunk_elements=chunk)
    reference = make_layer(eval_chunk_elements=10**9)
    reference.load_state_dict(layer.state_dict())
    hidden, target = batch(5, 6)
    torch.testing.assert_close(layer.nll(hidden, target), reference.nll(hidden, target))
    expected = -exact_log_probs(layer, hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(layer.nll(hidden, target).double(), expected, atol=1e-5, rtol=1e-5)


def test_init_starts_at_the_noise_distribution():
    counts = torch.arange(1, V + 1)
    layer = SampledOutput(H, V, noise=counts, noise_power=0.75)
    assert layer.norm.item() == pytest.approx(math.log(V))
    torch.testing.assert_close(layer.bias - layer.norm, AliasSampler.from_counts(counts, 0.75).log_probs())
    assert SampledOutput(H, V, norm=9.0).norm.item() == 9.0
    learned = SampledOutput(H, V, norm="learn")
    assert isinstance(learned.norm, torch.nn.Parameter)
    assert learned.dense_parameters() == [learned.norm]
    assert SampledOutput(H, V, noise="log_uniform").noise.vocab_size == V


def test_accidental_hits_are_kept_by_default_and_removing_them_warns():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning with the defaults
        for loss in LOSS_NAMES:
            assert not make_layer(loss=loss).remove_accidental_hits
        layer = make_layer(loss="full", remove_accidental_hits=True)  # no sampled noise, nothing to bias
    for loss in ("nce", "neg", "mix"):
        with pytest.warns(UserWarning, match=r"learns log p/\(1 − p\), not log p"):
            make_layer(loss=loss, remove_accidental_hits=True)
    with pytest.warns(UserWarning, match="over-estimates frequent tokens"):
        make_layer(loss="sampled", remove_accidental_hits=True)
    with pytest.warns(UserWarning, match="'nce' loss"):
        layer.loss = "nce"  # switching to a sampled loss later warns too


# Exact optima in one context (V = 4, uniform noise q = 1/4, k noise tokens per token), from the expected loss:
P = torch.tensor([0.5, 0.25, 0.15, 0.1])
OPTIMA = {
    ("nce", False, 4): P,  # p̃ = p: self-normalised
    ("mix", False, 4): P,  # both halves are minimised at p̃ = p
    ("sampled", False, 4): P,  # ranking NCE: p̃ ∝ p (compared after normalising)
    ("neg", False, 2): P / (2 * 0.25),  # σ(log p̃) = p / (p + k q): p̃ = p / (k q)
    ("nce", True, 4): P / (1 - P),  # noise weight k·q·(1 − p): σ(G) = p / (p + k q (1 − p))
    # no closed form: the minimiser of the exact expected loss, its expectation over all 4⁴ noise draws
    # enumerated, found by L-BFGS in float64 outside this suite (see ebm.lm.losses)
    ("sampled", True, 4): torch.tensor([0.5447, 0.2402, 0.1320, 0.0830]),
}


@pytest.mark.parametrize(("loss", "remove_hits", "k"), list(OPTIMA))
def test_sampled_losses_reach_their_exact_optimum(loss, remove_hits, k):
    """A single context (constant hidden input): s(w) = weight_w + bias_w is a free score per token. Trained on
    p = (.5, .25, .15, .1), exp(s − norm) (softmax(s) for sampled softmax, which leaves the norm free) lands on
    the optimum of the expected loss. Hit removal, the old default of mix, moves NCE's to p / (1 − p)."""
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = SampledOutput(1, 4, noise="uniform", loss=loss, noise_ratio=k, shared_noise=False, sparse=False,
                              remove_accidental_hits=remove_hits)
    steps, n = 200, 1024
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.01 ** (step / steps))  # 0.1 → 0.001
    hidden = torch.ones(n, 1)
    for _ in range(steps):
        target = torch.multinomial(P, n, replacement=True, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        layer(hidden, target, generator=gen).backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        score = layer.weight[:, 0] + layer.bias
        got = torch.softmax(score, 0) if loss == "sampled" else (score - layer.norm).exp()
    torch.testing.assert_close(got, OPTIMA[loss, remove_hits, k], atol=0.03, rtol=0)


def test_loss_is_switchable_on_a_trained_module():
    layer = make_layer(loss="nce")
    hidden, target = batch()
    layer(hidden, target).backward()
    layer.loss = "full"
    assert layer.sparse_parameters() == []
    torch.testing.assert_close(layer(hidden, target, reduction="none"), layer.nll(hidden, target))
    with pytest.raises(ValueError, match="full, nce, sampled, neg, mix"):
        layer.loss = "softmax"
    assert set(LOSS_NAMES) == {"full", "nce", "sampled", "neg", "mix"}


@pytest.mark.parametrize("shared", [True, False])
def test_gradients_are_sparse_and_touch_only_used_rows(shared):
    layer = make_layer(loss="sampled", shared_noise=shared)
    hidden, target = batch()
    hidden.requires_grad_(True)
    layer(hidden, target, generator=torch.Generator().manual_seed(2)).backward()
    assert layer.weight.grad.is_sparse and layer.bias.grad.is_sparse
    shape = (5,) if shared else (target.numel(), 5)
    noise = layer.noise.sample(shape, generator=torch.Generator().manual_seed(2))
    used = torch.zeros(V, dtype=torch.bool)
    used[target.reshape(-1)] = True
    used[noise.reshape(-1)] = True
    touched = layer.weight.grad.coalesce().indices()[0]
    assert set(touched.tolist()) <= set(used.nonzero().squeeze(1).tolist())
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()

    dense = make_layer(loss="sampled", shared_noise=shared, sparse=False)
    dense.load_state_dict(layer.state_dict())
    dense(hidden.detach(), target, generator=torch.Generator().manual_seed(2)).backward()
    torch.testing.assert_close(dense.weight.grad, layer.weight.grad.to_dense())
    torch.testing.assert_close(dense.bias.grad, layer.bias.grad.to_dense())


def test_sparse_adam_step_changes_only_touched_rows():
    layer = make_layer(loss="nce", noise_ratio=3)
    optimizer = torch.optim.SparseAdam(layer.sparse_parameters(), lr=0.1)
    before = layer.weight.detach().clone()
    hidden, target = torch.randn(2, H), torch.tensor([1, 2])
    layer(hidden, target).backward()
    optimizer.step()
    changed = (layer.weight.detach() != before).any(1).nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(layer.weight.grad.coalesce().indices()[0].tolist())
    assert {1, 2} <= set(changed.tolist())


def test_shared_and_per_token_noise_agree_in_expectation():
    layer = make_layer(loss="nce", noise_ratio=10)
    hidden, target = batch(2, 5)
    per_token = SampledOutput(H, V, noise=layer.noise, noise_ratio=10, shared_noise=False)
    per_token.load_state_dict(layer.state_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        shared_mean = torch.stack([layer(hidden, target, generator=gen) for _ in range(200)]).mean()
        token_mean = torch.stack([per_token(hidden, target, generator=gen) for _ in range(200)]).mean()
    assert shared_mean.item() == pytest.approx(token_mean.item(), rel=0.02)


def test_nce_learns_a_self_normalised_unigram():
    """A context-free model (constant hidden) trained by NCE recovers the data distribution with log Z ≈ norm."""
    torch.manual_seed(0)
    vocab = 10
    data_p = torch.softmax(torch.randn(vocab), 0)
    layer = SampledOutput(1, vocab, noise="uniform", loss="nce", noise_ratio=20)
    with torch.no_grad():
        layer.weight.zero_()
    optimizer = torch.optim.SparseAdam(layer.sparse_parameters(), lr=0.05)
    hidden = torch.ones(256, 1)
    for step in range(300):
        if step == 200:
            optimizer.param_groups[0]["lr"] = 0.005
        target = torch.multinomial(data_p, 256, replacement=True)
        optimizer.zero_grad(set_to_none=True)
        layer(hidden, target).backward()
        optimizer.step()
    with torch.no_grad():
        log_z = layer.log_normalizer(hidden[:1]).item()
        model_p = torch.softmax(layer.bias + layer.weight[:, 0], 0)
    assert abs(log_z - layer.norm.item()) < 0.1
    assert 0.5 * (model_p - data_p).abs().sum().item() < 0.05


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_stable_at_huge_scores(loss):
    layer = make_layer(loss=loss)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(V, H).sign() * 1e3)
    hidden = torch.randn(4, H).sign() * 10 / H  # scores up to ±1e4
    target = torch.randint(V, (4,))
    value = layer(hidden, target)
    assert torch.isfinite(value)
    value.backward()
    grad = layer.weight.grad.to_dense() if layer.weight.grad.is_sparse else layer.weight.grad
    assert torch.isfinite(grad).all()
    assert torch.isfinite(layer.nll(hidden, target)).all()


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_bfloat16_autocast(loss):
    layer = make_layer(loss=loss, noise_ratio=10)
    hidden, target = batch()
    reference = layer(hidden, target, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(hidden, target, generator=torch.Generator().manual_seed(3))
        nll = layer.nll(hidden, target)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    torch.testing.assert_close(low, reference, rtol=0.05, atol=0.05)
    torch.testing.assert_close(nll, layer.nll(hidden, target), rtol=0.05, atol=0.05)
    low.backward()


def test_state_dict_round_trip():
    layer = make_layer(norm="learn")
    copy = make_layer(norm="learn")
    copy.load_state_dict(layer.state_dict())
    hidden, target = batch()
    torch.testing.assert_close(copy.nll(hidden, target), layer.nll(hidden, target))


def test_bad_inputs_raise():
    layer = make_layer()
    hidden, target = batch()
    with pytest.raises(IndexError, match="out of range"):
        layer(hidden, torch.full_like(target, V))
    with pytest.raises(IndexError, match="out of range"):
        layer.nll(hidden, torch.full_like(target, -1))
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(3, 4, H + 1), target)
    with pytest.raises(ValueError, match="does not match"):
        layer(hidden, target[:, :2])
    with pytest.raises(TypeError):
        layer(hidden, target.float())
    with pytest.raises(ValueError, match="reduction"):
        layer(hidden, target, reduction="avg")
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="noise_ratio"):
            make_layer(noise_ratio=k)
    with pytest.raises(ValueError, match="full, nce, sampled, neg, mix"):
        make_layer(loss="ce")
    with pytest.raises(ValueError, match="norm"):
        make_layer(norm="max")
    with pytest.raises(ValueError, match="probability 0"):
        SampledOutput(H, 3, noise=AliasSampler(torch.tensor([1.0, 0.0, 1.0])))
    with pytest.raises(ValueError, match="negative"):
        SampledOutput(H, 3, noise=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="vocab_size"):
        SampledOutput(H, 4, noise=torch.ones(3))
