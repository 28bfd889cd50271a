"""The synthetic Zipfian language: a proper Markov chain whose exact entropy rate matches its samples."""

import numpy as np
import pytest

from ebm.data.synthetic import _split_of, make_language, synthetic_corpus


def test_transition_rows_are_distributions_and_log_prob_agrees():
    lang = make_language(vocab_size=60, context_size=5, seed=3)
    rows = lang.transition_probs(np.arange(60))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-12)
    prev, nxt = np.repeat(np.arange(60), 60), np.tile(np.arange(60), 60)
    np.testing.assert_allclose(np.exp(lang.log_prob(prev, nxt)).reshape(60, 60), rows, atol=1e-14)


def test_stationary_and_entropy_match_dense_computation():
    lang = make_language(vocab_size=80, context_size=3, mix=0.8, seed=1)
    rows = lang.transition_probs(np.arange(80))
    pi = lang.stationary()
    np.testing.assert_allclose(pi @ rows, pi, atol=1e-13)
    dense = -(pi[:, None] * rows * np.log(rows)).sum()
    assert lang.entropy_rate() == pytest.approx(dense, rel=1e-12)


def test_entropy_rate_agrees_with_monte_carlo():
    lang = make_language(vocab_size=500, seed=2)
    chain = lang.sample(200_000, np.random.default_rng(0))
    nll = -lang.log_prob(chain[:-1], chain[1:])
    standard_error = nll.std() / np.sqrt(nll.size)
    assert abs(nll.mean() - lang.entropy_rate()) < 4 * standard_error


def test_sampled_transitions_follow_the_chain():
    lang = make_language(vocab_size=20, context_size=2, seed=4)
    chain = lang.sample(100_000, np.random.default_rng(1))
    counts = np.zeros((20, 20))
    np.add.at(counts, (chain[:-1], chain[1:]), 1)
    visits = counts.sum(axis=1, keepdims=True)
    probs = lang.transition_probs(np.arange(20))
    z = (counts / visits - probs) / np.sqrt(probs * (1 - probs) / visits)  # binomial z-scores
    assert np.abs(z).max() < 4.5


def test_corpus_is_seeded_and_well_formed():
    a = synthetic_corpus(sizes=(5000, 1000, 1000), seed=7, vocab_size=50)
    b = synthetic_corpus(sizes=(5000, 1000, 1000), seed=7, vocab_size=50)
    assert np.array_equal(a.train.ids.numpy(), b.train.ids.numpy())
    assert len(a.vocab) == 51 and a.vocab.counts[a.vocab.unk_index] == 0
    assert int(a.vocab.counts.sum()) == len(a.train)
    assert a.train.ids[-1] == a.vocab.eos_index and a.entropy_rate == make_language(50, seed=7).entropy_rate()
    ends = a.train.offsets[1:] - 1
    assert (a.train.ids[ends] == a.vocab.eos_index).all()


@pytest.mark.parametrize("kwargs", [{"vocab_size": 1}, {"context_size": 0}, {"mix": 1.0}, {"concentration": 0.0}])
def test_bad_language_parameters(kwargs):
    with pytest.raises(ValueError):
        make_language(**kwargs)


def test_a_split_needs_two_tokens_up_to_its_last_eos():
    """State 0 is <eos>: a chain is cut after its last one, and a cut shorter than 2 tokens is an error."""
    split = _split_of(np.array([3, 0, 5, 0, 7]))
    assert split.ids.tolist() == [3, 0, 5, 0] and split.offsets.tolist() == [0, 2, 4]
    assert _split_of(np.array([4, 0])).ids.tolist() == [4, 0]
    for chain in ([0, 3, 5], [2, 3]):
        with pytest.raises(ValueError, match="draw more tokens"):
            _split_of(np.array(chain))
