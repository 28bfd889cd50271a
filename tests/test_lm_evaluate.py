"""Exact evaluation: overflow-safe perplexity, and sentence-mode evaluation against a plain per-sentence loop."""

import math

import pytest
import torch
from torch import nn

from ebm.data.corpus import Split, batchify
from ebm.lm.evaluate import evaluate, evaluate_sentences, perplexity
from ebm.lm.models import RNNLM, GenericNCELM
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import AliasSampler

V, EOS = 30, 1


def test_perplexity_is_exp_and_never_raises():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e4) == math.inf  # exp(10⁴) overflows any float
    assert math.isnan(perplexity(math.nan))
    assert perplexity(math.inf) == math.inf


class DivergedModel(nn.Module):
    """A stand-in for a diverged model: every token costs 10⁴ nats, and log Z − norm is −10⁴."""

    def scores(self, input, target, state=None):
        return torch.full(target.shape, 1e4), torch.full(target.shape, -1e4), state


def test_a_diverged_model_has_infinite_perplexity():
    model = DivergedModel()
    stream = evaluate(model, batchify(torch.arange(40) % V, 4), bptt=3)
    assert stream["nll"] == pytest.approx(1e4) and stream["ppl"] == math.inf and stream["tokens"] == 36
    assert stream["ppl_selfnorm"] == math.inf and stream["log_z_gap_mean"] == pytest.approx(-1e4)
    sentences = evaluate_sentences(model, make_split([3, 1, 5]), batch_size=2, eos_index=EOS)
    assert sentences["ppl"] == math.inf and sentences["tokens"] == 9


def make_split(lengths: list[int], seed: int = 0) -> Split:
    """Sentences of the given lengths (each ending with <eos>, a length-1 sentence is a blank line)."""
    gen = torch.Generator().manual_seed(seed)
    sentences = [torch.cat([torch.randint(2, V, (n - 1,), generator=gen), torch.tensor([EOS])]) for n in lengths]
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    return Split(ids=torch.cat(sentences), offsets=offsets)


def make_model(kind: str) -> nn.Module:
    if kind == "generic":
        noise = AliasSampler.from_counts(torch.arange(1, V + 1))
        return GenericNCELM(V, noise, noise_ratio=4, emb_size=8, hidden_size=10, num_layers=1, dropout=0.5)
    output = SampledOutput(in_features=12, vocab_size=V, noise=torch.arange(1, V + 1), loss="nce", noise_ratio=4)
    return RNNLM(V, output, emb_size=10, hidden_size=12, num_layers=2, dropout=0.5)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
@pytest.mark.parametrize("kind", ["lstm", "generic"])
def test_sentences_are_scored_as_a_plain_loop_scores_them(kind, batch_size):
    """Each sentence alone, from an <eos> start and a fresh state, every token once (padding excluded, no
    truncation), in eval mode (dropout 0.5 would change every score)."""
    model = make_model(kind)
    split = make_split([4, 1, 9, 2, 17, 1, 6])
    nll, gap = [], []
    model.eval()
    for i in range(split.num_sentences):
        sentence = split.ids[split.offsets[i] : split.offsets[i + 1]]  # (n,), ends with <eos>
        input = torch.cat([torch.tensor([EOS]), sentence[:-1]])
        token_nll, token_gap, _ = model.scores(input.unsqueeze(0), sentence.unsqueeze(0))
        nll.append(token_nll.double().flatten())
        gap.append(token_gap.double().flatten())
    nll, gap = torch.cat(nll), torch.cat(gap)

    model.train()
    result = evaluate_sentences(model, split, batch_size, EOS)
    assert model.training  # the mode is restored
    assert result["tokens"] == len(split) == 40
    assert result["nll"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    assert result["ppl_selfnorm"] == pytest.approx(math.exp((nll - gap).mean().item()), rel=1e-5)
    assert result["log_z_gap_mean"] == pytest.approx(gap.mean().item(), rel=1e-5, abs=1e-6)
    assert result["log_z_gap_std"] == pytest.approx(gap.std(unbiased=False).item(), rel=1e-4, abs=1e-6)
    assert result["log_z_gap_abs"] == pytest.approx(gap.abs().mean().item(), rel=1e-5, abs=1e-6)
