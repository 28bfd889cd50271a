"""Vocabulary, tokenised splits, the token cache and batching, on small files.

The reference for reading is PyTorch's word_language_model: text-mode iteration over the file (universal
newlines), every line's ``split()`` plus ``<eos>``; undecodable bytes as a whole-file ``decode(errors="replace")``
counts them. ``reference_corpus`` computes that directly, and the streaming reader with its cache must match it
token for token, whatever the block size it reads with.
"""

import json
import os
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import ebm.data.corpus as corpus_module
from ebm.data import token_cache
from ebm.data.corpus import (
    EOS,
    SPLITS,
    UNK,
    Split,
    Vocabulary,
    batchify,
    bptt_chunks,
    encode_lines,
    load_corpus,
    num_chunks,
    sentence_batches,
    split_lines,
)
from ebm.data.token_cache import CACHE_DIR_NAME, LineBlocks


def write_corpus(folder, train="a b a c\n\na b\n", valid="a d\n", test="b a\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        (folder / f"{name}.txt").write_bytes(data)
    return folder


class OpenGuard:
    """Opens of one file, seen through the interpreter's audit hook (PEP 578: ``open``, ``io.open``, ``os.open``,
    ``Path.read_*`` and numpy's file readers all raise the "open" event). While ``locked``, opening the file
    raises ``PermissionError`` (the tests run as root, which file modes do not stop); ``opens`` counts opens."""

    def __init__(self, path):
        self.path, self.locked, self.opens = os.path.realpath(path), True, 0

    def saw(self, path):
        if path == self.path:
            if self.locked:
                raise PermissionError(f"{self.path} opened while it must stay unread")
            self.opens += 1


_GUARDS = []


def _audit(event, args):
    if event == "open" and _GUARDS and isinstance(args[0], str | bytes | os.PathLike):
        path = os.path.realpath(os.fsdecode(args[0]))  # a link to the file counts as the file
        for guard in _GUARDS:
            guard.saw(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one acts only inside ``guarded``


@contextmanager
def guarded(path):
    """An ``OpenGuard`` of ``path`` (locked) for the duration of the block."""
    guard = OpenGuard(path)
    _GUARDS.append(guard)
    try:
        yield guard
    finally:
        _GUARDS.remove(guard)


def reference_corpus(folder, min_freq=1, max_size=None):
    """(vocab, {split: ids}, {split: offsets}, {split: replaced}) read as word_language_model reads files."""
    lines, replaced = {}, {}
    for split in SPLITS:
        path = folder / f"{split}.txt"
        with open(path, encoding="utf-8", errors="replace") as f:  # text mode: lines end at \n, \r\n, \r
            lines[split] = [line.split() + [EOS] for line in f]
        raw = path.read_bytes()
        replaced[split] = raw.decode("utf-8", errors="replace").count("\ufffd") - raw.count("\ufffd".encode())
    vocab = Vocabulary.from_counts(Counter(t for line in lines["train"] for t in line), min_freq, max_size)
    ids = {s: [vocab.index_of.get(t, vocab.unk_index) for line in lines[s] for t in line] for s in SPLITS}
    offsets = {s: np.concatenate([[0], np.cumsum([len(line) for line in lines[s]])]).tolist() for s in SPLITS}
    return vocab, ids, offsets, replaced


def assert_matches_reference(corpus, folder, min_freq=1, max_size=None):
    vocab, ids, offsets, replaced = reference_corpus(folder, min_freq, max_size)
    assert corpus.vocab.words == vocab.words
    assert corpus.vocab.counts.tolist() == vocab.counts.tolist()
    for split in SPLITS:
        assert corpus.split(split).ids.tolist() == ids[split], split
        assert corpus.split(split).offsets.tolist() == offsets[split], split
    assert corpus.replaced == replaced


def line_tokens(path, block_bytes=None):
    """The white-space tokens of each line as ``LineBlocks`` cuts the file."""
    return [line.split() for block in LineBlocks(path, block_bytes) for line in block.split("\n")[:-1]]


def test_vocabulary_counts_unk_and_order(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path))
    vocab = corpus.vocab
    # train: "a b a c <eos> <eos> a b <eos>" (the blank line is a lone <eos>)
    assert dict(zip(vocab.words, vocab.counts.tolist(), strict=True)) == {"a": 3, "b": 2, EOS: 3, "c": 1, UNK: 0}
    assert vocab.words[:2] == (EOS, "a")  # ties broken by the word: "<" sorts before "a"
    assert vocab.counts.tolist() == sorted(vocab.counts.tolist(), reverse=True)
    assert vocab.decode(corpus.train.ids) == ["a", "b", "a", "c", EOS, EOS, "a", "b", EOS]
    assert corpus.train.offsets.tolist() == [0, 5, 6, 9]
    assert vocab.decode(corpus.valid.ids) == ["a", UNK, EOS]  # d is not in train


def test_min_freq_and_max_size_move_counts_to_unk(tmp_path):
    folder = write_corpus(tmp_path)
    vocab = load_corpus(folder, min_freq=2).vocab
    assert set(vocab.words) == {"a", "b", EOS, UNK} and vocab.counts[vocab.unk_index] == 1
    vocab = load_corpus(folder, max_size=3).vocab
    assert set(vocab.words) == {"a", EOS, UNK} and vocab.counts[vocab.unk_index] == 3
    assert int(vocab.counts.sum()) == 9
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary.from_counts(Counter("ab"), max_size=1)
    with pytest.raises(ValueError, match="min_freq"):
        Vocabulary.from_counts(Counter("ab"), min_freq=0)
    with pytest.raises(ValueError, match="min_freq"):
        load_corpus(folder, min_freq=0)


def test_from_counts_orders_by_count_then_word():
    # By hand: max_size 5 keeps z 5, a 2, b 2 besides <eos> 4; x and y (1 each) go to <unk> (2). Ties at 2 are
    # broken by the word, and "<" sorts before "a".
    vocab = Vocabulary.from_counts(Counter({"z": 5, EOS: 4, "b": 2, "a": 2, "y": 1, "x": 1}), max_size=5)
    assert vocab.words == ("z", EOS, UNK, "a", "b") and vocab.counts.tolist() == [5, 4, 2, 2, 2]


def test_literal_unk_in_text_is_the_unk_token(tmp_path):
    vocab = load_corpus(write_corpus(tmp_path, train="a <unk> a\n")).vocab
    assert vocab.counts[vocab.unk_index] == 1 and len(vocab) == 3


# Lines end at \n, \r\n and \r only; U+2028, \x1c, \x85, \x0c are white space inside a line; the last line
# has no newline. By hand: "a b" | "" | "c d e f" | "g h" | "i j" | "last" → 3 + 1 + 5 + 3 + 3 + 2 = 17 tokens.
MIXED_TEXT = "a b\n\nc\u2028d e\x1cf\r\ng\x85h\ri\x0cj\nlast"
MIXED_LINES = [["a", "b"], [], ["c", "d", "e", "f"], ["g", "h"], ["i", "j"], ["last"]]


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, None])
def test_lines_are_what_text_mode_iteration_gives(tmp_path, block_bytes):
    path = tmp_path / "mixed.txt"
    path.write_bytes(MIXED_TEXT.encode("utf-8"))
    assert line_tokens(path, block_bytes) == MIXED_LINES
    with open(path, encoding="utf-8") as f:  # PyTorch's word_language_model reads the file this way
        assert MIXED_LINES == [line.split() for line in f]
    assert [line.split() for line in split_lines(MIXED_TEXT)] == MIXED_LINES
    assert len(MIXED_TEXT.splitlines()) == 10  # str.splitlines would also split at U+2028, \x1c, \x85, \x0c


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a\n", [["a"]]), ("a", [["a"]]), ("a\n\n", [["a"], []]), ("\n", [[]]), ("\r\n\r", [[], []]),
     ("  \n\t\n", [[], []]), ("", [])],
    ids=["newline", "no_newline", "blank_after", "one_blank", "crlf_cr", "white_space_only", "empty"],
)
def test_a_final_newline_adds_no_line(tmp_path, text, expected):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    for block_bytes in (1, 2, None):
        assert line_tokens(path, block_bytes) == expected


