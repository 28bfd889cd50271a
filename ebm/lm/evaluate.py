"""Exact perplexity of a language model over a batchified split.

    ppl = exp( −(1/N) Σ_n log p(w_n | context_n) ),   p normalised over the whole vocabulary.

For models that learn to self-normalise (NCE), also the self-normalised perplexity, which uses
s(w) − norm as the log-probability without any softmax, and the distribution of the gap
log Z(context) − norm over the tokens (0 everywhere when the model is exactly self-normalised).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebm.data.corpus import bptt_chunks


@torch.no_grad()
def evaluate(model: nn.Module, data: Tensor, bptt: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Exact metrics of ``model`` on a batchified stream ``data`` (B, L), read in bptt chunks with the state
    carried over (as in training). Every token but the first of each row is scored once.

    Returns ``ppl``, ``nll`` (nats/token) and ``tokens``; with self-normalisation also ``ppl_selfnorm`` and
    the mean, standard deviation and mean absolute value of log Z − norm (``log_z_gap_*``).
    """
    was_training = model.training
    model.eval()
    state = None
    n, nll_sum = 0, 0.0
    gap_sum, gap_sq, gap_abs = 0.0, 0.0, 0.0
    has_gap = False
    for input, target in bptt_chunks(data, bptt):
        nll, gap, state = model.scores(input.to(device), target.to(device), state)
        n += nll.numel()
        nll_sum += float(nll.double().sum())
        if gap is not None:
            has_gap = True
            gap = gap.double()
            gap_sum += float(gap.sum())
            gap_sq += float(gap.pow(2).sum())
            gap_abs += float(gap.abs().sum())
    model.train(was_training)
    result = {"nll": nll_sum / n, "ppl": math.exp(nll_sum / n), "tokens": n}
    if has_gap:
        mean = gap_sum / n
        result.update(
            ppl_selfnorm=math.exp((nll_sum - gap_sum) / n),
            log_z_gap_mean=mean,
            log_z_gap_std=math.sqrt(max(gap_sq / n - mean**2, 0.0)),
            log_z_gap_abs=gap_abs / n,
        )
    return result


__all__ = ["evaluate"]
