"""A synthetic Zipfian language whose entropy rate is known exactly.

A first-order Markov chain over V words (word 0 is ``<eos>``, so sentences arise on their own). After word
s the next word is drawn from

    P(w | s) = (1 − λ) z(w) + λ c_s(w),

a mixture of a Zipf unigram z(w) ∝ (w + 1)^(−a) shared by all contexts and a context-specific distribution
c_s over m distinct words chosen at random for s (weights from a symmetric Dirichlet). Everything is
generated from one seed.

The entropy rate of the chain is exact (no sampling):

    H = Σ_s π(s) H(P(· | s)),

with π the stationary distribution, found by iterating π ← (1 − λ) z + λ π C (a contraction with rate λ,
run to machine precision). Each row's entropy takes O(V + m) work because P(· | s) differs from (1 − λ) z
only at the m context words. exp(H) is the lowest perplexity any model can reach on the language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ebm.data.corpus import EOS, MIN_SPLIT_TOKENS, SPLITS, UNK, Corpus, Split, Vocabulary


@dataclass(frozen=True)
class SyntheticLanguage:
    """The chain's parameters, float64 NumPy arrays.

    zipf: (V,) the shared unigram z; context_words: (V, m) distinct words per state; context_probs: (V, m)
    their weights (rows sum to 1); mix: λ.
    """

    zipf: np.ndarray
    context_words: np.ndarray
    context_probs: np.ndarray
    mix: float

    @property
    def vocab_size(self) -> int:
        return self.zipf.size

    def transition_probs(self, states: np.ndarray) -> np.ndarray:
        """Dense rows P(· | s) for the given states: (S,) → (S, V). Meant for small V and tests."""
        rows = np.tile((1 - self.mix) * self.zipf, (states.size, 1))
        row_index = np.arange(states.size)[:, None]
        np.add.at(rows, (row_index, self.context_words[states]), self.mix * self.context_probs[states])
        return rows

    def log_prob(self, previous: np.ndarray, following: np.ndarray) -> np.ndarray:
        """log P(following | previous), elementwise over two (N,) integer arrays."""
        hit = self.context_words[previous] == following[:, None]  # (N, m)
        context = (self.context_probs[previous] * hit).sum(axis=1)
        return np.log((1 - self.mix) * self.zipf[following] + self.mix * context)

    def stationary(self, tol: float = 1e-15, max_iter: int = 10_000) -> np.ndarray:
        """π with π P = π, (V,): iterate π ← (1 − λ) z + λ π C until the L1 change is below ``tol``."""
        pi = self.zipf.copy()
        for _ in range(max_iter):
            spread = np.zeros_like(pi)
            np.add.at(spread, self.context_words.ravel(), (pi[:, None] * self.context_probs).ravel())
            new = (1 - self.mix) * self.zipf + self.mix * spread
            new /= new.sum()
            done = np.abs(new - pi).sum() < tol
            pi = new
            if done:
                break
        return pi

    def row_entropies(self) -> np.ndarray:
        """H(P(· | s)) in nats for every state, (V,), in O(V·m)."""
        base = (1 - self.mix) * self.zipf  # (V,)
        total = -_xlogx(base).sum()
        base_at = base[self.context_words]  # (V, m)
        probs = base_at + self.mix * self.context_probs  # (V, m)
        return total + _xlogx(base_at).sum(axis=1) - _xlogx(probs).sum(axis=1)

    def entropy_rate(self) -> float:
        """H = Σ_s π(s) H(P(· | s)), nats per token."""
        return float(self.stationary() @ self.row_entropies())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A chain of n states started from π, (n,) int64.

        All randomness is drawn up front; the chain x_{t+1} = c(x_t, u_t) if b_t else y_t is then solved by
        fixed-point sweeps over the whole array (each sweep fixes at least one more step of every run of
        context draws, so it ends after the longest run; the fixed point is unique, hence exact).
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        first = rng.choice(self.vocab_size, p=self.stationary())
        from_context = rng.random(n - 1) < self.mix  # b_t
        fresh = rng.choice(self.vocab_size, size=n - 1, p=self.zipf)  # y_t
        uniform = rng.random(n - 1)  # u_t picks the context word
        cumulative = np.cumsum(self.context_probs, axis=1)  # (V, m)
        cumulative[:, -1] = 1.0
        chain = np.empty(n, dtype=np.int64)
        chain[0] = first
        chain[1:] = fresh
        while True:
            previous = chain[:-1]
            pick = (uniform[:, None] > cumulative[previous]).sum(axis=1)  # (n-1,)
            following = np.where(from_context, self.context_words[previous, pick], fresh)
            if np.array_equal(following, chain[1:]):
                return chain
            chain[1:] = following


def _xlogx(p: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def make_language(
    vocab_size: int = 1000,
    context_size: int = 4,
    mix: float = 0.7,
    zipf_exponent: float = 1.0,
    concentration: float = 1.0,
    seed: int = 0,
) -> SyntheticLanguage:
    """Draw a language from ``seed``: V words, m = ``context_size`` context words per state, weight λ = ``mix``.

    ``concentration`` is the Dirichlet parameter of the context weights (small = peaked).
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    if not 1 <= context_size <= vocab_size:
        raise ValueError(f"context_size must be in [1, vocab_size], got {context_size}")
    if not 0.0 <= mix < 1.0:
        raise ValueError(f"mix must be in [0, 1), got {mix}")
    if zipf_exponent < 0 or concentration <= 0:
        raise ValueError("zipf_exponent must be ≥ 0 and concentration > 0")
    rng = np.random.default_rng(seed)
    zipf = (np.arange(vocab_size) + 1.0) ** -zipf_exponent
    zipf /= zipf.sum()
    words = np.stack([rng.choice(vocab_size, size=context_size, replace=False) for _ in range(vocab_size)])
    probs = rng.dirichlet(np.full(context_size, concentration), size=vocab_size)
    return SyntheticLanguage(zipf=zipf, context_words=words, context_probs=probs, mix=mix)


