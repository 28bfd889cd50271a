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

The test text is read only when it is scored: ``load_corpus`` checks that ``test.txt`` exists and is not empty
(its size, from the file system) but opens it first when ``corpus.test`` is first used, usually for the final
score after training, so no choice made during training (learning-rate halvings, early stops, the norm's
calibration) can see it. ``ebm.data.layout.heldout_layout`` lays out corpora that have no training file
(WikiText-2 as shipped here) the same way.

Corpora of any size: ``load_corpus`` never holds a file's lines. Each file is read once in blocks of whole
lines and written as an int32 token file with int64 sentence offsets (``ebm.data.token_cache``), cached in
``<folder>/.ebm-cache/`` under a key made of the files' fingerprints (size, mtime, sampled SHA-1) and the
vocabulary options; later loads map those files into memory, so ``Split.ids`` is an int32 tensor over a
memory map (pages are read when used) and a 100M-token corpus loads in well under a second. The test split has
an entry of its own, keyed by the vocabulary's entry and test.txt's fingerprint and built on first use. Delete
the ``.ebm-cache`` folder to clear the cache.

Batching a split (``batchify``, ``bptt_chunks``, ``num_chunks``, ``sentence_batches``) lives in
``ebm.data.batching``; this module re-exports it.
"""

from __future__ import annotations

import json
import os
from bisect import insort
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ebm.data.batching import batchify, bptt_chunks, num_chunks, sentence_batches
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
_VOCAB_SPLITS = ("train", "valid")  # the splits of the vocabulary's cache entry; test has an entry of its own
_VOCAB_FILE = "vocab.json"
_T = TypeVar("_T")


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


class Corpus:
    """A vocabulary and its three splits; ``replaced`` counts undecodable bytes per split file.

    ``test`` is a ``Split``, or a function giving (the test split, its file's undecodable bytes) that is called
    when ``corpus.test`` is first read (``load_corpus`` passes one, so the test text stays unread until it is
    scored; ``test_loaded`` says whether it has been read). ``replaced`` holds "test" from then on.
    ``entropy_rate`` (nats per token) is set for the synthetic language, whose best possible perplexity is
    exp(entropy_rate).
    """

    def __init__(
        self,
        name: str,
        vocab: Vocabulary,
        train: Split,
        valid: Split,
        test: Split | Callable[[], tuple[Split, int]],
        replaced: dict[str, int] | None = None,
        entropy_rate: float | None = None,
    ):
        self.name, self.vocab, self.train, self.valid = name, vocab, train, valid
        self.replaced: dict[str, int] = {} if replaced is None else replaced
        self.entropy_rate = entropy_rate
        self._test = test

    @property
    def test_loaded(self) -> bool:
        return isinstance(self._test, Split)

    @property
    def test(self) -> Split:
        """The test split, read from its file (or its cache entry) the first time it is asked for."""
        if not isinstance(self._test, Split):
            self._test, self.replaced["test"] = self._test()
        return self._test

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        test = f"{len(self.test):,} tokens" if self.test_loaded else "not read yet"
        return (f"Corpus({self.name!r}, V={len(self.vocab):,}, train {len(self.train):,} tokens, valid "
                f"{len(self.valid):,} tokens, test {test})")


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
    """Read ``train.txt`` and ``valid.txt`` from ``folder``, and ``test.txt`` when ``corpus.test`` is first used.

    The vocabulary comes from train. The first call for given files and options tokenises each file once (in
    blocks; memory does not grow with the corpus) into the cache ``cache_dir`` (default ``folder/.ebm-cache``, or
    the user's cache folder when ``folder`` is not writable); later calls map the cached files (int32 ``ids``,
    int64 ``offsets``) without reading the text. A text file that changes (size, mtime or sampled content), or
    other min_freq / max_size, gives another cache entry; an entry that fails its checks is rebuilt. The test
    split is cached the same way, in an entry of its own made the first time ``corpus.test`` is read; here
    test.txt is only looked up in the file system (it must exist and not be empty), never opened.

    Raises ``FileNotFoundError`` naming a missing file, ``ValueError`` naming an empty file or one whose split
    has fewer than ``MIN_SPLIT_TOKENS`` tokens (``<eos>`` included; for test.txt when it is first read), or bad
    min_freq / max_size.
    """
    folder = Path(folder)
    paths = {split: folder / f"{split}.txt" for split in SPLITS}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"missing corpus file {path}")
    if paths["test"].stat().st_size == 0:
        raise ValueError(f"corpus file {paths['test']} is empty: it holds no lines")
    check_vocabulary_options(min_freq, max_size)
    sources = {split: fingerprint(paths[split]) for split in _VOCAB_SPLITS}
    key = entry_key({"sources": sources, "min_freq": min_freq, "max_size": max_size})
    root, group = Path(cache_dir) if cache_dir is not None else cache_root(folder), str(folder.resolve())

    def fill(staging: Path) -> dict[str, Any]:
        manifest: dict[str, Any] = {"arrays": {}, "splits": {}}
        vocab = _tokenize_split(paths["train"], sources["train"], staging, manifest, None, min_freq, max_size)
        _tokenize_split(paths["valid"], sources["valid"], staging, manifest, vocab)
        (staging / _VOCAB_FILE).write_text(json.dumps({"words": list(vocab.words), "counts": vocab.counts.tolist()}),
                                           encoding="utf-8")
        return manifest

    vocab, splits, replaced = _cached(root, key, group, sources, fill, _read_vocabulary_entry)
    return Corpus(folder.name, vocab, splits["train"], splits["valid"],
                  lambda: _load_test(paths["test"], root, key, vocab, group, sources), replaced)


def _load_test(
    path: Path, root: Path, vocab_key: str, vocab: Vocabulary, group: str, sources: dict[str, Any]
) -> tuple[Split, int]:
    """(the test split, undecodable bytes in its file): test.txt tokenised with ``vocab`` (the entry
    ``vocab_key``), cached in an entry keyed by that entry and test.txt's fingerprint."""
    source = fingerprint(path)
    key = entry_key({"vocabulary": vocab_key, "test": source})

    def fill(staging: Path) -> dict[str, Any]:
        manifest: dict[str, Any] = {"arrays": {}, "splits": {}}
        _tokenize_split(path, source, staging, manifest, vocab)
        return manifest

    def read(manifest: dict[str, Any]) -> tuple[Split, int] | None:
        splits = _open_splits(manifest, ("test",))
        return None if splits is None else (splits["test"], int(manifest["splits"]["test"]["replaced"]))

    return _cached(root, key, f"{group} (test)", {**sources, "test": source}, fill, read)


def _cached(
    root: Path, key: str, group: str, sources: dict[str, Any], fill: Callable[[Path], dict[str, Any]],
    read: Callable[[dict[str, Any]], _T | None],
) -> _T:
    """``read``'s view of cache entry ``key`` (``write_entry``'s arguments), built by ``fill`` when the entry is
    absent or ``read`` finds it inconsistent (returns None)."""
    manifest = read_entry(root, key)
    found = read(manifest) if manifest is not None else None
    if found is None:
        if manifest is not None:  # complete but inconsistent: it must not pass for a published entry
            discard_entry(root, key)
        manifest = write_entry(root, key, group, sources, fill)
        found = read(manifest)
        if found is None:
            raise OSError(f"the corpus cache {manifest['path']} was written but does not read back")
    return found


def _tokenize_split(
    path: Path, source: dict[str, Any], staging: Path, manifest: dict[str, Any], vocab: Vocabulary | None,
    min_freq: int = 1, max_size: int | None = None,
) -> Vocabulary:
    """Write ``<split>.ids`` (int32 vocabulary indices) and ``<split>.offsets`` (int64) of the split file
    ``path`` into ``staging`` and describe them in ``manifest``; returns the vocabulary, made from this file's
    counts when ``vocab`` is None (the training split). ``source``: the file's fingerprint when it was keyed."""
    split = path.stem
    ids_path = staging / f"{split}.ids"
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
    if fingerprint(path) != source:
        raise ValueError(f"corpus file {path} changed while it was read; load the corpus again")
    manifest["arrays"][f"{split}.ids"] = {"dtype": "int32", "count": found.tokens}
    manifest["arrays"][f"{split}.offsets"] = {"dtype": "int64", "count": found.lines + 1}
    manifest["splits"][split] = {"tokens": found.tokens, "sentences": found.lines, "replaced": found.replaced}
    return vocab


def _open_splits(manifest: dict[str, Any], names: Sequence[str]) -> dict[str, Split] | None:
    """The named splits of a cache entry, mapped from disk; None if the entry is inconsistent."""
    try:
        splits = {name: Split(open_array(manifest, f"{name}.ids"), open_array(manifest, f"{name}.offsets"))
                  for name in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(int(s.offsets[0]) != 0 or int(s.offsets[-1]) != len(s) for s in splits.values()):
        return None
    return splits


def _read_vocabulary_entry(
    manifest: dict[str, Any],
) -> tuple[Vocabulary, dict[str, Split], dict[str, int]] | None:
    """(vocabulary, train and valid splits, undecodable bytes per file) of a cache entry; None if inconsistent."""
    splits = _open_splits(manifest, _VOCAB_SPLITS)
    try:
        stored = json.loads((Path(manifest["path"]) / _VOCAB_FILE).read_text(encoding="utf-8"))
        vocab = Vocabulary(stored["words"], stored["counts"])
        replaced = {split: int(manifest["splits"][split]["replaced"]) for split in _VOCAB_SPLITS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if splits is None or int(vocab.counts.sum()) != len(splits["train"]):
        return None
    return vocab, splits, replaced


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
