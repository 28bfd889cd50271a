"""The adaptive softmax (Grave et al. 2017) as an output layer with the interface of ``SampledOutput``.

PyTorch's ``nn.AdaptiveLogSoftmaxWithLoss`` splits the vocabulary, in order of decreasing frequency, at cutoffs
c₁ < c₂ < … into a head (the c₁ most frequent words plus one entry per tail cluster) and tail clusters
[c₁, c₂), [c₂, c₃), …, [c_last, V); cluster i scores its words from h projected to H / div^i dimensions:

    log p(w | h) = log softmax(head(h))[w]                                         w in the head,
    log p(w | h) = log softmax(head(h))[cluster i] + log softmax(tail_i(h))[w − c_i]   w in cluster i.

It is an exact normalised model (the probabilities of all V words sum to 1), so its per-token NLL is the exact
evaluation score and there is no self-normalisation gap. Training costs O(H·(c₁ + clusters)) per token plus
O((H/div^i)·|cluster i|) for the tokens whose target falls in cluster i; all gradients are dense.

PyTorch's module expects frequent words first; ``ebm.data.corpus.Vocabulary`` does not promise that (the
synthetic language's ids, for one, are not in frequency order), so the layer keeps ``rank`` (V,), the
permutation from word id to frequency rank (by decreasing training count, ties by id), and maps targets
through it.

Weight tying is refused: the head and the tails have their own matrices in rank order and reduced dimensions,
none of which is a (V, E) input embedding (``AdaptiveOutput`` has no ``weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

AUTO_CUTOFF_FRACTIONS = (1 / 16, 1 / 4)


def adaptive_cutoffs(spec: str | Sequence[int], vocab_size: int) -> list[int]:
    """The cluster boundaries (frequency ranks) for a vocabulary of ``vocab_size`` words.

    ``spec`` "auto": round(f·V) for f in ``AUTO_CUTOFF_FRACTIONS`` (1/16, 1/4: a head of the V/16 most
    frequent words, then two tail clusters; e.g. 2,080 and 8,320 at V = 33,278, 62,500 and 250,000 at V = 1M),
    dropping values below 1 or ≥ V and duplicates, and [V // 2] when none is left. Otherwise a comma-separated
    string ("2000,10000") or a sequence of ints, strictly increasing, each in [1, V).
    """
    if vocab_size < 2:
        raise ValueError(f"the adaptive softmax needs a vocabulary of at least 2 words, got {vocab_size}")
    if spec == "auto":
        cutoffs = sorted({round(f * vocab_size) for f in AUTO_CUTOFF_FRACTIONS} - {0})
        return [c for c in cutoffs if c < vocab_size] or [vocab_size // 2]
    cutoffs = parse_cutoffs(spec) if isinstance(spec, str) else [int(c) for c in spec]
    if not cutoffs or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size or any(a >= b for a, b in pairwise(cutoffs)):
        raise ValueError(f"adaptive cutoffs must be strictly increasing integers in [1, {vocab_size}) (the "
                         f"vocabulary size), got {cutoffs}")
    return cutoffs


def parse_cutoffs(text: str) -> list[int]:
    """ "2000,10000" → [2000, 10000]; a ValueError naming the format otherwise."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"adaptive cutoffs must be 'auto' or comma-separated integers such as '2000,10000', "
                         f"got {text!r}") from None


def frequency_ranks(counts: Tensor) -> Tensor:
    """rank (V,): rank[w] = position of word w in order of decreasing count (ties by id); 0 = most frequent."""
    order = torch.sort(-counts.long(), stable=True).indices  # word ids by decreasing count
    return torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel()))


class AdaptiveOutput(nn.Module):
    """``nn.AdaptiveLogSoftmaxWithLoss`` over word ids in any order, called as the models call ``SampledOutput``.

    Args:
        in_features: H, the size of the features.
        vocab_size: V.
        counts: (V,) training counts of the words: the frequency ranks the clusters are cut at.
        cutoffs: "auto", "c1,c2,…" or a sequence of ints (frequency ranks; see ``adaptive_cutoffs``).
        div_value: cluster i projects h to H / div_value^i dimensions (PyTorch's default 4).
        head_bias: a bias in the head (PyTorch's default is none; the tails never have one).

    Buffers: ``rank`` (V,) word id → frequency rank. Parameters: those of ``self.adaptive`` (all dense).
    Shapes: hidden (..., H) with target (...).
    """

    loss = "adaptive"  # the training loss, as SampledOutput.loss names its own

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        counts: Tensor,
        cutoffs: str | Sequence[int] = "auto",
        div_value: float = 4.0,
        head_bias: bool = True,
    ) -> None:
        super().__init__()
        if counts.shape != (vocab_size,):
            raise ValueError(f"counts must have shape ({vocab_size},), got {tuple(counts.shape)}")
        if not div_value > 0:
            raise ValueError(f"div_value must be positive, got {div_value}")
        self.in_features, self.vocab_size = in_features, vocab_size
        self.cutoffs = adaptive_cutoffs(cutoffs, vocab_size)
        self.register_buffer("rank", frequency_ranks(counts))
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(in_features, vocab_size, self.cutoffs, div_value, head_bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, vocab_size={self.vocab_size}, cutoffs={self.cutoffs}"

    def sparse_parameters(self) -> list[nn.Parameter]:
        """None: every gradient of the adaptive softmax is dense."""
        return []

    def _flatten(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if hidden.shape[-1] != self.in_features or target.shape != hidden.shape[:-1]:
            raise ValueError(f"expected hidden (..., {self.in_features}) and target (...) of the same leading "
                             f"shape, got {tuple(hidden.shape)} and {tuple(target.shape)}")
        return hidden.reshape(-1, self.in_features), self.rank[target.reshape(-1).long()]  # (N, H), (N,) ranks

    def log_prob_target(self, hidden: Tensor, target: Tensor) -> Tensor:
        """log p(target | h), exact: (..., H), (...) → (...) float32."""
        h, rank = self._flatten(hidden, target)
        return self.adaptive(h, rank).output.float().reshape(target.shape)

    def forward(
        self, hidden: Tensor, target: Tensor, reduction: str = "mean", generator: torch.Generator | None = None
    ) -> Tensor:
        """−log p(target | h): reduction "mean" (scalar), "sum" or "none" (target's shape). ``generator`` is
        accepted for the interface of ``SampledOutput`` and unused (nothing is sampled)."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        losses = -self.log_prob_target(hidden, target)
        if reduction == "none":
            return losses
        return losses.sum() if reduction == "sum" else losses.mean()

    def nll_and_gap(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, None]:
        """Exact −log p(target | h) (...) and no self-normalisation gap (None): the model is normalised."""
        return -self.log_prob_target(hidden, target), None

    def log_prob(self, hidden: Tensor) -> Tensor:
        """log p(w | h) of every word, in word-id order: (..., H) → (..., V). Builds the (N, V) table: small V only."""
        h = hidden.reshape(-1, self.in_features)
        return self.adaptive.log_prob(h)[:, self.rank].reshape(*hidden.shape[:-1], self.vocab_size)


__all__ = ["AUTO_CUTOFF_FRACTIONS", "AdaptiveOutput", "adaptive_cutoffs", "frequency_ranks", "parse_cutoffs"]
