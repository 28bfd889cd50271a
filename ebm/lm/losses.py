"""Token-level losses as pure functions of scores: no parameters, no sampling.

Notation, for N tokens with contexts h_n and k noise tokens per token:
    s(w)      the model's unnormalised score of token w in its context (h·e_w + b_w)
    norm      the log-normaliser the model is asked to learn (a constant such as log V, or learned)
    log p̃(w) = s(w) − norm, the self-normalised log-probability; the sampled losses take it as input
    log q(w)  the noise log-probability of w

Losses (all return per-token losses (N,), to be averaged by the caller), with the optimum of each in one
context when the noise is drawn from q (solved in closed form, checked by training in the tests):
    full     −log softmax(s)(target), the exact cross-entropy (the reference); ``chunked_cross_entropy`` computes
             it from h, the output matrix and the bias without ever holding the [N × V] scores.
    nce      −log σ(G_t) − Σ_j log σ(−G_j),  G = log p̃ − log q − log k (Mnih & Teh 2012), built on the
             shared core ``ebm.nce``. Optimum p̃ = p: self-normalised.
    sampled  sampled softmax: cross-entropy over {target} ∪ noise with logits s − log q (Jean et al. 2015;
             TensorFlow's sampled_softmax_loss), which is ranking NCE (Ma & Collins 2018,
             ``ebm.nce.ranking_nce_loss``). Optimum p̃ ∝ p for any k, the normaliser left free. Subtracting
             log q or the expected count log(k·q) is the same: a constant shift cancels in the softmax.
    neg      negative sampling: NCE with the log(k·q) term dropped, G = log p̃ (Mikolov et al. 2013). Biased:
             its optimum is p̃ = p / (k·q), not p, unless k·q = 1; kept for comparison.
    mix      ½·nce + ½·sampled (the seed's "mix"). Optimum p̃ = p: both halves are minimised there.

Accidental hits: `hits` (N, k) marks noise samples equal to the token's target. A hit's noise term is
removed: its NCE / neg term is dropped and its sampled-softmax logit set to −∞, as TensorFlow's
``remove_accidental_hits`` does. Removal changes what the losses estimate, so it is off by default in
``SampledOutput``:
    nce      the noise term of w then has weight k·q(w)·(1 − p(w)), so the optimum is p̃ = p / (1 − p): NCE
             learns log p/(1 − p), not log p (TensorFlow's "sampled logistic" loss); neg likewise learns
             p / (k·q·(1 − p)).
    sampled  no longer ranking NCE: exact at k = 1 only. Minimising the exact expected loss (all V^k noise
             draws enumerated) for V = 4, p = (.5, .25, .15, .1) and uniform q gives softmax(s) =
             (.517, .248, .143, .093) at k = 2, (.545, .240, .132, .083) at k = 4 and
             (.587, .222, .118, .074) at k = 8: frequent tokens are over-estimated, more so as k grows.
    mix      both halves biased, so neither p nor p / (1 − p).

Noise shapes: `log_model_noise` is always (N, k) (every context scores the noise tokens); `log_q_noise` is
(k,) when the noise is shared by the batch or (N, k) when drawn per token. All arithmetic is done in float32
or wider with logsigmoid / logsumexp, so scores of ±1e4 and float16 / bfloat16 inputs are safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ebm.nce import nce_logit, nce_token_loss, ranking_nce_loss

LOSS_NAMES = ("full", "nce", "sampled", "neg", "mix")  # the losses of ebm.lm.output.SampledOutput
MODEL_LOSS_NAMES = (*LOSS_NAMES, "adaptive")  # and the adaptive softmax (ebm.lm.adaptive.AdaptiveOutput)


def _upcast(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check(log_model_target: Tensor, log_model_noise: Tensor, log_q_noise: Tensor, hits: Tensor | None) -> None:
    n = log_model_target.shape[0]
    if log_model_target.dim() != 1 or log_model_noise.dim() != 2 or log_model_noise.shape[0] != n:
        raise ValueError(f"expected log_model_target (N,) and log_model_noise (N, k), got "
                         f"{tuple(log_model_target.shape)} and {tuple(log_model_noise.shape)}")
    k = log_model_noise.shape[1]
    if k < 1:
        raise ValueError("need at least one noise sample (k ≥ 1)")
    if log_q_noise.shape not in ((k,), (n, k)):
        raise ValueError(f"log_q_noise must be ({k},) or ({n}, {k}), got {tuple(log_q_noise.shape)}")
    if hits is not None and hits.shape != (n, k):
        raise ValueError(f"hits must be ({n}, {k}), got {tuple(hits.shape)}")


def full_softmax_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Exact cross-entropy −log softmax(logits)[target].

    Args:
        logits: (N, V) scores s.  target: (N,) indices.
    Returns:
        (N,) losses.
    """
    return F.cross_entropy(_upcast(logits), target, reduction="none")


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: the precision of the chunked loss's arithmetic."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_scores(h: Tensor, weight: Tensor, bias: Tensor | None, start: int, stop: int) -> Tensor:
    """s = h·W[start:stop]ᵀ + b[start:stop], (N, H) → (N, C) in h's dtype."""
    return F.linear(h, weight[start:stop].to(h.dtype), None if bias is None else bias[start:stop].to(h.dtype))


