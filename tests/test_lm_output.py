"""The sampled output layer: agreement with the pure losses, exact chunked evaluation, sparse row updates."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ebm.lm import AliasSampler, SampledOutput
from ebm.lm.losses import LOSS_NAMES, SAMPLED_LOSSES

V, H = 40, 8
FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}  # float32 layers against float64 references


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
@pytest.mark.parametrize("sharing", ["batch", "sequence", "token"])
@pytest.mark.parametrize("loss", sorted(SAMPLED_LOSSES))
def test_layer_equals_pure_loss_on_its_own_samples(loss, sharing, remove_hits):
    """Each token's loss is the pure loss on the noise it shares: the batch's 5 draws, its sequence's, or its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bias of hit removal is tested below
        layer = make_layer(loss=loss, noise_sharing=sharing, remove_accidental_hits=remove_hits)
    b, t = 3, 4
    hidden, target = batch(b, t)
    got = layer(hidden, target, reduction="none", generator=torch.Generator().manual_seed(5))
    assert got.shape == target.shape

    h, t_flat = hidden.reshape(-1, H), target.reshape(-1)
    draws = {"batch": (1, 5), "sequence": (b, 5), "token": (b * t, 5)}[sharing]
    noise = layer.noise.sample(draws, generator=torch.Generator().manual_seed(5))
    noise = noise.repeat_interleave(b * t // draws[0], dim=0)  # (N, 5): row n = the draw token n shares
    scores = F.linear(h, layer.weight, layer.bias) - layer.norm  # (N, V) log p̃
    noise_scores = scores.gather(1, noise)
    hits = (noise == t_flat[:, None]) if remove_hits else None
    log_q = layer.noise.log_probs()
    t = t_flat
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
    torch.testing.assert_close(layer.log_normaliser(hidden).double(), log_z)
    self_norm = layer.self_normalized_log_prob(hidden, target)
    torch.testing.assert_close(self_norm, -layer.nll(hidden, target) + layer.log_normaliser(hidden) - layer.norm)


@pytest.mark.parametrize("chunk", [1, 7, 40, 10**6])
def test_chunked_nll_equals_unchunked(chunk):
    layer = make_layer(eval_chunk_elements=chunk)
    reference = make_layer(eval_chunk_elements=10**9)
    reference.load_state_dict(layer.state_dict())
    hidden, target = batch(5, 6)
    torch.testing.assert_close(layer.nll(hidden, target), reference.nll(hidden, target))
    expected = -exact_log_probs(layer, hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(layer.nll(hidden, target).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("elements", [1, 7 * 12, 13 * 12, 40 * 12, 10**6])  # N = 12 tokens: 1, 7, 13, 40, all rows
def test_full_loss_chunked_over_the_vocabulary_equals_the_dense_one(elements):
    """Above loss_chunk_elements the "full" loss is the chunked one: same losses and gradients (h, weight, bias)
    as autograd through the dense log-softmax of the (N, V) logits; at or below it, the dense one itself."""
    layer = make_layer(loss="full", loss_chunk_elements=elements)
    hidden, target = batch(3, 4)
    hidden.requires_grad_()
    loss = layer(hidden, target, reduction="sum")
    grads = torch.autograd.grad(loss, (hidden, layer.weight, layer.bias))
    assert layer.full_loss_backend == ("dense" if elements >= V * 12 else "chunked")
    weight, bias = layer.weight.detach().double().requires_grad_(), layer.bias.detach().double().requires_grad_()
    h = hidden.detach().double().requires_grad_()
    log_p = torch.log_softmax(F.linear(h, weight, bias), dim=-1)
    expected = -log_p.gather(-1, target.unsqueeze(-1)).sum()
    expected_grads = torch.autograd.grad(expected, (h, weight, bias))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_nll_and_gap():
    """The exact NLL and log Z − norm that evaluation reads; no gap for the full softmax."""
    hidden, target = batch()
    for loss in ("nce", "full"):
        layer = make_layer(loss=loss)
        nll, gap = layer.nll_and_gap(hidden, target)
        log_p = exact_log_probs(layer, hidden)
        torch.testing.assert_close(nll.double(), -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1), **FLOAT32)
        if loss == "full":
            assert gap is None
        else:
            log_z = torch.logsumexp(F.linear(hidden, layer.weight, layer.bias).double(), -1)
            torch.testing.assert_close(gap.double(), log_z - layer.norm.double(), **FLOAT32)


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
        layer = SampledOutput(1, 4, noise="uniform", loss=loss, noise_ratio=k, noise_sharing="token", sparse=False,
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


@pytest.mark.parametrize("sharing", ["batch", "sequence", "token"])
def test_gradients_are_sparse_and_touch_only_used_rows(sharing):
    layer = make_layer(loss="sampled", noise_sharing=sharing)
    hidden, target = batch()
    hidden.requires_grad_(True)
    layer(hidden, target, generator=torch.Generator().manual_seed(2)).backward()
    assert layer.weight.grad.is_sparse and layer.bias.grad.is_sparse
    shape = {"batch": (1, 5), "sequence": (target.shape[0], 5), "token": (target.numel(), 5)}[sharing]
    noise = layer.noise.sample(shape, generator=torch.Generator().manual_seed(2))
    used = torch.zeros(V, dtype=torch.bool)
    used[target.reshape(-1)] = True
    used[noise.reshape(-1)] = True
    touched = layer.weight.grad.coalesce().indices()[0]
    assert set(touched.tolist()) <= set(used.nonzero().squeeze(1).tolist())
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()

    dense = make_layer(loss="sampled", noise_sharing=sharing, sparse=False)
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


@pytest.mark.parametrize("sharing", ["batch", "sequence", "token"])
def test_every_noise_sharing_has_the_exact_expected_loss(sharing):
    """E over noise of the NCE loss of token n is −log σ(G_t) − k Σ_w q(w) log σ(−G_w), the sum over all V tokens
    (the definition, computed exactly); the mean over 400 draws lands within 4 standard errors of it."""
    layer = make_layer(loss="nce", noise_ratio=10, noise_sharing=sharing)
    hidden, target = batch(2, 5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([layer(hidden, target, generator=gen) for _ in range(400)])
        log_p = F.linear(hidden.reshape(-1, H), layer.weight, layer.bias).double() - layer.norm  # (N, V)
        log_q = layer.noise.log_probs().double()  # (V,)
        logit = log_p - log_q - math.log(10)  # (N, V) G(w) in every context
        t = target.reshape(-1)
        expected = -F.logsigmoid(logit.gather(1, t[:, None])).squeeze(1) \
            - 10 * (log_q.exp() * F.logsigmoid(-logit)).sum(1)  # (N,)
    standard_error = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - expected.mean().item()) < 4 * standard_error.item()


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
        log_z = layer.log_normaliser(hidden[:1]).item()
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


def _gap_squared(layer: SampledOutput, hidden: torch.Tensor) -> torch.Tensor:
    """(log Z(h) − norm)² per token from the definition: logsumexp over all V scores, in float64. (B, T, H) → (N,)."""
    scores = F.linear(hidden.reshape(-1, H).double(), layer.weight.double(), layer.bias.double())  # (N, V)
    return (torch.logsumexp(scores, dim=-1) - layer.norm.double()).pow(2)


def test_selfnorm_penalty_adds_alpha_times_the_exact_gap_squared():
    """With m ≥ N every token is penalised: loss_α − loss_0 = α (log Z(h) − norm)² token by token (same noise)."""
    layer = make_layer(loss="nce", selfnorm_weight=0.5, selfnorm_positions=100)
    plain = make_layer(loss="nce")
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        layer.weight.mul_(5)  # far from self-normalised, so the gaps are large
        plain.weight.copy_(layer.weight)
    hidden, target = batch()
    with torch.no_grad():
        penalised = layer(hidden, target, reduction="none", generator=torch.Generator().manual_seed(3))
        base = plain(hidden, target, reduction="none", generator=torch.Generator().manual_seed(3))
    expected = 0.5 * _gap_squared(layer, hidden)
    assert expected.min() > 0.1
    torch.testing.assert_close((penalised - base).reshape(-1).double(), expected, rtol=1e-4, atol=1e-5)


def test_selfnorm_penalty_on_a_sample_of_tokens_is_unbiased():
    """m = 3 of N = 12 tokens: each draw penalises 3 tokens by α (N/m) gap²; over 300 draws the mean added loss is
    α · mean gap² (the definition's full-batch value) within 4 standard errors."""
    layer = make_layer(loss="nce", selfnorm_weight=0.5, selfnorm_positions=3)
    plain = make_layer(loss="nce")
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        layer.weight.mul_(5)
        plain.weight.copy_(layer.weight)
    hidden, target = batch()
    added = []
    with torch.no_grad():
        for seed in range(300):
            penalised = layer(hidden, target, generator=torch.Generator().manual_seed(seed))
            added.append(penalised - plain(hidden, target, generator=torch.Generator().manual_seed(seed)))
            assert ((layer(hidden, target, reduction="none", generator=torch.Generator().manual_seed(seed))
                     - plain(hidden, target, reduction="none", generator=torch.Generator().manual_seed(seed)))
                    .abs() > 1e-6).sum() == 3
    added = torch.stack(added).double()
    expected = 0.5 * _gap_squared(layer, hidden).mean()
    assert abs(added.mean() - expected) < 4 * added.std() / math.sqrt(len(added))


def test_selfnorm_penalty_reaches_the_network_not_the_rows():
    """The rows enter the penalty detached: their (sparse) gradients are the plain loss's; the context's differ."""
    layer = make_layer(loss="nce", selfnorm_weight=1.0, selfnorm_positions=100)
    plain = make_layer(loss="nce")
    plain.load_state_dict(layer.state_dict())
    hidden, target = batch()
    grads = []
    for module in (layer, plain):
        h = hidden.clone().requires_grad_(True)
        module(h, target, generator=torch.Generator().manual_seed(4)).backward()
        grads.append((module.weight.grad.to_dense(), module.bias.grad.to_dense(), h.grad))
    assert layer.weight.grad.is_sparse
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert (grads[0][2] - grads[1][2]).abs().max() > 1e-4
