"""The causal Transformer LM: causality, positions, every output layer, and a short run on the synthetic language."""

import math

import pytest
import torch

from ebm.data.corpus import batchify, bptt_chunks
from ebm.data.synthetic import synthetic_corpus
from ebm.lm.adaptive import AdaptiveOutput
from ebm.lm.build import build_model
from ebm.lm.config import LMConfig
from ebm.lm.evaluate import evaluate
from ebm.lm.optim import make_optimizer
from ebm.lm.output import SampledOutput
from ebm.lm.transformer import TransformerLM, sinusoidal_positions

V, E = 40, 16


def make_transformer(loss: str = "nce", tie_weights: bool = True, **kwargs) -> TransformerLM:
    counts = torch.arange(1, V + 1)
    if loss == "adaptive":
        output = AdaptiveOutput(E, V, counts, cutoffs="5,20")
    else:
        output = SampledOutput(E, V, noise=counts, loss=loss, noise_ratio=8)
    return TransformerLM(V, output, emb_size=E, num_layers=2, heads=4, dropout=0.1, tie_weights=tie_weights, **kwargs)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_changing_a_future_token_never_changes_an_earlier_output(positions):
    model = make_transformer(positions=positions).eval()
    x = torch.randint(V, (3, 12))
    features, state = model(x)
    assert state is None and features.shape == (3, 12, E)
    for j in (0, 5, 11):
        changed = x.clone()
        changed[:, j] = (changed[:, j] + 1) % V
        other, _ = model(changed)
        torch.testing.assert_close(other[:, :j], features[:, :j], rtol=0, atol=1e-6)
        assert not torch.allclose(other[:, j], features[:, j])  # and position j itself sees its own token


def test_sinusoidal_positions_follow_the_formula():
    table = sinusoidal_positions(50, 6)
    for t, i in ((0, 0), (7, 1), (49, 2)):
        angle = t / 10000 ** (2 * i / 6)
        assert table[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sinusoidal_positions(3, 5).shape == (3, 5)


def test_positions_beyond_max_length():
    """Sinusoidal positions extend to any length (the same features as a longer table); learned ones refuse."""
    short = make_transformer(max_length=8).eval()
    long = make_transformer(max_length=32).eval()
    long.load_state_dict(short.state_dict())
    x = torch.randint(V, (2, 20))
    torch.testing.assert_close(short(x)[0], long(x)[0])
    with pytest.raises(ValueError, match="learned positions"):
        make_transformer(positions="learned", max_length=8)(x)
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerLM(V, SampledOutput(E, V), emb_size=E, heads=3)


@pytest.mark.parametrize("loss", ["nce", "full", "sampled", "adaptive"])
def test_every_loss_trains_it_with_sparse_rows_where_the_loss_allows(loss):
    model = make_transformer(loss, tie_weights=loss != "adaptive")
    x, y = torch.randint(V, (2, 7)), torch.randint(V, (2, 7))
    value, state = model.loss(x, y, mask=torch.ones(2, 7, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    assert state is None and torch.isfinite(value)
    value.backward()
    sparse = {id(p) for p in model.sparse_parameters()}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.is_sparse == (id(p) in sparse), name
    assert (id(model.embedding.weight) in sparse) == (loss != "full")  # tied to the dense full-softmax gradient
    nll, gap, state = model.eval().scores(x, y)
    assert nll.shape == (2, 7) and state is None and (gap is None) == (loss in ("full", "adaptive"))


def test_build_model_dispatches_on_model_and_loss():
    counts = torch.arange(1, V + 1)
    model = build_model(LMConfig(model="transformer", loss="nce", emb_size=E, heads=4), counts)
    assert isinstance(model, TransformerLM) and model.embedding.weight is model.output.weight
    model = build_model(LMConfig(model="transformer", loss="adaptive", emb_size=E, heads=4, tie_weights=False), counts)
    assert isinstance(model.output, AdaptiveOutput)
    with pytest.raises(ValueError, match="multiple of --heads"):
        LMConfig(model="transformer", emb_size=30, heads=4)


@pytest.mark.parametrize("loss", ["full", "nce"])
def test_a_short_run_on_the_synthetic_language_beats_the_unigram_model(loss):
    """100 Adam steps of a 1-block, 32-wide Transformer: exact validation perplexity below half the unigram
    model's exp(−mean log q(w)), q the training frequencies (the synthetic language's is ≈ 140, its floor ≈ 13)."""
    corpus = synthetic_corpus((40_000, 3_000, 3_000), seed=0, vocab_size=200)
    counts = corpus.vocab.counts
    unigram_ppl = math.exp(-(counts / counts.sum()).clamp_min(1e-12).log()[corpus.valid.ids.long()].mean().item())
    config = LMConfig(model="transformer", loss=loss, emb_size=32, num_layers=1, heads=2, noise_ratio=20,
                      dropout_embedding=0.0, dropout_between=0.0, dropout_output=0.0)
    model = build_model(config, counts)
    optimizer = make_optimizer(model, "adam", 5e-3, model.sparse_parameters())
    generator = torch.Generator().manual_seed(0)
    for _, (x, y) in zip(range(100), bptt_chunks(batchify(corpus.train.ids, 16), 20), strict=False):
        value, _ = model.loss(x.long(), y.long(), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    ppl = evaluate(model, batchify(corpus.valid.ids, 10), 20)["ppl"]
    assert ppl < unigram_ppl / 2
