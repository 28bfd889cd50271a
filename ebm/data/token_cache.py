"""Text files tokenised once into compact integer files, and the on-disk cache that keeps them.

Reading WikiText-103 (103M tokens) or the One Billion Word benchmark (0.8B) into Python lists of strings would
take many GB. Here a text file is read once, in blocks of whole lines (``LineBlocks``: a few MB of text at a
time, never the file), and written as two flat files:

    <split>.ids      int32 (N,)      the token stream, an end-of-line mark after every line
    <split>.offsets  int64 (S + 1,)  where line i starts; offsets[0] = 0, offsets[S] = N

``tokenize_file`` numbers words provisionally in the order they are first seen (id 0 = end of line); the caller
turns those into vocabulary indices with one vectorised pass over the integer file (``remap_ids``), so the
text itself, the slow part, is tokenised only once even for the training split whose counts decide the
vocabulary (``count_ids``).

The cache: ``write_entry`` builds an entry in a temporary folder and publishes it with one ``os.rename``, so an
entry is complete or absent; its ``manifest.json`` records each file's size and a sampled SHA-1 (``fingerprint``)
and ``read_entry`` rejects an entry whose files do not match (truncated, replaced, damaged manifest), which the
caller then rebuilds. ``open_array`` maps an array file into memory (``np.memmap``, copy-on-write) and wraps it
as a tensor without copying, so a loaded corpus costs address space, not memory: pages are read when used.
Entries live in ``<corpus folder>/.ebm-cache/`` (``cache_root``), or under the user's cache folder when the
corpus folder is not writable.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

CACHE_DIR_NAME = ".ebm-cache"
FORMAT_VERSION = 1  # bump when the layout or the meaning of the files changes: old entries are then never read
LINE_END = 0  # provisional id of the end-of-line mark written by ``tokenize_file``
BLOCK_BYTES = 1 << 22  # bytes of text read at a time (4 MiB: about 0.7M tokens, tens of MB of Python strings)
ARRAY_CHUNK = 1 << 24  # integers processed at a time by ``remap_ids`` and ``count_ids`` (64 MiB of int32)
_SAMPLES, _SAMPLE_BYTES = 32, 1 << 15  # fingerprint: 32 evenly spaced 32 KiB pieces (1 MiB read at most)
_STALE_STAGING_SECONDS = 24 * 3600  # a staging folder this old belongs to a build that died
_MANIFEST = "manifest.json"
_REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = _REPLACEMENT.encode("utf-8")


def normalize_newlines(text: str) -> str:
    """``\r\n`` and ``\r`` → ``\n``: the line ends of Python's universal-newline text mode."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class LineBlocks:
    """A UTF-8 text file as blocks of whole lines, read ``block_bytes`` at a time.

    Every block is a string of complete lines, each ending in ``\n`` (``\r\n`` and ``\r`` are turned into
    ``\n``; no other character ends a line, as in Python's text-mode iteration); a last line without a newline
    gets one, so the lines are exactly those of ``split_lines`` on the whole text. A line cut by a read (a
    ``\r\n`` or a UTF-8 character across the boundary included) is carried into the next block. Bytes that are
    not valid UTF-8 become U+FFFD; after the iteration ``replaced`` holds their count (excluding U+FFFD
    characters already in the file).
    """

    def __init__(self, path: str | os.PathLike, block_bytes: int | None = None):
        self.path = Path(path)
        self.block_bytes = block_bytes or BLOCK_BYTES
        if self.block_bytes < 1:
            raise ValueError(f"block_bytes must be positive, got {self.block_bytes}")
        self.replaced = 0

    def __iter__(self) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        carry: list[str] = []  # the line in progress: text after the last line end seen
        decoded_marks = file_marks = 0  # U+FFFD in the decoded text / as UTF-8 bytes in the file
        tail = b""  # the last 2 bytes read: a U+FFFD of the file may straddle two reads
        with open(self.path, "rb") as f:
            while raw := f.read(self.block_bytes):
                text = decoder.decode(raw)
                file_marks += (tail + raw).count(_REPLACEMENT_BYTES)
                tail = (tail + raw)[-2:]
                decoded_marks += text.count(_REPLACEMENT)
                # A final "\r" may be the first half of "\r\n": keep it with the line in progress.
                stop = len(text) - 1 if text.endswith("\r") else len(text)
                cut = max(text.rfind("\n", 0, stop), text.rfind("\r", 0, stop))
                if cut < 0:
                    carry.append(text)
                    continue
                block = "".join([*carry, text[: cut + 1]])
                carry = [text[cut + 1 :]]
                yield normalize_newlines(block)
            text = decoder.decode(b"", final=True)  # an incomplete character at the end of the file
            decoded_marks += text.count(_REPLACEMENT)
            rest = normalize_newlines("".join([*carry, text]))
            if rest:
                yield rest if rest.endswith("\n") else rest + "\n"
        self.replaced = decoded_marks - file_marks