def _split_of(chain: np.ndarray) -> Split:
    """A chain cut after its last ``<eos>`` (state 0), with sentences ending at every ``<eos>``.

    The cut must leave at least ``MIN_SPLIT_TOKENS`` tokens, else a ``ValueError`` asks for more.
    """
    ends = np.flatnonzero(chain == 0) + 1
    if ends.size == 0 or ends[-1] < MIN_SPLIT_TOKENS:
        raise ValueError(f"a sample of {chain.size} tokens has fewer than {MIN_SPLIT_TOKENS} up to its last <eos>; "
                         f"draw more tokens")
    ids = torch.from_numpy(chain[: ends[-1]].copy())
    offsets = torch.from_numpy(np.concatenate([[0], ends]).astype(np.int64))
    return Split(ids=ids, offsets=offsets)


def synthetic_corpus(
    sizes: Sequence[int] = (500_000, 50_000, 50_000),
    seed: int = 0,
    **language: float | int,
) -> Corpus:
    """The synthetic language as a ``Corpus``: train, valid, test chains of about ``sizes`` tokens.

    Word 0 is ``<eos>``, words 1 … V−1 are ``w1`` …; ``<unk>`` is appended (index V, count 0: it never
    occurs), so the model's vocabulary has V + 1 entries. ``language`` goes to ``make_language`` (with the
    same seed). ``entropy_rate`` holds the exact H.
    """
    if len(sizes) != 3 or min(sizes) < 2:
        raise ValueError(f"sizes must be three token counts ≥ 2, got {tuple(sizes)}")
    lang = make_language(seed=seed, **language)
    rng = np.random.default_rng([seed, 1])
    splits = {name: _split_of(lang.sample(int(n), rng)) for name, n in zip(SPLITS, sizes, strict=True)}
    counts = np.bincount(splits["train"].ids.numpy(), minlength=lang.vocab_size)
    words = [EOS, *(f"w{i}" for i in range(1, lang.vocab_size)), UNK]
    vocab = Vocabulary(words, [*counts.tolist(), 0])
    return Corpus(name="synthetic", vocab=vocab, entropy_rate=lang.entropy_rate(), **splits)


__all__ = ["SyntheticLanguage", "make_language", "synthetic_corpus"]
