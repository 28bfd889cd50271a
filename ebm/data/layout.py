"""A corpus laid out for benchmarks so that the test text is read only for the final score.

A benchmark that validates on its test text (or a part of it) tunes on it: every learning-rate halving, early
stop, choice of recipe and norm calibration then has seen the test. ``heldout_layout(source, dest)`` writes a
corpus folder ``dest`` that ``python train.py --dataset DEST``, ``load_corpus`` and the benches read unchanged:

    source has train.txt (PTB, WikiText-103, 1b-words):  train = train.txt     valid = valid.txt   test = test.txt
    source has no train.txt (WikiText-2 as kept in        train = the first    valid = the last    test = test.txt
    ../shared/data: valid.txt and test.txt only)          90% of valid.txt's   10% of its lines
                                                          lines

Its ``test.txt`` (and, for a source with its own splits, every file) is a symbolic link to the source's file,
or a hard link where symbolic links cannot be made: making the layout never opens the test text, and
``load_corpus`` opens it first when ``corpus.test`` is used, after training (``ebm.data.corpus``). The
vocabulary then comes from the new train split alone.

Lines are cut as ``load_corpus`` reads them (PyTorch's word_language_model: every line, a blank one included,
is its tokens and ``<eos>``; a line ends at ``\\n``, ``\\r\\n`` or ``\\r`` only; a last line without a newline
is a line). Each part is valid.txt's bytes from one line start to another, endings included, so the two parts
hold exactly the tokens and ``<eos>`` of the whole file. With ``L`` lines, train gets the first
``L · train_percent // 100`` (WikiText-2's valid.txt: 3,760 lines → 3,384 and 376). ``layout.json`` in
``dest`` records the layout; ``describe_layout(dest)`` gives the line a bench prints with its table.

    python -m ebm.data.layout ../shared/data/wikitext-2 datasets/wikitext-2-heldout
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

LAYOUT_FILE = "layout.json"
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # one line with its ending; a last one may have none


def split_line_bytes(data: bytes) -> list[bytes]:
    """The lines of ``data``, each with its ending (``\\n``, ``\\r\\n`` or ``\\r``; the last may have none).

    ``b"".join`` of the result is ``data``. Working on bytes keeps the file as it is: ``\\r`` and ``\\n`` never
    occur inside a UTF-8 character, and a cut right after a line end splits no character.
    """
    return _LINE.findall(data)


def heldout_layout(source: str | os.PathLike, dest: str | os.PathLike, train_percent: int = 90) -> Path:
    """Write the held-out layout of corpus folder ``source`` into ``dest`` (created if needed); returns ``dest``.

    ``source`` needs ``valid.txt`` and ``test.txt``; with a ``train.txt`` its three files are linked as they
    are, without one valid.txt's first ``train_percent``% lines become train.txt and the rest valid.txt. Files
    already in ``dest`` with the same contents (or links to the same files) are kept, so the corpus cache of
    ``dest`` stays valid when a bench lays the corpus out again.

    Raises ``FileNotFoundError`` naming a missing file of ``source``, ``ValueError`` for ``dest`` = ``source``,
    ``train_percent`` outside 1–99, or a valid.txt too short to give each part a line.
    """
    source, dest = Path(source), Path(dest)
    if not 1 <= train_percent <= 99:
        raise ValueError(f"train_percent must be an integer from 1 to 99, got {train_percent}")
    for name in ("valid.txt", "test.txt"):
        if not (source / name).is_file():
            raise FileNotFoundError(f"missing corpus file {source / name}")
    if dest.resolve() == source.resolve():
        raise ValueError(f"the layout must go to another folder than its source {source}")
    dest.mkdir(parents=True, exist_ok=True)
    if (source / "train.txt").is_file():
        for name in ("train.txt", "valid.txt"):
            _link(source / name, dest / name)
        record = {"rule": "the source's own splits", "train": "train.txt", "valid": "valid.txt"}
    else:
        lines = split_line_bytes((source / "valid.txt").read_bytes())
        cut = len(lines) * train_percent // 100
        if cut == 0 or cut == len(lines):
            raise ValueError(f"{source / 'valid.txt'} holds {len(lines)} line(s): too few to give {train_percent}% "
                             f"to train and the rest to valid, a line at least each")
        _write_if_changed(dest / "train.txt", b"".join(lines[:cut]))
        _write_if_changed(dest / "valid.txt", b"".join(lines[cut:]))
        record = {"rule": f"valid.txt's lines: the first {train_percent}% train, the rest valid",
                  "train": f"valid.txt lines 1-{cut:,} of {len(lines):,}",
                  "valid": f"valid.txt lines {cut + 1:,}-{len(lines):,} of {len(lines):,}"}
    _link(source / "test.txt", dest / "test.txt")
    record = {"source": str(source.resolve()), **record, "test": "test.txt (a link: read only for the final score)"}
    _write_if_changed(dest / LAYOUT_FILE, json.dumps(record, indent=1).encode("utf-8"))
    return dest


def describe_layout(folder: str | os.PathLike) -> str:
    """One line saying where the splits of ``folder`` come from: its ``layout.json``, or that it has none."""
    path = Path(folder) / LAYOUT_FILE
    if not path.is_file():
        return f"{folder}: train.txt / valid.txt / test.txt as they are (no held-out layout)"
    record = json.loads(path.read_text(encoding="utf-8"))
    return (f"held-out layout of {record['source']} ({record['rule']}): train = {record['train']}, "
            f"valid = {record['valid']}, test = {record['test']}")


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, unless ``path`` already holds it."""
    if path.is_file() and not path.is_symlink() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _link(target: Path, link: Path) -> None:
    """Make ``link`` a symbolic link to ``target`` (a hard link if that fails), unless it already leads there.

    Only the file system's metadata is read (``os.path.samefile`` compares device and inode): never the text.
    """
    if link.exists() and os.path.samefile(link, target):
        return
    if link.exists() or link.is_symlink():
        link.unlink()
    try:
        os.symlink(target.resolve(), link)
    except OSError:
        os.link(target, link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebm.data.layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="corpus folder: valid.txt and test.txt, and train.txt if it has one")
    parser.add_argument("dest", help="folder to write the layout into")
    parser.add_argument("--train-percent", type=int, default=90,
                        help="without train.txt: the share of valid.txt's lines that trains (default 90)")
    args = parser.parse_args(argv)
    print(describe_layout(heldout_layout(args.source, args.dest, args.train_percent)))
    return 0


__all__ = ["LAYOUT_FILE", "describe_layout", "heldout_layout", "split_line_bytes"]

if __name__ == "__main__":
    raise SystemExit(main())