class _ChunkedCrossEntropy(torch.autograd.Function):
    """−log softmax(h Wᵀ + b)[t] with at most (N × chunk) scores alive at a time, forward and backward.

    Forward: a running logsumexp over vocabulary chunks gives log Z (N,); saved: h, W, b, t, log Z.
    Backward (g = ∂L/∂loss, (N,)): each chunk's softmax P = exp(s − log Z) is recomputed and
        ∂L/∂h = Σ_chunks (g·P) W_c − g·W_t,    ∂L/∂W_c = (g·P)ᵀ h − [rows t] g·h,    ∂L/∂b_c = Σ_n g·P − [t] g.
    Autocast is switched off inside: the arithmetic is float32 (float64 for float64 inputs).
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk: int) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(_compute_dtype(h, weight))  # (N, H)
            log_z = hc.new_full((hc.shape[0],), -math.inf)  # (N,)
            for start in range(0, weight.shape[0], chunk):
                scores = _chunk_scores(hc, weight, bias, start, start + chunk)  # (N, C)
                log_z = torch.logaddexp(log_z, scores.logsumexp(dim=-1))
            score_target = (hc * weight[target].to(hc.dtype)).sum(-1)  # (N,)
            if bias is not None:
                score_target = score_target + bias[target].to(hc.dtype)
        ctx.save_for_backward(h, weight, bias, target, log_z)
        ctx.chunk = chunk
        return log_z - score_target

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        h, weight, bias, target, log_z = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(h.device.type, enabled=False):
            hc = h.to(log_z.dtype)
            g = grad.to(log_z.dtype)  # (N,)
            grad_h = torch.zeros_like(hc) if need_h else None  # (N, H)
            grad_w = torch.zeros(weight.shape, dtype=hc.dtype, device=hc.device) if need_w else None  # (V, H)
            grad_b = torch.zeros(weight.shape[0], dtype=hc.dtype, device=hc.device) if need_b else None  # (V,)
            for start in range(0, weight.shape[0], ctx.chunk):
                stop = start + ctx.chunk
                probs = _chunk_scores(hc, weight, bias, start, stop).sub_(log_z[:, None]).exp_().mul_(g[:, None])
                if need_h:
                    grad_h.addmm_(probs, weight[start:stop].to(hc.dtype))  # (N, C) × (C, H)
                if need_w:
                    grad_w[start:stop] = probs.t() @ hc  # (C, N) × (N, H)
                if need_b:
                    grad_b[start:stop] = probs.sum(0)
            if need_h:
                grad_h.sub_(g[:, None] * weight[target].to(hc.dtype))
            if need_w:
                grad_w.index_add_(0, target, -g[:, None] * hc)
            if need_b:
                grad_b.index_add_(0, target, -g)
        return (None if grad_h is None else grad_h.to(h.dtype), None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def chunked_cross_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor, chunk_size: int
) -> Tensor:
    """The exact cross-entropy −log softmax(h Wᵀ + b)[t] without the [N × V] scores, forward or backward.

    loss_n = logsumexp_w (h_n·W_w + b_w) − (h_n·W_{t_n} + b_{t_n}), the log-sum-exp accumulated over vocabulary
    chunks of ``chunk_size`` rows; the backward pass recomputes each chunk's softmax (one extra (N × V × H)
    product) and accumulates ∂h and ∂W chunk by chunk. Memory: O(N·chunk_size) scores plus the dense gradient of
    W (V, H), instead of three (N, V) tensors (scores, log-softmax, its gradient).

    Args:
        hidden: (N, H).  weight: (V, H).  bias: (V,) or None.  target: (N,) indices in [0, V).
        chunk_size: vocabulary rows per chunk (any positive size; the last chunk may be shorter).
    Returns:
        (N,) losses, float32 (float64 for float64 inputs), differentiable in hidden, weight and bias.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (N, H) and weight (V, H), got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if target.shape != hidden.shape[:1] or (bias is not None and bias.shape != weight.shape[:1]):
        raise ValueError(f"expected target ({hidden.shape[0]},) and bias ({weight.shape[0]},), got "
                         f"{tuple(target.shape)} and {None if bias is None else tuple(bias.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    return _ChunkedCrossEntropy.apply(hidden, weight, bias, target.long(), int(chunk_size))


def nce_loss(
    log_model_target: Tensor,
    log_model_noise: Tensor,
    log_q_target: Tensor,
    log_q_noise: Tensor,
    hits: Tensor | None = None,
) -> Tensor:
    """Binary NCE with k noise samples per token (Mnih & Teh 2012).

    G(w) = log p̃(w) − log q(w) − log k;   loss_n = −log σ(G(t_n)) − Σ_j log σ(−G(y_nj)).

    Args:
        log_model_target: (N,) log p̃ of the targets.  log_model_noise: (N, k) log p̃ of the noise tokens.
        log_q_target: (N,) noise log-probabilities of the targets.  log_q_noise: (k,) or (N, k).
        hits: optional (N, k) bool, noise samples to remove (accidental hits).
    Returns:
        (N,) losses.
    """
    _check(log_model_target, log_model_noise, log_q_noise, hits)
    k = log_model_noise.shape[1]
    logit_target = nce_logit(_upcast(log_model_target), log_q_target, k)  # (N,)
    logit_noise = nce_logit(_upcast(log_model_noise), log_q_noise, k)  # (N, k)
    if hits is not None:
        logit_noise = logit_noise.masked_fill(hits, -math.inf)  # log σ(+∞) = 0: the term vanishes
    return nce_token_loss(logit_target, logit_noise)


def sampled_softmax_loss(
    log_model_target: Tensor,
    log_model_noise: Tensor,
    log_q_target: Tensor,
    log_q_noise: Tensor,
    hits: Tensor | None = None,
) -> Tensor:
    """Sampled softmax with the log q correction (Jean et al. 2015), i.e. ranking NCE (Ma & Collins 2018).

    loss_n = −o_t + logsumexp(o_t, o_1, …, o_k),   o = log p̃ − log q   (hits get o = −∞),

    computed by ``ebm.nce.ranking_nce_loss``. Shapes as in ``nce_loss``. The normaliser cancels, so log p̃
    and s give the same loss.
    """
    _check(log_model_target, log_model_noise, log_q_noise, hits)
    logit_target = _upcast(log_model_target) - log_q_target  # (N,)
    logit_noise = _upcast(log_model_noise) - log_q_noise  # (N, k)
    if hits is not None:
        logit_noise = logit_noise.masked_fill(hits, -math.inf)  # e^{−∞} = 0: the item leaves the softmax
    return ranking_nce_loss(logit_target, logit_noise)


def negative_sampling_loss(
    log_model_target: Tensor,
    log_model_noise: Tensor,
    log_q_target: Tensor,
    log_q_noise: Tensor,
    hits: Tensor | None = None,
) -> Tensor:
    """Negative sampling (Mikolov et al. 2013): NCE with G = log p̃, the log(k·q) term dropped.

    loss_n = −log σ(log p̃(t_n)) − Σ_j log σ(−log p̃(y_nj)). `log_q_*` are accepted for a uniform
    signature and only checked. Biased as an estimator of p (see the module docstring).
    """
    _check(log_model_target, log_model_noise, log_q_noise, hits)
    logit_noise = _upcast(log_model_noise)
    if hits is not None:
        logit_noise = logit_noise.masked_fill(hits, -math.inf)
    return nce_token_loss(_upcast(log_model_target), logit_noise)


def mix_loss(
    log_model_target: Tensor,
    log_model_noise: Tensor,
    log_q_target: Tensor,
    log_q_noise: Tensor,
    hits: Tensor | None = None,
) -> Tensor:
    """½·nce + ½·sampled on the same samples (the seed's "mix")."""
    args = (log_model_target, log_model_noise, log_q_target, log_q_noise, hits)
    return 0.5 * nce_loss(*args) + 0.5 * sampled_softmax_loss(*args)


SampledLoss = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]

SAMPLED_LOSSES: dict[str, SampledLoss] = {
    "nce": nce_loss,
    "sampled": sampled_softmax_loss,
    "neg": negative_sampling_loss,
    "mix": mix_loss,
}


def check_loss_name(name: str) -> str:
    """Returns `name` if it is one of LOSS_NAMES, else raises a ValueError listing them."""
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return name


__all__ = [
    "LOSS_NAMES",
    "MODEL_LOSS_NAMES",
    "SAMPLED_LOSSES",
    "check_loss_name",
    "chunked_cross_entropy",
    "full_softmax_loss",
    "mix_loss",
    "negative_sampling_loss",
    "nce_loss",
    "sampled_softmax_loss",
]
