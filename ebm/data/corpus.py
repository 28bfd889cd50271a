"""Text corpora for the language model: vocabulary, tokenised splits and batching.

A corpus is a folder with ``train.txt``, ``valid.txt`` and ``test.txt`` (the PTB / WikiText-2 layout): one
sentence or paragraph per line, tokens separated by white space. Files are read as the field's reference code
reads them (PyTorch's examples/word_language_model): every line, blank ones included, becomes its white-space
tokens followed by the end-of-sentence token ``<eos>`` (a blank line is a lone ``<eos>``). Lines are what
Python's text-mode file iteration gives: they end at ``\n``, ``\r\n`` or ``\r`` only (not at the other
characters ``str.splitlines`` breaks on, such as U+2028, U+0085 or ``\x1c``; those separate tokens within a
line, as all white space does); a last line without a newline is a line, and a final newline adds no empty
one. WikiText-2 then has 217,646 tokens in valid.txt and 245,569 in test.txt, as in that example. A split
needs at least 2 tokens (one to predict after another); an empty file or a shorter split is a ``ValueError``
naming the file. The vocabulary comes from the training split only; every other word maps to ``<unk>``.

Two ways to batch a split:

* concatenated (fast): the whole stream is cut into ``B`` contiguous rows (``batchify``) and read in
  ``bptt``-long chunks (``bptt_chunks``); the recurrent state is carried from one chunk to the next;
* sentences (``sentence_batches``): each sentence is its own sequence, padded to the longest in the batch,
  with a mask of the real positions; the input starts with ``<eos>`` (as a start token).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

UNK = "<unk>"
EOS = "<eos>"
SPLITS = ("train", "valid", "test")
MIN_SPLIT_TOKENS = 2  # the shortest split a model can be trained or evaluated on: one token predicted
_REPLACEMENT = "\ufffd"


class Vocabulary:
    """Words ↔ indices, with the training count of every word (the unigram noise is built from them).

    Built by ``from_counts`` the words are sorted by decreasing count (ties by the word), so index = frequency
    rank, as the log-uniform noise assumes. ``<unk>`` and ``<eos>`` are always present.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int] | Tensor):
        if len(words) != len(counts):
            raise ValueError(f"{len(words)} words but {len(counts)} counts")
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary holds a word twice")
        if UNK not in words or EOS not in words:
            raise ValueError(f"the vocabulary must contain {UNK} and {EOS}")
        self.words: tuple[str, ...] = tuple(words)
        self.counts: Tensor = torch.as_tensor(counts, dtype=torch.long).clone()  # (V,)
        self.index_of: dict[str, int] = {w: i for i, w in enumerate(self.words)}
        self.unk_index = self.index_of[UNK]
        self.eos_index = self.index_of[EOS]

    @classmethod
    def from_counts(cls, counter: Counter[str], min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """Keep the words seen at least ``min_freq`` times, at most ``max_size`` entries in all.

        ``counter`` counts the training tokens, ``<eos>`` included. The count of ``<unk>`` becomes its own
        count plus those of all dropped words, so the counts still sum to the number of training tokens.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}")
        if max_size is not None and max_size < 2:
            raise ValueError(f"max_size must be at least 2 (for {UNK} and {EOS}), got {max_size}")
        regular = sorted(((w, c) for w, c in counter.items() if w not in (UNK, EOS)), key=lambda wc: (-wc[1], wc[0]))
        kept = [(w, c) for w, c in regular if c >= min_freq]
        if max_size is not None:
            kept = kept[: max_size - 2]
        n_unk = sum(counter.values()) - counter[EOS] - sum(c for _, c in kept)
        entries = sorted([*kept, (UNK, n_unk), (EOS, counter[EOS])], key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in entries], [c for _, c in entries])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Iterable[str]) -> Tensor:
        """Tokens → (N,) LongTensor of indices, unknown words as ``<unk>``."""
        get, unk = self.index_of.get, self.unk_index
        return torch.tensor([get(t, unk) for t in tokens], dtype=torch.long)

    def decode(self, indices: Iterable[int] | Tensor) -> list[str]:
        return [self.words[int(i)] for i in indices]


@dataclass
class Split:
    """One tokenised split: the concatenated stream and where each sentence starts.

    Sentence ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` and ends with ``<eos>``.
    """

    ids: Tensor  # (N,) long
    offsets: Tensor  # (S + 1,) long, offsets[0] = 0, offsets[-1] = N

    def __len__(self) -> int:
        return self.ids.numel()

    @property
    def num_sentences(self) -> int:
        return self.offsets.numel() - 1


@dataclass
class Corpus:
    """A vocabulary and its three splits; ``replaced`` counts undecodable bytes per split file.

    ``entropy_rate`` (nats per token) is set for the synthetic language, whose best possible perplexity is
    exp(entropy_rate).
    """

    name: str
    vocab: Vocabulary
    train: Split
    valid: Split
    test: Split
    replaced: dict[str, int] = field(default_factory=dict)
    entropy_rate: float | None = None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)


def split_lines(text: str) -> list[str]:
    """The lines of `text` as Python's text-mode file iteration gives them (universal newlines).

    A line ends at ``\n``, ``\r\n`` or ``\r``; a last line without a newline still counts, a final newline
    adds no empty line, and "" has no lines. Unlike ``str.splitlines`` nothing else ends a line (U+2028,
    U+2029, U+0085, ``\x0b``, ``\x0c``, ``\x1c``–``\x1e`` stay inside it).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the text ends with a newline (or is empty): no line follows it
        lines.pop()
    return lines


def read_lines(path: str | os.PathLike) -> tuple[list[list[str]], int]:
    """The white-space tokens of every line of a UTF-8 file (blank lines give []), and how many undecodable
    bytes were replaced.

    Lines as ``split_lines`` cuts them; tokens as ``str.split()`` cuts a line (on any Unicode white space).
    Bytes that are not valid UTF-8 become U+FFFD (the count excludes U+FFFD characters already in the file).
    A file with no lines at all (empty) is a ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing corpus file {path}")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode("utf-8"))
    lines = [line.split() for line in split_lines(text)]
    if not lines:
        raise ValueError(f"corpus file {path} is empty: it holds no lines")
    return lines, replaced


def encode_lines(lines: Sequence[Sequence[str]], vocab: Vocabulary) -> Split:
    """Lines of tokens → a ``Split`` with ``<eos>`` after each line (an empty line is a lone ``<eos>``)."""
    lengths = torch.tensor([len(line) + 1 for line in lines], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = vocab.encode(token for line in lines for token in (*line, EOS))
    return Split(ids=ids, offsets=offsets)


def load_corpus(folder: str | os.PathLike, min_freq: int = 1, max_size: int | None = None) -> Corpus:
    """Read ``train.txt``, ``valid.txt``, ``test.txt`` from ``folder``; the vocabulary comes from train.

    Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` naming an empty file or one whose split
    has fewer than ``MIN_SPLIT_TOKENS`` tokens (``<eos>`` included).
    """
    folder = Path(folder)
    for split in SPLITS:
        if not (folder / f"{split}.txt").is_file():
            raise FileNotFoundError(f"missing corpus file {folder / f'{split}.txt'}")
    lines, replaced = {}, {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        lines[split], replaced[split] = read_lines(path)
        tokens = sum(len(line) + 1 for line in lines[split])
        if tokens < MIN_SPLIT_TOKENS:
            raise ValueError(f"corpus file {path} gives {tokens} token (with {EOS}); a split needs at least "
                             f"{MIN_SPLIT_TOKENS}: one to predict after another")
    counter = Counter(token for line in lines["train"] for token in line)
    counter[EOS] += len(lines["train"])
    vocab = Vocabulary.from_counts(counter, min_freq=min_freq, max_size=max_size)
    splits = {split: encode_lines(lines[split], vocab) for split in SPLITS}
    return Corpus(name=folder.name, vocab=vocab, replaced=replaced, **splits)


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a (N,) stream into ``batch_size`` contiguous rows: (B, N // B); the last N mod B tokens are dropped."""
    _check_positive("batch_size", batch_size)
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
    token except the first of each row is a target exactly once.
    """
    _check_positive("bptt", bptt)
    length = data.size(1)
    for start in range(0, length - 1, bptt):
        steps = min(bptt, length - 1 - start)
        yield data[:, start : start + steps], data[:, start + 1 : start + 1 + steps]


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
    otherwise. ``max_length`` truncates longer sentences (their tail is not predicted).
    """
    _check_positive("batch_size", batch_size)
    if max_length is not None:
        _check_positive("max_length", max_length)
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
        target = torch.where(mask, split.ids[index], 0)
        previous = split.ids[(index - 1).clamp(min=0)]
        input_ = torch.where(positions == 0, eos_index, torch.where(mask, previous, 0))
        yield input_, target, mask


__all__ = [
    "EOS",
    "MIN_SPLIT_TOKENS",
    "SPLITS",
    "UNK",
    "Corpus",
    "Split",
    "Vocabulary",
    "batchify",
    "bptt_chunks",
    "encode_lines",
    "load_corpus",
    "num_chunks",
    "read_lines",
    "sentence_batches",
    "split_lines",
]
