"""Batching a tokenised split (``ebm.data.corpus.Split``) for training and evaluation.

Two ways:

* concatenated (fast): the whole stream is cut into ``B`` contiguous rows (``batchify``, a view: no copy) and
  read in ``bptt``-long chunks (``bptt_chunks``); the recurrent state is carried from one chunk to the next;
* sentences (``sentence_batches``): each sentence is its own sequence, padded to the longest in the batch,
  with a mask of the real positions; the input starts with ``<eos>`` (as a start token).

Both yield int64 (LongTensor) batches whatever the stream's dtype (int32 for a loaded corpus, int64 for the
synthetic one), so models and losses see one index type. ``ebm.data.corpus`` re-exports these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ebm.utils.checks import positive_int

if TYPE_CHECKING:
    from ebm.data.corpus import Split


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a (N,) stream into ``batch_size`` contiguous rows: (B, N // B); the last N mod B tokens are dropped."""
    positive_int("batch_size", batch_size)
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(f"a stream of {ids.numel()} tokens is too short for batch size {batch_size}")
    return ids[: length * batch_size].view(batch_size, length)


def num_chunks(length: int, bptt: int) -> int:
    """How many chunks ``bptt_chunks`` yields for rows of ``length`` tokens."""
    return -(-(length - 1) // bptt)


def bptt_chunks(data: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (input, target) chunks of a batchified stream, each (B, T) with T ≤ bptt.

    Target = input shifted by one token, so chunk i covers inputs ``data[:, i·bptt : i·bptt + T]``; every
    token except the first of each row is a target exactly once. Chunks are int64 (a view of ``data`` when it
    is int64, a (B, T) copy when it is int32).
    """
    positive_int("bptt", bptt)
    length = data.size(1)
    for start in range(0, length - 1, bptt):
        steps = min(bptt, length - 1 - start)
        yield data[:, start : start + steps].long(), data[:, start + 1 : start + 1 + steps].long()


def sentence_batches(
    split: Split,
    batch_size: int,
    eos_index: int,
    generator: torch.Generator | None = None,
    max_length: int | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Batches of whole sentences: (input, target, mask), each (B, T), T = longest sentence in the batch.

    A sentence w₁ … wₙ <eos> gives input <eos> w₁ … wₙ and target w₁ … wₙ <eos>; padded positions hold
    index 0 and mask False. Sentences come in a random order when ``generator`` is given, in file order
    otherwise. ``max_length`` truncates longer sentences (their tail is not predicted). Input and target are
    int64 whatever the dtype of ``split.ids``.
    """
    positive_int("batch_size", batch_size)
    if max_length is not None:
        positive_int("max_length", max_length)
    n = split.num_sentences
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    starts, ends = split.offsets[:-1], split.offsets[1:]
    for first in range(0, n, batch_size):
        chosen = order[first : first + batch_size]
        lengths = ends[chosen] - starts[chosen]  # (B,)
        if max_length is not None:
            lengths = lengths.clamp(max=max_length)
        steps = int(lengths.max())
        positions = torch.arange(steps)  # (T,)
        mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        index = (starts[chosen].unsqueeze(1) + positions).clamp(max=len(split) - 1)  # (B, T)
        target = torch.where(mask, split.ids[index].long(), 0)
        previous = split.ids[(index - 1).clamp(min=0)].long()
        input_ = torch.where(positions == 0, eos_index, torch.where(mask, previous, 0))
        yield input_, target, mask


__all__ = ["batchify", "bptt_chunks", "num_chunks", "sentence_batches"]
