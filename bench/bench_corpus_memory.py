"""Peak memory and time of loading a large corpus (``ebm.data.corpus.load_corpus``): goal ≤ 1 GB at 100M tokens.

The bench writes a synthetic corpus (train.txt of about ``--tokens`` tokens counting one <eos> per line, valid
and test of 200k each) under bench/results/corpus_memory/ (git-ignored), streaming it out chunk by chunk with
numpy: words are drawn from a Zipf law p(r) ∝ 1/(r + 1) over ``--vocab`` words (the shape of word frequencies
in text), line lengths uniformly from 1 to 49 (mean 25). Then three fresh processes each report their peak
resident memory (VmHWM from /proc/self/status, else ru_maxrss) and timings:

  baseline   imports torch and ebm.data.corpus only (the floor every run pays)
  build      the first load_corpus: tokenises the three files into the cache (.ebm-cache/), maps it, and reads
             a few batches (20 bptt chunks of a 64-row batchify, 20 sentence batches of 64, shuffled)
  cached     the same with the cache in place

Mapped pages count in the resident memory once touched (as clean, file-backed pages: "file" below), and the
kernel maps a whole large page-cache folio (up to a few hundred KB) at each touched place, so even a few
scattered batches show tens of MB there; a whole epoch maps the whole ids file (4 bytes a token).

Usage:
    nice -n 10 python bench/bench_corpus_memory.py                      # 100M tokens (about 10 minutes here)
    python bench/bench_corpus_memory.py --tokens 10000000 --keep        # smaller; keep the files afterwards
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "corpus_memory"
CHUNK_TOKENS = 1 << 20
HELD_OUT_TOKENS = 200_000


def memory_bytes() -> dict[str, int]:
    """This process's peak resident set size ("peak": VmHWM on Linux, else ru_maxrss), and on Linux the resident
    memory now split into anonymous ("anon": Python objects, tensors) and file-backed pages ("file": mapped
    files such as the cache; clean, so the kernel reclaims them under pressure)."""
    status = Path("/proc/self/status")
    fields = {"VmHWM:": "peak", "RssAnon:": "anon", "RssFile:": "file"}
    found = {}
    if status.exists():
        for line in status.read_text().splitlines():
            name = line.split(maxsplit=1)[0] if line.strip() else ""
            if name in fields:
                found[fields[name]] = int(line.split()[1]) * 1024
    if "peak" not in found:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found["peak"] = peak if sys.platform == "darwin" else peak * 1024
    return found


def write_text(path: Path, tokens: int, vocab: int, rng: np.random.Generator) -> int:
    """Write about ``tokens`` tokens (words plus one <eos> per line) of Zipfian text; returns the exact count."""
    words = np.array([f"w{rank:x}".encode() for rank in range(vocab)], dtype=object)
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    cdf /= cdf[-1]
    written = 0
    with open(path, "wb") as f:
        while written < tokens:
            lengths = rng.integers(1, 50, size=max(1, min(CHUNK_TOKENS, tokens - written) // 26))  # words per line
            ranks = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), vocab - 1)  # (n,)
            separators = np.full(ranks.size, b" ", dtype=object)
            separators[np.cumsum(lengths) - 1] = b"\n"
            pieces = np.empty(2 * ranks.size, dtype=object)
            pieces[0::2], pieces[1::2] = words[ranks], separators
            f.write(b"".join(pieces.tolist()))
            written += ranks.size + lengths.size
    return written


def make_corpus(folder: Path, tokens: int, vocab: int, seed: int) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": tokens, "valid": HELD_OUT_TOKENS, "test": HELD_OUT_TOKENS}
    return {split: write_text(folder / f"{split}.txt", n, vocab, rng) for split, n in sizes.items()}


def child(folder: str, mode: str) -> None:
    """Run in a fresh process: load (or only import) and print one JSON line of figures."""
    start = time.perf_counter()
    import torch

    from ebm.data.corpus import batchify, bptt_chunks, load_corpus, sentence_batches

    torch.set_num_threads(1)  # tiny batch ops; a second thread only waits on a shared machine
    result = {"import_s": time.perf_counter() - start}
    if mode != "baseline":
        start = time.perf_counter()
        corpus = load_corpus(folder)
        result["load_s"] = time.perf_counter() - start
        start = time.perf_counter()
        data = batchify(corpus.train.ids, 64)
        chunks = [y for _, (_, y) in zip(range(20), bptt_chunks(data, 35), strict=False)]
        generator = torch.Generator().manual_seed(0)
        batches = list(zip(range(20), sentence_batches(corpus.train, 64, corpus.vocab.eos_index, generator),
                           strict=False))
        result["batches_s"] = time.perf_counter() - start
        result["tokens"] = len(corpus.train)
        result["vocab"] = len(corpus.vocab)
        result["checksum"] = int(sum(int(y.sum()) for y in chunks) + sum(int(b[1][1].sum()) for b in batches))
    print(json.dumps({**result, **memory_bytes()}))


def run_child(folder: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--out", str(folder)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="training tokens, <eos> included")
    parser.add_argument("--vocab", type=int, default=200_000, help="distinct words of the Zipf law")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus folder (recreated)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and its cache afterwards")
    parser.add_argument("--child", choices=["baseline", "load"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(str(args.out), args.child)
        return

    shutil.rmtree(args.out, ignore_errors=True)
    start = time.perf_counter()
    counts = make_corpus(args.out, args.tokens, args.vocab, args.seed)
    size = (args.out / "train.txt").stat().st_size
    seconds = time.perf_counter() - start
    print(f"generated {counts['train']:,} training tokens ({size / 1e6:,.0f} MB of text) in {seconds:.0f} s")
    baseline = run_child(args.out, "baseline")
    build = run_child(args.out, "load")
    cached = run_child(args.out, "load")
    assert build["checksum"] == cached["checksum"], "the cached corpus reads differently from the first build"
    cache_bytes = sum(p.stat().st_size for p in (args.out / ".ebm-cache").rglob("*") if p.is_file())

    print(f"\ntrain: {build['tokens']:,} tokens, {size / 1e6:,.0f} MB of text, V = {build['vocab']:,}; "
          f"cache {cache_bytes / 1e6:,.0f} MB\n")
    def mib(r: dict, key: str) -> str:
        return f"{r[key] / 2**20:,.0f}" if key in r else "-"

    print(f"{'process':<10} {'load s':>8} {'batches s':>10} {'peak RSS MB':>12} {'anon MB':>8} {'file MB':>8}")
    print(f"{'baseline':<10} {'':>8} {'':>10} {mib(baseline, 'peak'):>12} {mib(baseline, 'anon'):>8} "
          f"{mib(baseline, 'file'):>8}")
    for name, r in (("build", build), ("cached", cached)):
        print(f"{name:<10} {r['load_s']:>8.2f} {r['batches_s']:>10.2f} {mib(r, 'peak'):>12} {mib(r, 'anon'):>8} "
              f"{mib(r, 'file'):>8}")
    print("(anon and file: resident at the end, anonymous and file-backed)")
    goal = "met" if max(build["peak"], cached["peak"]) <= 2**30 else "NOT met"
    print(f"\ngoal: peak RSS ≤ 1 GB: {goal}; build rate {build['tokens'] / build['load_s'] / 1e6:.2f}M tokens/s")
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