def test_every_line_is_its_tokens_and_eos(tmp_path):
    folder = write_corpus(tmp_path, train=MIXED_TEXT, valid="\n\n\n", test="x\n")
    corpus = load_corpus(folder)
    assert len(corpus.train) == 17 and corpus.train.num_sentences == 6
    assert corpus.train.offsets.tolist() == [0, 3, 4, 9, 12, 15, 17]
    assert corpus.vocab.decode(corpus.valid.ids) == [EOS] * 3  # only blank lines: valid text, only <eos>
    assert corpus.vocab.decode(corpus.test.ids) == [UNK, EOS]


def test_nul_characters_are_ordinary_tokens(tmp_path, monkeypatch):
    # Line ends are marked internally by a run of NULs absent from the block; NULs in the text stay words.
    # By hand, with 4-byte reads the blocks are "\0 a\n", "b c\n", "\0\n" (the middle one has no NUL).
    monkeypatch.setattr(token_cache, "BLOCK_BYTES", 4)
    corpus = load_corpus(write_corpus(tmp_path, train="\0 a\nb c\n\0\n", valid="\0\0 \0\n", test="a\0 b\n"))
    assert corpus.vocab.decode(corpus.train.ids) == ["\0", "a", EOS, "b", "c", EOS, "\0", EOS]
    assert corpus.vocab.decode(corpus.valid.ids) == [UNK, "\0", EOS]
    assert corpus.vocab.decode(corpus.test.ids) == [UNK, "b", EOS]


