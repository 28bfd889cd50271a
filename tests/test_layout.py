"""The held-out layout: its line split, its links, and a training run that reads the test text only to score it.

"Unread" is checked through the interpreter's audit hook (``guarded`` in test_corpus.py): every way of opening
a file in Python raises the "open" event, and the guard sees through links to the file itself.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_corpus import guarded
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ebm.data.corpus import EOS, load_corpus
from ebm.data.layout import LAYOUT_FILE, describe_layout, heldout_layout, split_line_bytes

WIKITEXT2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def write_files(folder, **texts):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / f"{name}.txt").write_bytes(text.encode("utf-8"))
    return folder


def test_lines_keep_their_endings_and_join_back():
    # By hand: line ends are \n, \r\n and \r; U+2028 and \x0c stay inside a line; the last line has none.
    data = "a b\n\nc\r\nd\re\u2028f\x0cg\nlast".encode()
    assert split_line_bytes(data) == [b"a b\n", b"\n", b"c\r\n", b"d\r", "e\u2028f\x0cg\n".encode(), b"last"]
    assert split_line_bytes(b"") == [] and split_line_bytes(b"\n") == [b"\n"]
    assert split_line_bytes(b"\r\r\n\n") == [b"\r", b"\r\n", b"\n"]
    assert split_line_bytes(b"\xff\xe6\n\x97") == [b"\xff\xe6\n", b"\x97"]  # bytes that are not UTF-8 stay


def test_text_mode_reading_agrees_with_the_split(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("x y\r\n\r\n\rz\u2028w\n\n q".encode())
    with open(path, encoding="utf-8") as f:  # how PyTorch's word_language_model reads a corpus file
        expected = [line.split() for line in f]
    assert [line.decode().split() for line in split_line_bytes(path.read_bytes())] == expected


# Ten lines, line i holding i tokens (line 0 blank), with every kind of line end and no newline at the end.
# By hand, 90%: train = lines 0-8, 0 + 1 + … + 8 = 36 tokens + 9 <eos> = 45; valid = line 9: 9 + 1 = 10.
TEN_LINES = "".join(" ".join(["t"] * i) + end for i, end in enumerate(["\n", "\r\n", "\r", "\n"] * 2 + ["\n", ""]))


def test_a_corpus_without_train_text_is_split_by_lines(tmp_path):
    source = write_files(tmp_path / "source", valid=TEN_LINES, test="t u\n\n")
    with guarded(source / "test.txt") as guard:
        dest = heldout_layout(source, tmp_path / "dest")
        corpus = load_corpus(dest)
        assert (len(corpus.train), corpus.train.num_sentences, len(corpus.valid)) == (45, 9, 10)
        assert corpus.vocab.decode(corpus.valid.ids) == ["t"] * 9 + [EOS]
        assert "lines 1-9 of 10" in describe_layout(dest) and "lines 10-10 of 10" in describe_layout(dest)
        guard.locked = False
        assert corpus.vocab.decode(corpus.test.ids) == ["t", "<unk>", EOS, EOS] and guard.opens > 0
    assert (dest / "train.txt").read_bytes() + (dest / "valid.txt").read_bytes() == TEN_LINES.encode()
    assert (dest / "test.txt").is_symlink() and os.path.samefile(dest / "test.txt", source / "test.txt")


def test_a_corpus_with_train_text_keeps_its_splits(tmp_path):
    source = write_files(tmp_path / "source", train="a b a\n", valid="b a\n", test="a\n")
    dest = heldout_layout(source, tmp_path / "dest")
    for split in ("train", "valid", "test"):
        assert (dest / f"{split}.txt").is_symlink() and os.path.samefile(dest / f"{split}.txt", source / f"{split}.txt")
    assert load_corpus(dest).vocab.decode(load_corpus(dest).test.ids) == ["a", EOS]
    assert "the source's own splits" in describe_layout(dest)


def test_laying_out_again_keeps_the_files_and_the_cache(tmp_path, monkeypatch):
    source = write_files(tmp_path / "source", valid=TEN_LINES, test="t\n")
    dest = heldout_layout(source, tmp_path / "dest")
    load_corpus(dest)
    before = {p.name: p.lstat().st_mtime_ns for p in dest.iterdir()}
    heldout_layout(source, dest)
    assert {p.name: p.lstat().st_mtime_ns for p in dest.iterdir()} == before
    heldout_layout(source, dest, train_percent=50)  # another split rewrites train.txt and valid.txt
    assert len(load_corpus(dest).train) == (0 + 1 + 2 + 3 + 4) + 5  # lines 0-4 and their 5 <eos>

    def no_symlinks(*args):
        raise OSError("no symbolic links here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    other = heldout_layout(source, tmp_path / "other")  # falls back to a hard link
    assert not (other / "test.txt").is_symlink() and os.path.samefile(other / "test.txt", source / "test.txt")


def test_bad_layouts_are_refused(tmp_path):
    source = write_files(tmp_path / "source", valid="a\nb\n", test="a\n")  # 2 lines: one each at 50% and 90%
    for percent in (0, 100):
        with pytest.raises(ValueError, match="train_percent must be an integer from 1 to 99"):
            heldout_layout(source, tmp_path / "dest", percent)
    with pytest.raises(ValueError, match="another folder"):
        heldout_layout(source, source)
    assert heldout_layout(source, tmp_path / "dest", 90) == tmp_path / "dest"  # 2 · 90 // 100 = 1 train line
    with pytest.raises(ValueError, match="holds 2 line\\(s\\): too few to give 10%"):
        heldout_layout(source, tmp_path / "dest", 10)  # 2 · 10 // 100 = 0 train lines
    (source / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        heldout_layout(source, tmp_path / "dest")
    assert "no held-out layout" in describe_layout(source) and (tmp_path / "dest" / LAYOUT_FILE).is_file()


def test_wikitext2_layout_keeps_every_token(tmp_path):
    if not (WIKITEXT2 / "valid.txt").is_file():
        pytest.skip("WikiText-2 is not on this machine")
    with guarded(WIKITEXT2 / "test.txt") as guard:
        corpus = load_corpus(heldout_layout(WIKITEXT2, tmp_path / "wt2"))
        assert corpus.train.num_sentences == 3_384 and corpus.valid.num_sentences == 376  # 3,760 lines: 90% / 10%
        assert len(corpus.train) + len(corpus.valid) == 217_646  # valid.txt as word_language_model reads it
        guard.locked = False
        assert len(corpus.test) == 245_569


# --- a training run through the real entry point -----------------------------------------------------------

def tiny_language(rng, lines, words):
    return "".join(" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) + "\n" for _ in range(lines))


def test_training_reads_the_test_text_only_for_the_final_score(tmp_path):
    """train_lm on a held-out layout: test.txt stays unopened through every training step, validation, plateau
    decision and the norm's calibration. Its first open ends the run: a later optimiser step, a forward pass in
    training mode or with gradients, a forward pass over validation text ("v" occurs there, never in test.txt),
    or any change to the model scored on test fails the test."""
    from ebm.lm.train import LMConfig, train_lm

    rng = np.random.default_rng(0)
    valid_text = tiny_language(rng, 270, ["a", "b", "c", "d", "v"])  # lines 1-243 train, 244-270 validate
    source = write_files(tmp_path / "source", valid=valid_text, test=tiny_language(rng, 20, ["a", "b", "c", "d"]))
    layout = heldout_layout(source, tmp_path / "layout")
    v = load_corpus(layout).vocab.index_of["v"]
    violations, scored = [], {}

    def after_test_read(what):
        violations.append(what)
        raise AssertionError(f"{what} after test.txt was read")

    def on_step(optimizer, args, kwargs):
        if guard.opens:
            after_test_read("an optimiser step")

    def on_forward(module, args):
        if not guard.opens:
            return
        if module.training or torch.is_grad_enabled():
            after_test_read(f"a training forward pass of {type(module).__name__}")
        if any(isinstance(a, torch.Tensor) and not a.is_floating_point() and (a == v).any() for a in args):
            after_test_read("a forward pass over validation text")
        scored.setdefault("model", (module, {k: t.clone() for k, t in module.state_dict().items()}))

    hooks = [register_optimizer_step_pre_hook(on_step), register_module_forward_pre_hook(on_forward)]
    settings = dict(emb_size=16, hidden_size=16, batch_size=4, bptt=10, noise_ratio=10, lr=1e-2, num_layers=1,
                    epochs=2, schedule="plateau", calibrate_norm=True, eval_batch_size=4, progress=False)
    try:
        with guarded(source / "test.txt") as guard:
            guard.locked = False  # opening is allowed; what comes after the first open is checked
            result = train_lm(LMConfig(dataset=str(layout), out=str(tmp_path / "run"), **settings))
    finally:
        for hook in hooks:
            hook.remove()
    assert violations == []
    assert guard.opens > 0 and math.isfinite(result["test_ppl"]) and result["steps"] > 0
    module, state = scored["model"]  # the model scored on test is the one the run ends with
    assert [k for k, t in module.state_dict().items() if not torch.equal(state[k], t)] == []