@dataclass
class TokenizedFile:
    """What ``tokenize_file`` wrote: provisional id k ≥ 1 stands for ``words[k - 1]``, id 0 for a line end."""

    words: list[str]
    tokens: int  # N: the tokens of every line plus one end mark per line
    lines: int  # S
    replaced: int  # undecodable bytes turned into U+FFFD


def _encode_block(block: str, ids_of: dict[str, int], words: list[str]) -> np.ndarray:
    """Provisional ids (int32) of a block of lines ending in ``\n``, with LINE_END after each line.

    A word seen for the first time is appended to ``words`` and gets id ``len(words)`` in ``ids_of``. Line ends
    become a mark token that cannot occur in the block (a run of NULs longer than any in it), so one ``split``
    and one dictionary lookup per token do it all.
    """
    mark = "\0"
    while mark in block:
        mark += "\0"
    tokens = block.replace("\n", f" {mark} ").split()
    shadowed = ids_of.get(mark)  # a word of another block equal to this block's mark
    ids_of[mark] = LINE_END
    ids = np.fromiter(map(ids_of.get, tokens, repeat(-1)), dtype=np.int32, count=len(tokens))  # (n,)
    if shadowed is None:
        del ids_of[mark]
    else:
        ids_of[mark] = shadowed
    for i in np.flatnonzero(ids < 0).tolist():  # words not seen before this block
        index = ids_of.get(tokens[i])
        if index is None:
            words.append(tokens[i])
            index = ids_of[tokens[i]] = len(words)
        ids[i] = index
    return ids


def tokenize_file(
    path: str | os.PathLike,
    ids_path: str | os.PathLike,
    offsets_path: str | os.PathLike,
    block_bytes: int | None = None,
) -> TokenizedFile:
    """Read a text file once and write its provisional token ids (int32) and line offsets (int64).

    Every line (``LineBlocks``) is its white-space tokens (``str.split``) followed by LINE_END, a blank line a
    lone LINE_END. Memory is one block of text and the word → id dictionary, whatever the file's size.
    """
    ids_of: dict[str, int] = {}
    words: list[str] = []
    blocks = LineBlocks(path, block_bytes)
    tokens = lines = 0
    with open(ids_path, "wb") as ids_file, open(offsets_path, "wb") as offsets_file:
        np.zeros(1, dtype=np.int64).tofile(offsets_file)
        for block in blocks:
            ids = _encode_block(block, ids_of, words)  # (n,)
            ends = np.flatnonzero(ids == LINE_END)  # (lines in the block,)
            ids.tofile(ids_file)
            (tokens + ends + 1).astype(np.int64).tofile(offsets_file)
            tokens, lines = tokens + ids.size, lines + ends.size
    return TokenizedFile(words=words, tokens=tokens, lines=lines, replaced=blocks.replaced)


def _chunks(path: Path, dtype: np.dtype) -> Iterator[tuple[int, np.ndarray]]:
    """(start, values) of consecutive ARRAY_CHUNK-long pieces of a flat integer file, read (not mapped)."""
    with open(path, "rb") as f:
        start = 0
        while (values := np.fromfile(f, dtype=dtype, count=ARRAY_CHUNK)).size:
            yield start, values
            start += values.size


def count_ids(ids_path: str | os.PathLike, size: int) -> np.ndarray:
    """How often each id occurs in an int32 file: (size,) int64, read ARRAY_CHUNK ids at a time."""
    counts = np.zeros(size, dtype=np.int64)
    for _, ids in _chunks(Path(ids_path), np.dtype(np.int32)):
        counts += np.bincount(ids, minlength=size)
    return counts