def test_missing_empty_and_too_short_files(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match="valid.txt"):
        load_corpus(folder)
    write_corpus(folder, test="")
    with pytest.raises(ValueError, match=r"test\.txt is empty"):
        load_corpus(folder)
    write_corpus(folder, valid="\n")  # one blank line: a single <eos>, nothing to predict
    with pytest.raises(ValueError, match=r"valid\.txt gives 1 token .* at least 2"):
        load_corpus(folder)
    write_corpus(folder, test="\n  \n")  # two blank lines: two <eos>, the shortest usable split
    assert len(load_corpus(folder).test) == 2


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    folder = write_corpus(tmp_path, train=b"a \xff\xfe b\nok \xef\xbf\xbd\n")  # two bad bytes, one real U+FFFD
    for block_bytes in (1, 2, 3, None):  # the real U+FFFD's three bytes straddle reads
        blocks = LineBlocks(folder / "train.txt", block_bytes)
        assert [line.split() for block in blocks for line in block.split("\n")[:-1]] == [
            ["a", "\ufffd\ufffd", "b"], ["ok", "\ufffd"]]
        assert blocks.replaced == 2
    corpus = load_corpus(folder)
    assert corpus.replaced == {"train": 2, "valid": 0}  # test.txt is not read yet
    assert len(corpus.test) == 3 and corpus.replaced == {"train": 2, "valid": 0, "test": 0}


# Pieces that stress the reader: every line end, white space that is not a line end, NULs, the special words,
# multi-byte characters (cut by small reads), a real U+FFFD, and bytes that are not UTF-8 (a lone continuation
# byte, an invalid byte, a truncated 3-byte sequence).
PIECES = [b"a", b"b", b"cat", b"<eos>", b"<unk>", b" ", b" ", b"\t", b"\n", b"\n", b"\r", b"\r\n", b"\r\n",
          "\u2028".encode(), b"\x85", b"\x1c", b"\x0c", "\u00e9t\u00e9".encode(), "\u65e5\u672c".encode(),
          "\ufffd".encode(), b"\x00", b"\x00\x00", b"\xff", b"\x80", b"\xe6\x97", "\U0001f600".encode()]


