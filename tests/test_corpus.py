"""Vocabulary, tokenised splits, batching and the named-corpus download on small files."""

from collections import Counter

import pytest
import torch

from ebm.data.corpus import (
    EOS,
    UNK,
    Split,
    Vocabulary,
    batchify,
    bptt_chunks,
    encode_lines,
    load_corpus,
    num_chunks,
    read_lines,
    sentence_batches,
)
from ebm.data.download import download, how_to_get, missing_files


def write_corpus(folder, train="a b a c\n\na b\n", valid="a d\n", test="b a\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


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


def test_literal_unk_in_text_is_the_unk_token(tmp_path):
    vocab = load_corpus(write_corpus(tmp_path, train="a <unk> a\n")).vocab
    assert vocab.counts[vocab.unk_index] == 1 and len(vocab) == 3


# Lines end at \n, \r\n and \r only; U+2028, \x1c, \x85, \x0c are white space inside a line; the last line
# has no newline. By hand: "a b" | "" | "c d e f" | "g h" | "i j" | "last" → 3 + 1 + 5 + 3 + 3 + 2 = 17 tokens.
MIXED_TEXT = "a b\n\nc\u2028d e\x1cf\r\ng\x85h\ri\x0cj\nlast"
MIXED_LINES = [["a", "b"], [], ["c", "d", "e", "f"], ["g", "h"], ["i", "j"], ["last"]]


def test_lines_are_what_text_mode_iteration_gives(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(MIXED_TEXT.encode("utf-8"))
    lines, replaced = read_lines(path)
    assert lines == MIXED_LINES and replaced == 0
    with open(path, encoding="utf-8") as f:  # PyTorch's word_language_model reads the file this way
        assert lines == [line.split() for line in f]
    assert len(MIXED_TEXT.splitlines()) == 10  # str.splitlines would also split at U+2028, \x1c, \x85, \x0c


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a\n", [["a"]]), ("a", [["a"]]), ("a\n\n", [["a"], []]), ("\n", [[]]), ("\r\n\r", [[], []]),
     ("  \n\t\n", [[], []])],
    ids=["newline", "no_newline", "blank_after", "one_blank", "crlf_cr", "white_space_only"],
)
def test_a_final_newline_adds_no_line(tmp_path, text, expected):
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_lines(path)[0] == expected


def test_every_line_is_its_tokens_and_eos(tmp_path):
    folder = write_corpus(tmp_path, train=MIXED_TEXT, valid="\n\n\n", test="x\n")
    corpus = load_corpus(folder)
    assert len(corpus.train) == 17 and corpus.train.num_sentences == 6
    assert corpus.train.offsets.tolist() == [0, 3, 4, 9, 12, 15, 17]
    assert corpus.vocab.decode(corpus.valid.ids) == [EOS] * 3  # only blank lines: valid text, only <eos>
    assert corpus.vocab.decode(corpus.test.ids) == [UNK, EOS]


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
    folder = write_corpus(tmp_path)
    (folder / "train.txt").write_bytes(b"a \xff\xfe b\nok \xef\xbf\xbd\n")  # two bad bytes, one real U+FFFD
    lines, replaced = read_lines(folder / "train.txt")
    assert replaced == 2 and lines[0][0] == "a"
    assert load_corpus(folder).replaced == {"train": 2, "valid": 0, "test": 0}


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


def test_sentence_batches_pad_and_mask():
    vocab = Vocabulary(["a", "b", EOS, UNK], [3, 2, 2, 0])
    split = encode_lines([["a", "b", "a"], ["b"]], vocab)
    eos = vocab.eos_index
    (x, y, mask), = list(sentence_batches(split, 2, eos))
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


def test_download_lays_out_files_from_any_url(tmp_path):
    source = write_corpus(tmp_path / "source")
    folder = download("wikitext-2", root=tmp_path / "datasets", url_template=source.as_uri() + "/{split}.txt")
    assert folder == tmp_path / "datasets" / "wikitext-2" and not missing_files(folder)
    assert len(load_corpus(folder).vocab) == 5
    assert not list(folder.glob(".*tmp"))
    (source / "test.txt").write_text("")
    (folder / "test.txt").unlink()
    with pytest.raises(ValueError, match="no data"):
        download("wikitext-2", root=tmp_path / "datasets", url_template=source.as_uri() + "/{split}.txt")
    assert "python -m ebm.data.download ptb" in how_to_get("ptb")
    with pytest.raises(ValueError, match="wikitext-2"):
        download("nope", root=tmp_path)
