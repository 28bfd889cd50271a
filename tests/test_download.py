"""The named-corpus download, run offline: archives with each corpus's real internal layout are built in a
temporary folder and fetched through file:// URLs (or a stand-in for urlopen that fails part-way)."""

import io
import random
import tarfile
import zipfile

import pytest

import ebm.data.download as download_module
from ebm.data.corpus import EOS, SPLITS, UNK, load_corpus
from ebm.data.download import CORPORA, download, how_to_get, main, missing_files

ONE_B = "1-billion-word-language-modeling-benchmark-r13output"
TRAIN_SHARD = ONE_B + "/training-monolingual.tokenized.shuffled/news.en-{:05d}-of-00100"
HELDOUT_SHARD = ONE_B + "/heldout-monolingual.tokenized.shuffled/news.en.heldout-{:05d}-of-00050"


def write_corpus(folder, train="a b a c\n\na b\n", valid="a d\n", test="b a\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def make_zip(path, files):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def make_tar_gz(path, files):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def wikitext103_files():
    return {
        "wikitext-103/": b"",
        "wikitext-103/wiki.train.tokens": b" \n = Title = \n \n the cat sat on the mat . \n the dog sat . \n",
        "wikitext-103/wiki.valid.tokens": b" \n the cat ran . \n",
        "wikitext-103/wiki.test.tokens": b" \n a dog sat",  # no final newline
        "wikitext-103/README": b"not a split",
    }


def one_billion_files():
    """The benchmark's layout: 99 training shards (one without a final newline), 50 held-out shards of which
    the test and valid ones are distinctive, and the held-out source shard news.en-00000 as a decoy."""
    files = {TRAIN_SHARD.format(i): f"train shard {i} line one\ntrain shard {i} line two\n".encode()
             for i in range(1, 100)}
    files[TRAIN_SHARD.format(7)] = b"shard seven has no final newline"
    files.update({HELDOUT_SHARD.format(i): f"line {i}\n".encode() for i in range(50)})
    files[ONE_B + "/heldout-monolingual.tokenized.shuffled/news.en-00000-of-00100"] = b"decoy\n"
    files[ONE_B + "/README"] = b"readme\n"
    order = list(files)
    random.Random(0).shuffle(order)  # members arrive out of order: the writer must still concatenate 1..99
    return {name: files[name] for name in order}


def test_plain_files_from_any_url(tmp_path):
    source = write_corpus(tmp_path / "source")
    folder = download("wikitext-2", root=tmp_path / "datasets", url_template=source.as_uri() + "/{split}.txt")
    assert folder == tmp_path / "datasets" / "wikitext-2" and not missing_files(folder)
    for split in SPLITS:
        assert (folder / f"{split}.txt").read_bytes() == (source / f"{split}.txt").read_bytes()
    assert len(load_corpus(folder).vocab) == 5
    assert not list(folder.glob(".*part"))
    (source / "test.txt").write_text(" \n")
    (folder / "test.txt").unlink()
    with pytest.raises(ValueError, match="no data"):
        download("wikitext-2", root=tmp_path / "datasets", url_template=source.as_uri() + "/{split}.txt")
    assert not (folder / "test.txt").exists() and not list(folder.glob(".*part"))
    with pytest.raises(ValueError, match=r"\{split\}"):
        download("ptb", root=tmp_path / "datasets", url_template=source.as_uri() + "/train.txt")
    assert "python -m ebm.data.download ptb" in how_to_get("ptb")
    with pytest.raises(ValueError, match="1b-words"):
        download("nope", root=tmp_path)


def test_wikitext103_from_its_zip(tmp_path):
    files = wikitext103_files()
    archive = make_zip(tmp_path / "wikitext-103-v1.zip", files)
    folder = download("wikitext-103", root=tmp_path / "datasets", url_template=archive.as_uri())
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]  # staging gone
    assert (folder / "train.txt").read_bytes() == files["wikitext-103/wiki.train.tokens"]
    assert (folder / "test.txt").read_bytes() == files["wikitext-103/wiki.test.tokens"] + b"\n"
    corpus = load_corpus(folder)
    # train lines: "" | "= Title =" | "" | "the cat sat on the mat ." | "the dog sat ." → 0+3+0+7+4 words + 5 <eos>
    assert len(corpus.train) == 19 and corpus.train.num_sentences == 5
    assert corpus.vocab.decode(corpus.valid.ids) == [EOS, "the", "cat", UNK, ".", EOS]