def random_text(rng, n):
    return b"".join(PIECES[i] for i in rng.integers(0, len(PIECES), size=n))


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 64, None])
def test_streaming_reader_matches_word_language_model(tmp_path, monkeypatch, block_bytes):
    rng = np.random.default_rng(0)
    # The files end with a cut UTF-8 character, a lone \r, and a line without newline.
    folder = write_corpus(tmp_path / "c", train=random_text(rng, 400) + b"\xe6\x97",
                          valid=random_text(rng, 150) + b"\r", test=random_text(rng, 150) + b"last")
    if block_bytes is not None:
        monkeypatch.setattr(token_cache, "BLOCK_BYTES", block_bytes)
    corpus = load_corpus(folder, cache_dir=tmp_path / "cache")
    assert corpus.train.ids.dtype == torch.int32 and corpus.train.offsets.dtype == torch.int64
    assert sum(corpus.replaced.values()) > 0 and corpus.train.num_sentences > 50
    assert_matches_reference(corpus, folder)


@pytest.mark.parametrize(("min_freq", "max_size"), [(2, None), (1, 4), (3, 6), (1000, None)])
def test_vocabulary_options_match_reference(tmp_path, min_freq, max_size):
    rng = np.random.default_rng(1)
    folder = write_corpus(tmp_path, train=random_text(rng, 300), valid=random_text(rng, 80),
                          test=random_text(rng, 80))
    assert_matches_reference(load_corpus(folder, min_freq, max_size), folder, min_freq, max_size)


def test_wikitext2_valid_reads_as_word_language_model(tmp_path):
    source = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2" / "valid.txt"
    if not source.is_file():
        pytest.skip("WikiText-2's valid.txt is not on this machine")
    folder = write_corpus(tmp_path / "wt2", test="a b\n")
    for split in ("train", "valid"):
        (folder / f"{split}.txt").unlink()
        os.symlink(source, folder / f"{split}.txt")
    corpus = load_corpus(folder)
    assert len(corpus.valid) == 217_646  # the count word_language_model gives
    assert_matches_reference(corpus, folder)


# --- the cache -----------------------------------------------------------------------------------------

def entries(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def count_builds(monkeypatch):
    calls = []
    real = corpus_module.tokenize_file

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(corpus_module, "tokenize_file", counting)
    return calls


def test_cached_load_reads_no_text_and_maps_the_cache(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path)
    first = load_corpus(folder)
    assert len(first.test) == 3 and len(entries(folder / CACHE_DIR_NAME)) == 2  # train and valid; test
    builds = count_builds(monkeypatch)
    second = load_corpus(folder)
    assert builds == []
    assert second.vocab.words == first.vocab.words
    assert torch.equal(second.train.ids, first.train.ids) and torch.equal(second.test.offsets, first.test.offsets)
    maps = Path("/proc/self/maps")
    if sys.platform.startswith("linux") and maps.exists():  # ids live in a mapping of the cache file, not a copy
        pointer = second.train.ids.data_ptr()
        mapped = [line for line in maps.read_text().splitlines() if line.endswith("train.ids")]
        ranges = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in mapped]
        assert any(lo <= pointer < hi for lo, hi in ranges)