def remap_ids(ids_path: str | os.PathLike, table: np.ndarray) -> None:
    """ids ← table[ids] in place in an int32 file, ARRAY_CHUNK ids at a time (read and written, never mapped,
    so the pages do not count in this process's resident memory)."""
    table = np.asarray(table, dtype=np.int32)
    with open(ids_path, "r+b") as out:
        for start, ids in _chunks(Path(ids_path), np.dtype(np.int32)):
            out.seek(start * 4)
            table[ids].tofile(out)


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Size, modification time and the SHA-1 of 32 evenly spaced 32 KiB pieces (the whole file below 1 MiB).

    Reads at most 1 MiB, so checking a 4 GB corpus costs milliseconds; a change keeping size and mtime is caught
    only if it touches a sampled piece (always, for files under 1 MiB).
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        if stat.st_size <= _SAMPLES * _SAMPLE_BYTES:
            digest.update(f.read())
        else:
            last = stat.st_size - _SAMPLE_BYTES
            for i in range(_SAMPLES):
                f.seek(last * i // (_SAMPLES - 1))
                digest.update(f.read(_SAMPLE_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sample_sha1": digest.hexdigest()}


def _content_check(path: Path) -> dict[str, Any]:
    """What ``read_entry`` compares for a cache file: its size and sampled SHA-1 (not its mtime)."""
    found = fingerprint(path)
    return {"size": found["size"], "sample_sha1": found["sample_sha1"]}


def entry_key(description: dict[str, Any]) -> str:
    """A cache key: the SHA-1 of a JSON description (source fingerprints and the options that shape the data)."""
    text = json.dumps({"version": FORMAT_VERSION, **description}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:24]


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ebm" / "corpora"


def cache_root(folder: str | os.PathLike) -> Path:
    """Where the entries of a corpus folder live: ``folder/.ebm-cache``, or, when that cannot be written,
    ``$XDG_CACHE_HOME/ebm/corpora/<hash of the folder's absolute path>`` (``~/.cache`` by default)."""
    folder = Path(folder)
    beside = folder / CACHE_DIR_NAME
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK | os.X_OK):
            return beside
    except OSError:
        pass
    name = hashlib.sha1(str(folder.resolve()).encode("utf-8")).hexdigest()[:16]
    return _user_cache_dir() / name


def read_entry(root: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The manifest of entry ``key`` if the entry is complete and its files match it; None otherwise.

    Checked: the manifest parses and names this key and format version, every file it lists exists with the
    recorded size and sampled SHA-1, and every array file holds exactly ``count`` items of its ``dtype``.
    """
    folder = Path(root) / key
    try:
        manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("version") != FORMAT_VERSION or manifest.get("key") != key:
            return None
        for name, expected in manifest["files"].items():
            if _content_check(folder / name) != expected:
                return None
        for name, array in manifest["arrays"].items():
            if manifest["files"][name]["size"] != array["count"] * np.dtype(array["dtype"]).itemsize:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    manifest["path"] = str(folder)
    return manifest


def discard_entry(root: str | os.PathLike, key: str) -> None:
    """Delete entry ``key`` (one that read back wrong), so that ``write_entry`` rebuilds it."""
    _remove(Path(root) / key)


def _remove(path: Path) -> None:
    """Delete a folder, first renaming it so that no reader ever sees it half deleted."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale(root: Path, group: str, sources: dict[str, Any], keep: str) -> None:
    """Delete the entries of ``group`` built from other versions of its source files (they can never be read
    again) and staging folders left by builds that died long ago."""
    now = time.time()
    for path in root.iterdir():
        if path.name.startswith((".tmp-", ".trash-")):
            try:
                if now - path.stat().st_mtime > _STALE_STAGING_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        elif path.name != keep and path.is_dir():
            try:
                manifest = json.loads((path / _MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not ours, or being written by another process: leave it
            if isinstance(manifest, dict) and manifest.get("group") == group and manifest.get("sources") != sources:
                _remove(path)


def write_entry(
    root: str | os.PathLike, key: str, group: str, sources: dict[str, Any], fill: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """Build entry ``key`` and publish it atomically; returns its manifest (as ``read_entry`` gives it).

    ``fill(folder)`` writes the entry's files into an empty staging folder and returns the manifest's contents:
    JSON-able, with ``arrays``: {file name: {"dtype", "count"}} for the files ``open_array`` will map. The
    staging folder becomes ``root/key`` by one rename once every file and the manifest are written, so a crash
    or an error leaves no entry (and the staging folder is removed on errors). An existing entry under the same
    key that failed ``read_entry`` is replaced; if another process publishes a valid one first, that one is
    used. Other entries of the same ``group`` (e.g. the corpus folder) built from other ``sources`` (e.g. the
    fingerprints of its files) are deleted.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:8]}-", dir=root))
    try:
        manifest = {**fill(staging), "version": FORMAT_VERSION, "key": key, "group": group, "sources": sources}
        manifest["files"] = {path.name: _content_check(path) for path in sorted(staging.iterdir())}
        (staging / _MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        final = root / key
        if final.exists():
            if (published := read_entry(root, key)) is not None:  # another process was faster
                shutil.rmtree(staging)
                return published
            _remove(final)
        try:
            os.rename(staging, final)
        except OSError:
            if (published := read_entry(root, key)) is None:
                raise
            shutil.rmtree(staging)
            return published
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _remove_stale(root, group, sources, keep=key)
    manifest["path"] = str(final)
    return manifest


def open_array(manifest: dict[str, Any], name: str) -> Tensor:
    """Array ``name`` of an entry as a (count,) tensor over a copy-on-write memory map (nothing is read or
    copied until used; writing to the tensor changes this process's pages only, never the file)."""
    array = manifest["arrays"][name]
    mapped = np.memmap(Path(manifest["path"]) / name, dtype=np.dtype(array["dtype"]), mode="c",
                       shape=(array["count"],))
    return torch.from_numpy(mapped)


__all__ = [
    "BLOCK_BYTES",
    "CACHE_DIR_NAME",
    "LINE_END",
    "LineBlocks",
    "TokenizedFile",
    "cache_root",
    "count_ids",
    "discard_entry",
    "entry_key",
    "fingerprint",
    "normalize_newlines",
    "open_array",
    "read_entry",
    "remap_ids",
    "tokenize_file",
    "write_entry",
]
