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

Corpora of any size: ``load_corpus`` never holds a file's lines. Each file is read once in blocks of whole
lines and written as an int32 token file with int64 sentence offsets (``ebm.data.token_cache``), cached in
``<folder>/.ebm-cache/`` under a key made of the files' fingerprints (size, mtime, sampled SHA-1) and the
vocabulary options; later loads map those files into memory, so ``Split.ids`` is an int32 tensor over a
memory map (pages are read when used) and a 100M-token corpus loads in well under a second. Delete the
``.ebm-cache`` folder to clear the cache.

Two ways to batch a split:

* concatenated (fast): the whole stream is cut into ``B`` contiguous rows (``batchify``, a view: no copy) and
  read in ``bptt``-long chunks (``bptt_chunks``); the recurrent state is carried from one chunk to the next;
* sentences (``sentence_batches``): each sentence is its own sequence, padded to the longest in the batch,
  with a mask of the real positions; the input starts with ``<eos>`` (as a start token).

Both yield int64 (LongTensor) batches whatever the stream's dtype (int32 for a loaded corpus, int64 for the
synthetic one), so models and losses see one index type.
"""

from __future__ import annotations

import json
import os
from bisect import insort
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ebm.data.token_cache import (
    cache_root,
    count_ids,
    discard_entry,
    entry_key,
    fingerprint,
    normalize_newlines,
    open_array,
    read_entry,
    remap_ids,
    tokenize_file,
    write_entry,
)

UNK = "<unk>"
EOS = "<eos>"
SPLITS = ("train", "valid", "test")
MIN_SPLIT_TOKENS = 2  # the shortest split a model can be trained or evaluated on: one token predicted
_VOCAB_FILE = "vocab.json"


def _frequency_rank(entry: tuple[str, int]) -> tuple[int, str]:
    """Sort key of a (word, count) entry: decreasing count, ties by the word."""
    return -entry[1], entry[0]


def check_vocabulary_options(min_freq: int, max_size: int | None) -> None:
    """``ValueError`` unless min_freq ≥ 1 and max_size is None or ≥ 2 (room for <unk> and <eos>)."""
    if min_freq < 1:
        raise ValueError(f"min_freq must be at least 1, got {min_freq}")
    if max_size is not None and max_size < 2:
        raise ValueError(f"max_size must be at least 2 (for {UNK} and {EOS}), got {max_size}")


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
        check_vocabulary_options(min_freq, max_size)
        kept = sorted((w, c) for w, c in counter.items() if c >= min_freq and w not in (UNK, EOS))  # by word
        kept.sort(key=itemgetter(1), reverse=True)  # then by decreasing count (stable: ties stay sorted by word)
        if max_size is not None:
            del kept[max_size - 2 :]
        n_unk = sum(counter.values()) - counter[EOS] - sum(c for _, c in kept)
        for special in ((UNK, n_unk), (EOS, counter[EOS])):
            insort(kept, special, key=_frequency_rank)
        return cls([w for w, _ in kept], [c for _, c in kept])

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

    Sentence ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` and ends with ``<eos>``. A loaded corpus holds int32
    ids over a memory-mapped file (``ebm.data.token_cache``); tensors built in memory may be int64.
    """

    ids: Tensor  # (N,) int32 or int64
    offsets: Tensor  # (S + 1,) int64, offsets[0] = 0, offsets[-1] = N

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
    U+2029, U+0085, ``\x0b``, ``\x0c``, ``\x1c``–``\x1e`` stay inside it). ``load_corpus`` reads files by
    these rules without holding them (``ebm.data.token_cache.LineBlocks``).
    """
    lines = normalize_newlines(text).split("\n")
    if lines[-1] == "":  # the text ends with a newline (or is empty): no line follows it
        lines.pop()
    return lines


def encode_lines(lines: Sequence[Sequence[str]], vocab: Vocabulary) -> Split:
    """Lines of tokens → a ``Split`` (int64) with ``<eos>`` after each line (an empty line is a lone ``<eos>``)."""
    lengths = torch.tensor([len(line) + 1 for line in lines], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = vocab.encode(token for line in lines for token in (*line, EOS))
    return Split(ids=ids, offsets=offsets)


def load_corpus(
    folder: str | os.PathLike,
    min_freq: int = 1,
    max_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """Read ``train.txt``, ``valid.txt``, ``test.txt`` from ``folder``; the vocabulary comes from train.

    The first call for given files and options tokenises each file once (in blocks; memory does not grow with
    the corpus) into the cache ``cache_dir`` (default ``folder/.ebm-cache``, or the user's cache folder when
    ``folder`` is not writable); later calls map the cached files (int32 ``ids``, int64 ``offsets``) without
    reading the text. A text file that changes (size, mtime or sampled content), or other min_freq / max_size,
    gives another cache entry; an entry that fails its checks is rebuilt.

    Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` naming an empty file or one whose split
    has fewer than ``MIN_SPLIT_TOKENS`` tokens (``<eos>`` included), or bad min_freq / max_size.
    """
    folder = Path(folder)
    paths = {split: folder / f"{split}.txt" for split in SPLITS}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"missing corpus file {path}")
    check_vocabulary_options(min_freq, max_size)
    sources = {split: fingerprint(path) for split, path in paths.items()}
    key = entry_key({"sources": sources, "min_freq": min_freq, "max_size": max_size})
    root = Path(cache_dir) if cache_dir is not None else cache_root(folder)
    manifest = read_entry(root, key)
    corpus = _corpus_from_entry(folder.name, manifest) if manifest is not None else None
    if corpus is None:
        if manifest is not None:  # complete but inconsistent: it must not pass for a published entry
            discard_entry(root, key)
        manifest = write_entry(root, key, str(folder.resolve()), sources,
                               lambda staging: _tokenize_corpus(paths, sources, staging, min_freq, max_size))
        corpus = _corpus_from_entry(folder.name, manifest)
        if corpus is None:
            raise OSError(f"the corpus cache {manifest['path']} was written but does not read back")
    return corpus


def _tokenize_corpus(
    paths: dict[str, Path], sources: dict[str, Any], staging: Path, min_freq: int, max_size: int | None
) -> dict[str, Any]:
    """Write ``<split>.ids`` (int32), ``<split>.offsets`` (int64) and the vocabulary into ``staging``; returns
    the manifest's contents. Train comes first: its counts decide the vocabulary that maps every split."""
    arrays, splits, vocab = {}, {}, None
    for split in SPLITS:
        path, ids_path = paths[split], staging / f"{split}.ids"
        found = tokenize_file(path, ids_path, staging / f"{split}.offsets")
        if found.lines == 0:
            raise ValueError(f"corpus file {path} is empty: it holds no lines")
        if found.tokens < MIN_SPLIT_TOKENS:
            raise ValueError(f"corpus file {path} gives {found.tokens} token (with {EOS}); a split needs at least "
                             f"{MIN_SPLIT_TOKENS}: one to predict after another")
        if vocab is None:  # train: provisional id 0 is a line end (<eos>), k ≥ 1 is found.words[k - 1]
            counts = count_ids(ids_path, len(found.words) + 1).tolist()  # (W + 1,)
            counter = Counter(dict(zip(found.words, counts[1:], strict=True)))
            counter[EOS] += counts[0]
            vocab = Vocabulary.from_counts(counter, min_freq=min_freq, max_size=max_size)
        table = np.fromiter(map(vocab.index_of.get, found.words, repeat(vocab.unk_index)), dtype=np.int32,
                            count=len(found.words))
        remap_ids(ids_path, np.concatenate([[vocab.eos_index], table]))  # provisional id → vocabulary index
        if fingerprint(path) != sources[split]:
            raise ValueError(f"corpus file {path} changed while it was read; load the corpus again")
        arrays[f"{split}.ids"] = {"dtype": "int32", "count": found.tokens}
        arrays[f"{split}.offsets"] = {"dtype": "int64", "count": found.lines + 1}
        splits[split] = {"tokens": found.tokens, "sentences": found.lines, "replaced": found.replaced}
    vocabulary = {"words": list(vocab.words), "counts": vocab.counts.tolist()}
    (staging / _VOCAB_FILE).write_text(json.dumps(vocabulary), encoding="utf-8")
    return {"arrays": arrays, "splits": splits}


def _corpus_from_entry(name: str, manifest: dict[str, Any]) -> Corpus | None:
    """The corpus of a cache entry, its splits mapped from disk; None if the entry is inconsistent."""
    try:
        stored = json.loads((Path(manifest["path"]) / _VOCAB_FILE).read_text(encoding="utf-8"))
        vocab = Vocabulary(stored["words"], stored["counts"])
        splits = {split: Split(open_array(manifest, f"{split}.ids"), open_array(manifest, f"{split}.offsets"))
                  for split in SPLITS}
        train_tokens = manifest["splits"]["train"]["tokens"]
        replaced = {split: int(manifest["splits"][split]["replaced"]) for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if int(vocab.counts.sum()) != train_tokens or any(
        int(s.offsets[0]) != 0 or int(s.offsets[-1]) != len(s) for s in splits.values()
    ):
        return None
    return Corpus(name=name, vocab=vocab, replaced=replaced, **splits)


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
    token except the first of each row is a target exactly once. Chunks are int64 (a view of ``data`` when it
    is int64, a (B, T) copy when it is int32).
    """
    _check_positive("bptt", bptt)
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
        target = torch.where(mask, split.ids[index].long(), 0)
        previous = split.ids[(index - 1).clamp(min=0)].long()
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
    "check_vocabulary_options",
    "encode_lines",
    "load_corpus",
    "num_chunks",
    "sentence_batches",
    "split_lines",
]