def test_cache_key_follows_the_files_and_the_options(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path, train="a b b\n")
    root = folder / CACHE_DIR_NAME
    builds = count_builds(monkeypatch)
    assert load_corpus(folder).vocab.decode(load_corpus(folder).train.ids) == ["a", "b", "b", EOS]
    assert builds == ["train.txt", "valid.txt"]  # the test split is never used here
    # Same size, same mtime, other content: the sampled hash changes the key.
    path, stat = folder / "train.txt", (folder / "train.txt").stat()
    path.write_text("b a b\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_corpus(folder).vocab.decode(load_corpus(folder).train.ids) == ["b", "a", "b", EOS]
    assert len(builds) == 4 and len(entries(root)) == 1  # the entry of the old text is gone
    # A new mtime alone rebuilds too; another option gives a second entry beside the first.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_corpus(folder)
    assert len(builds) == 6
    assert set(load_corpus(folder, max_size=2).vocab.words) == {EOS, UNK}
    assert len(builds) == 8 and len(entries(root)) == 2


def test_the_test_text_is_read_when_the_test_split_is_first_used(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path)  # train "a b a c / (blank) / a b", valid "a d", test "b a"
    root, builds = folder / CACHE_DIR_NAME, count_builds(monkeypatch)
    with guarded(folder / "test.txt") as guard:
        corpus = load_corpus(folder)  # raises if test.txt is opened (even to fingerprint it)
        assert corpus.vocab.decode(corpus.valid.ids) == ["a", UNK, EOS] and len(corpus.train) == 9
        assert not corpus.test_loaded and "not read yet" in repr(corpus) and "test" not in corpus.replaced
        guard.locked = False
        assert corpus.vocab.decode(corpus.test.ids) == ["b", "a", EOS] and corpus.test.offsets.tolist() == [0, 3]
        assert guard.opens > 0 and corpus.test_loaded and corpus.replaced["test"] == 0
        assert builds == ["train.txt", "valid.txt", "test.txt"] and len(entries(root)) == 2
        guard.locked, opens = True, guard.opens
        again = load_corpus(folder)  # both entries cached: nothing tokenised, test.txt unopened until used
        guard.locked = False
        assert again.test.ids.tolist() == corpus.test.ids.tolist() and len(builds) == 3 and guard.opens > opens
    (folder / "test.txt").write_text("c c\n")  # a new test text: only its entry is rebuilt, the old one goes
    assert corpus.vocab.decode(load_corpus(folder).test.ids) == ["c", "c", EOS]
    assert builds == ["train.txt", "valid.txt", "test.txt", "test.txt"] and len(entries(root)) == 2
    (folder / "test.txt").write_text("\n")  # one <eos>: too short, found when the split is first used
    short = load_corpus(folder)
    with pytest.raises(ValueError, match=r"test\.txt gives 1 token"):
        len(short.test)


def _truncate_ids(entry):
    path = entry / "train.ids"
    path.write_bytes(path.read_bytes()[:-4])


def _flip_an_id(entry):
    path = entry / "train.ids"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))


def _garble_manifest(entry):
    (entry / "manifest.json").write_text("{not json")


def _drop_manifest(entry):
    (entry / "manifest.json").unlink()


def _wrong_counts(entry):  # a vocabulary consistent with its manifest checks but not with the splits
    vocab = json.loads((entry / "vocab.json").read_text())
    vocab["counts"][0] += 1
    (entry / "vocab.json").write_text(json.dumps(vocab))
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["vocab.json"] = token_cache._content_check(entry / "vocab.json")
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_truncate_ids, _flip_an_id, _garble_manifest, _drop_manifest, _wrong_counts])
def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    folder = write_corpus(tmp_path)
    load_corpus(folder)
    (entry,) = [folder / CACHE_DIR_NAME / name for name in entries(folder / CACHE_DIR_NAME)]
    damage(entry)
    builds = count_builds(monkeypatch)
    corpus = load_corpus(folder)
    assert builds == ["train.txt", "valid.txt"]
    assert_matches_reference(corpus, folder)


def test_a_failed_build_leaves_no_entry(tmp_path):
    folder = write_corpus(tmp_path, valid="\n")
    with pytest.raises(ValueError, match="valid.txt gives 1 token"):
        load_corpus(folder)
    assert list((folder / CACHE_DIR_NAME).iterdir()) == []  # neither an entry nor a staging folder