def test_one_billion_words_from_its_tar_gz(tmp_path):
    files = one_billion_files()
    archive = make_tar_gz(tmp_path / f"{ONE_B}.tar.gz", files)
    folder = download("1b-words", root=tmp_path / "datasets", url_template=archive.as_uri())
    expected_train = b"".join(files[TRAIN_SHARD.format(i)] + (b"\n" if i == 7 else b"") for i in range(1, 100))
    assert (folder / "train.txt").read_bytes() == expected_train
    assert (folder / "valid.txt").read_bytes() == b"line 1\n"
    assert (folder / "test.txt").read_bytes() == b"line 0\n"
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    corpus = load_corpus(folder)
    assert corpus.train.num_sentences == 197  # 98 shards of 2 lines and shard seven's one
    assert corpus.vocab.decode(corpus.valid.ids) == ["line", "1", EOS]
    assert corpus.vocab.decode(corpus.test.ids) == ["line", UNK, EOS]  # "0" is no training word


def test_the_cli_fetches_from_a_mirror(tmp_path, capsys):
    archive = make_zip(tmp_path / "mirror.zip", wikitext103_files())
    assert main(["wikitext-103", "--root", str(tmp_path / "d"), "--url", archive.as_uri()]) == 0
    assert "wikitext-103" in capsys.readouterr().out and not missing_files(tmp_path / "d" / "wikitext-103")
    assert main(["1b-words", "--root", str(tmp_path / "d"), "--url", (tmp_path / "absent.tgz").as_uri()]) == 1
    assert "could not download 1b-words" in capsys.readouterr().err


def test_an_archive_without_the_expected_files_is_an_error_naming_one(tmp_path):
    files = one_billion_files()
    del files[TRAIN_SHARD.format(42)]
    archive = make_tar_gz(tmp_path / "lm.tar.gz", files)
    with pytest.raises(ValueError, match="news.en-00042-of-00100"):
        download("1b-words", root=tmp_path / "datasets", url_template=archive.as_uri())
    folder = tmp_path / "datasets" / "1b-words"
    assert missing_files(folder) == [folder / "train.txt"]  # valid and test are whole; train never appears
    assert [p.name for p in (folder / ".download").iterdir()] == ["lm.tar.gz"]  # the complete archive is kept


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(("name", "make", "files"), [("1b-words", make_tar_gz, one_billion_files),
                                                     ("wikitext-103", make_zip, wikitext103_files)])
def test_a_cut_archive_is_deleted_so_the_next_call_fetches_again(tmp_path, name, make, files, fraction):
    whole = make(tmp_path / "whole", files()).read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(ValueError, match="readable archive"):
        download(name, root=tmp_path / "datasets", url_template=cut.as_uri())
    folder = tmp_path / "datasets" / name
    assert not (folder / "train.txt").exists()
    assert list((folder / ".download").iterdir()) == []


class FailingResponse(io.BytesIO):
    """A stand-in for an HTTP response that announces ``length`` bytes and breaks off after ``data``."""

    def __init__(self, data, length, error=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(length)}
        self.error = error

    def read(self, size=-1):
        chunk = super().read(size)
        if not chunk and self.error is not None:
            raise self.error
        return chunk


@pytest.mark.parametrize("error", [None, ConnectionResetError("connection reset")])
def test_a_partial_download_never_looks_complete(tmp_path, monkeypatch, error):
    archive = make_zip(tmp_path / "wikitext-103-v1.zip", wikitext103_files())
    data = archive.read_bytes()
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda request, timeout: FailingResponse(data[: len(data) // 2], len(data), error))
    with pytest.raises(OSError, match="incomplete download|connection reset"):
        download("wikitext-103", root=tmp_path / "datasets")
    folder = tmp_path / "datasets" / "wikitext-103"
    assert missing_files(folder) == [folder / f"{split}.txt" for split in SPLITS]
    assert list((folder / ".download").iterdir()) == []  # not even the .part file
    monkeypatch.undo()
    download("wikitext-103", root=tmp_path / "datasets", url_template=archive.as_uri())
    assert not missing_files(folder)


def test_every_corpus_has_all_splits():
    for name, source in CORPORA.items():
        if isinstance(source, download_module.Archive):
            assert set(source.members) == set(SPLITS), name
    assert len(CORPORA["1b-words"].members["train"]) == 99
    assert {m.rsplit("/", 1)[1] for m in CORPORA["1b-words"].members["train"]} == {
        f"news.en-{i:05d}-of-00100" for i in range(1, 100)}
