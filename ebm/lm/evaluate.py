"""Exact perplexity of a language model over a split, read the way it was trained.

    ppl = exp( −(1/N) Σ_n log p(w_n | context_n) ),   p normalised over the whole vocabulary.

For models that learn to self-normalise (NCE), also the self-normalised perplexity, which uses
s(w) − norm as the log-probability without any softmax, and the distribution of the gap
log Z(context) − norm over the tokens (0 everywhere when the model is exactly self-normalised).

Two readings, matching the two batch modes of ``ebm.data.corpus``:

* ``evaluate``: a batchified stream in bptt chunks with the recurrent state carried over (concatenated mode);
* ``evaluate_sentences``: every sentence on its own, from an ``<eos>`` start with a fresh state (sentence mode).

Sums are accumulated in float64 on the CPU (per-token values leave the device as float32), and the perplexity
of a diverged model is inf, not an OverflowError.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebm.data.corpus import Split, bptt_chunks, sentence_batches


def perplexity(nll_per_token: float) -> float:
    """exp(nll), the perplexity of a mean negative log-likelihood in nats per token.

    inf where exp overflows (a diverged model), nan for nan; never raises.
    """
    try:
        return math.exp(nll_per_token)
    except OverflowError:
        return math.inf


class _Totals:
    """Running sums over scored tokens: NLL and, for self-normalised models, the gap log Z − norm."""

    def __init__(self) -> None:
        self.tokens = 0
        self.nll = 0.0
        self.gap = self.gap_sq = self.gap_abs = 0.0
        self.has_gap = False

    def add(self, nll: Tensor, gap: Tensor | None, mask: Tensor | None = None) -> None:
        """Per-token nll and gap (B, T) on any device; only positions where the CPU `mask` (B, T) is True count."""
        nll = nll.detach().float().cpu().double()  # float64 on the CPU only
        if mask is not None:
            nll = nll[mask]
        self.tokens += nll.numel()
        self.nll += float(nll.sum())
        if gap is not None:
            self.has_gap = True
            gap = gap.detach().float().cpu().double()
            if mask is not None:
                gap = gap[mask]
            self.gap += float(gap.sum())
            self.gap_sq += float(gap.pow(2).sum())
            self.gap_abs += float(gap.abs().sum())

    def result(self) -> dict[str, float]:
        n = self.tokens
        if n == 0:
            raise ValueError("no tokens were scored")
        nll = self.nll / n
        result = {"nll": nll, "ppl": perplexity(nll), "tokens": n}
        if self.has_gap:
            mean = self.gap / n
            result.update(
                ppl_selfnorm=perplexity(nll - mean),  # log p̃ = −nll + (log Z − norm)
                log_z_gap_mean=mean,
                log_z_gap_std=math.sqrt(max(self.gap_sq / n - mean * mean, 0.0)),
                log_z_gap_abs=self.gap_abs / n,
            )
        return result


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensor, bptt: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Exact metrics of ``model`` on a batchified stream ``data`` (B, L), read in bptt chunks with the state
    carried over (as in concatenated training). Every token but the first of each row is scored once.

    Returns ``ppl``, ``nll`` (nats/token) and ``tokens``; with self-normalisation also ``ppl_selfnorm`` and
    the mean, standard deviation and mean absolute value of log Z − norm (``log_z_gap_*``).
    """
    was_training = model.training
    model.eval()
    totals, state = _Totals(), None
    try:
        for input, target in bptt_chunks(data, bptt):
            nll, gap, state = model.scores(input.to(device), target.to(device), state)
            totals.add(nll, gap)
    finally:
        model.train(was_training)
    return totals.result()


@torch.no_grad()
def evaluate_sentences(
    model: nn.Module, split: Split, batch_size: int, eos_index: int, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Exact metrics of ``model`` on ``split`` read as sentence-mode training reads it.

    Each sentence w₁ … wₙ <eos> is scored on its own from a fresh state, with input <eos> w₁ … wₙ and target
    w₁ … wₙ <eos> (``sentence_batches`` in file order, no truncation); padding is masked out. Every token of
    every sentence, its <eos> included, is scored once, so ``tokens`` = len(split). Same keys as ``evaluate``.
    """
    was_training = model.training
    model.eval()
    totals = _Totals()
    try:
        for input, target, mask in sentence_batches(split, batch_size, eos_index):
            nll, gap, _ = model.scores(input.to(device), target.to(device))
            totals.add(nll, gap, mask)
    finally:
        model.train(was_training)
    return totals.result()


__all__ = ["evaluate", "evaluate_sentences", "perplexity"]