def test_unwritable_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "corpus")
    (folder / CACHE_DIR_NAME).write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    assert_matches_reference(load_corpus(folder), folder)
    (root,) = (tmp_path / "user-cache" / "ebm" / "corpora").iterdir()
    assert len(entries(root)) == 2  # the vocabulary's entry (train, valid) and the test split's


def test_a_concurrent_build_keeps_the_published_entry(tmp_path):
    sources = {"train": "fingerprint"}
    published = token_cache.write_entry(tmp_path, "key", "group", sources, lambda folder: {"arrays": {}, "who": 1})
    again = token_cache.write_entry(tmp_path, "key", "group", sources, lambda folder: {"arrays": {}, "who": 2})
    assert published["who"] == again["who"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


# --- batching ------------------------------------------------------------------------------------------

def test_batchify_and_chunk_boundaries():
    ids = torch.arange(23)
    data = batchify(ids, 4)
    assert data.shape == (4, 5) and data[1].tolist() == [5, 6, 7, 8, 9]
    chunks = list(bptt_chunks(data, 3))
    assert len(chunks) == num_chunks(5, 3) == 2
    (x0, y0), (x1, y1) = chunks
    assert x0.shape == (4, 3) and x1.shape == (4, 1)
    assert torch.equal(y0, data[:, 1:4]) and torch.equal(x1, data[:, 3:4]) and torch.equal(y1, data[:, 4:5])
    targets = torch.cat([y for _, y in chunks], dim=1)
    assert torch.equal(targets, data[:, 1:])  # every token but each row's first is predicted once
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            batchify(ids, bad)
        with pytest.raises(ValueError, match="bptt"):
            list(bptt_chunks(data, bad))
    with pytest.raises(ValueError, match="too short"):
        batchify(ids, 20)


def test_int32_streams_batch_as_int64():
    data = batchify(torch.arange(23, dtype=torch.int32), 4)  # (4, 5), a view of the int32 stream
    assert data.dtype == torch.int32
    (x0, y0), (x1, y1) = bptt_chunks(data, 3)
    for chunk in (x0, y0, x1, y1):
        assert chunk.dtype == torch.int64
    assert x0[1].tolist() == [5, 6, 7] and y0[1].tolist() == [6, 7, 8] and y1[:, 0].tolist() == [4, 9, 14, 19]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_sentence_batches_pad_and_mask(dtype):
    vocab = Vocabulary(["a", "b", EOS, UNK], [3, 2, 2, 0])
    split = encode_lines([["a", "b", "a"], ["b"]], vocab)
    split = Split(split.ids.to(dtype), split.offsets)
    eos = vocab.eos_index
    (x, y, mask), = list(sentence_batches(split, 2, eos))
    assert x.dtype == y.dtype == torch.int64
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert y[0].tolist() == [0, 1, 0, eos] and y[1, :2].tolist() == [1, eos]
    assert x[0].tolist() == [eos, 0, 1, 0] and x[1, :2].tolist() == [eos, 1]
    assert (y[~mask] == 0).all() and (x[~mask] == 0).all()
    shuffled = list(sentence_batches(split, 1, eos, generator=torch.Generator().manual_seed(0)))
    assert sorted(int(m.sum()) for _, _, m in shuffled) == [2, 4]
    (_, _, mask), _ = list(sentence_batches(split, 1, eos, max_length=2))
    assert mask.shape == (1, 2)
    with pytest.raises(ValueError, match="batch_size"):
        list(sentence_batches(Split(split.ids, split.offsets), 0, eos))


def test_loaded_corpus_sentence_batches(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path))
    (x, y, mask), = list(sentence_batches(corpus.train, 3, corpus.vocab.eos_index))
    words = [corpus.vocab.decode(row[m]) for row, m in zip(y, mask, strict=True)]
    assert words == [["a", "b", "a", "c", EOS], [EOS], ["a", "b", EOS]]
    assert corpus.vocab.decode(x[0, :2]) == [EOS, "a"]
