"""The adaptive softmax output layer: frequency ranks, cutoffs, and exact log-probabilities against the definition."""

import pytest
import torch
import torch.nn.functional as F

from ebm.lm.adaptive import AdaptiveOutput, adaptive_cutoffs, frequency_ranks
from ebm.lm.config import LMConfig
from ebm.lm.models import RNNLM
from ebm.lm.optim import make_optimizer

V, H = 50, 8


def random_counts(v: int = V) -> torch.Tensor:
    counts = torch.randint(0, 30, (v,))
    counts[[4, 9]] = 17  # a tie, broken by word id
    return counts


def test_frequency_ranks_order_words_by_decreasing_count_then_id():
    counts = random_counts()
    by_frequency = sorted(range(V), key=lambda w: (-int(counts[w]), w))
    rank = frequency_ranks(counts)
    assert [by_frequency.index(w) for w in range(V)] == rank.tolist()


def test_auto_cutoffs_are_frequency_rank_fractions_below_v():
    assert adaptive_cutoffs("auto", 201) == [13, 50]  # the synthetic language: V/16, V/4 rounded
    assert adaptive_cutoffs("auto", 33_278) == [2080, 8320]
    assert adaptive_cutoffs("auto", 1_000_000) == [62_500, 250_000]
    assert adaptive_cutoffs("auto", 5) == [1]  # round(5/16) = 0 is dropped, round(5/4) = 1
    assert adaptive_cutoffs("auto", 2) == [1]  # none left: one cluster at V // 2
    assert adaptive_cutoffs("20000,200000", 1_000_000) == [20_000, 200_000]
    assert adaptive_cutoffs([5, 20], V) == [5, 20]
    for bad in ("20,5", "5,50", "0,5", "5,5"):
        with pytest.raises(ValueError, match=r"strictly increasing integers in \[1, 50\)"):
            adaptive_cutoffs(bad, V)
    with pytest.raises(ValueError, match="comma-separated integers"):
        adaptive_cutoffs("5;20", V)
    with pytest.raises(ValueError, match="auto"):
        LMConfig(adaptive_cutoffs="many", loss="adaptive", tie_weights=False)


def log_probs_by_definition(layer: AdaptiveOutput, counts: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Grave et al. 2017: log p(w) = head(w) for the c₁ most frequent words, head(cluster i) + tail_i(w) for the
    rest, words ranked by decreasing count (ties by id); float64, (N, V) in word-id order."""
    module, cutoffs = layer.adaptive, [*layer.cutoffs, V]
    head = module.head
    head_log_p = torch.log_softmax(F.linear(h, head.weight.double(), head.bias.double()), -1)  # (N, c₁ + clusters)
    tails = [torch.log_softmax(h @ projection.weight.double().T @ out.weight.double().T, -1)  # (N, |cluster i|)
             for projection, out in module.tail]
    by_frequency = sorted(range(V), key=lambda w: (-int(counts[w]), w))
    columns = [None] * V
    for r, word in enumerate(by_frequency):
        if r < cutoffs[0]:
            columns[word] = head_log_p[:, r]
            continue
        i = max(j for j in range(len(cutoffs) - 1) if cutoffs[j] <= r)
        columns[word] = head_log_p[:, cutoffs[0] + i] + tails[i][:, r - cutoffs[i]]
    return torch.stack(columns, dim=-1)


def test_log_probs_equal_the_definition_and_sum_to_one():
    counts = random_counts()
    layer = AdaptiveOutput(H, V, counts, cutoffs="5,20", div_value=2.0)
    h = torch.randn(3, 4, H)
    target = torch.randint(V, (3, 4))
    expected = log_probs_by_definition(layer, counts, h.reshape(-1, H).double())  # (N, V)
    log_p = layer.log_prob(h)  # (3, 4, V)
    torch.testing.assert_close(log_p.reshape(-1, V).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_p.double().exp().sum(-1), torch.ones(3, 4, dtype=torch.float64))
    expected_nll = -expected.gather(1, target.reshape(-1, 1)).reshape(3, 4)
    torch.testing.assert_close(layer(h, target, reduction="none").double(), expected_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(h, target).double(), expected_nll.mean(), rtol=1e-5, atol=1e-5)
    nll, gap = layer.nll_and_gap(h, target)
    assert gap is None
    torch.testing.assert_close(nll.double(), expected_nll, rtol=1e-5, atol=1e-5)


def make_adaptive_lm(**kwargs) -> RNNLM:
    output = AdaptiveOutput(16, V, random_counts(), cutoffs="auto")
    return RNNLM(V, output, emb_size=12, hidden_size=16, num_layers=1, dropout=0.0, **kwargs)


def test_tied_weights_are_refused():
    with pytest.raises(ValueError, match="no-tie-weights"):
        make_adaptive_lm(tie_weights=True, out_size=12)
    with pytest.raises(ValueError, match="no-tie-weights"):
        LMConfig(loss="adaptive")  # tying is the default: the config says what to change
    assert LMConfig(loss="adaptive", tie_weights=False).loss == "adaptive"


def test_trains_in_a_language_model_with_dense_output_gradients():
    """Only the input embedding is sparse; Adam on the adaptive softmax lowers the loss of a fixed batch."""
    model = make_adaptive_lm()
    assert model.sparse_parameters() == [model.embedding.weight]
    optimizer = make_optimizer(model, "adam", 0.01, model.sparse_parameters())
    x, y = torch.randint(V, (4, 10)), torch.randint(V, (4, 10))
    first = None
    for _ in range(30):
        loss, _ = model.loss(x, y, mask=torch.ones(4, 10, dtype=torch.bool))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert not model.output.adaptive.head.weight.grad.is_sparse
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first - 0.5
    nll, gap, _ = model.eval().scores(x, y)
    assert gap is None and nll.shape == (4, 10)
