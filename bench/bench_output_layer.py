"""Benchmark of the sampled output layer (ebm.lm): training-step time, alias sampling, memory.

Prints markdown tables and writes them (plus JSON) to bench/results/:

  1. step   forward + backward + optimiser update of SampledOutput + loss, hidden 256, 20×35 tokens, for
            full softmax (dense Adam over V×H, the seed's design) vs NCE k=100, k=500 and sampled softmax k=100
            (sparse gradients, SparseAdam on the touched rows only): median ms, tokens/s, speed-up over full.
  2. alias  AliasSampler build time (vectorised O(V) table) at V = 10k, 100k, 1M.
  3. draws  draws/s of AliasSampler.sample vs torch.multinomial(probs, n, replacement=True), for n = 100
            (one step's shared noise) and n = 10⁶.
  4. memory peak resident memory of an NCE k=100 step at V = 1M (and, for contrast, a full-softmax step at
            V = 100k), each in a fresh subprocess: after set-up and one step (optimiser state allocated, freed
            heap returned with malloc_trim) the Linux high-water mark VmHWM is reset (/proc/self/clear_refs),
            so peak − baseline is what a step adds on top of parameters and optimiser state. (tracemalloc does
            not see torch's allocations; ru_maxrss cannot be reset, it is the fallback.)

Usage:
    python bench/bench_output_layer.py                       # everything (≈ 3-5 minutes on 2 cores)
    python bench/bench_output_layer.py --sections alias draws
    python bench/bench_output_layer.py --vocab 10000 100000 --losses full nce100 --repeats 10
    python bench/bench_output_layer.py --full-max-vocab 1000000   # also full softmax at V = 1M (≈ 6 GB)

Timings are medians over repeats after warm-up steps, with `--threads` intra-op threads (default 1: on a
shared 2-core machine two OpenMP threads stall whenever another process holds a core). The load average
before and after is printed with the tables.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ebm.lm import AliasSampler, SampledOutput

HIDDEN, BATCH, BPTT = 256, 20, 35
LOSSES = {"full": ("full", 1), "nce100": ("nce", 100), "nce500": ("nce", 500), "sampled100": ("sampled", 100)}
RESULTS = Path(__file__).resolve().parent / "results"


def zipf_counts(vocab_size: int) -> torch.Tensor:
    """Word-frequency-like counts: count(rank r) ∝ 1/r, the shape of real unigram noise."""
    return (1e9 / torch.arange(1, vocab_size + 1, dtype=torch.float64)).floor()


def median_seconds(fn, repeats: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_step(vocab_size: int, loss_key: str):
    """A closure running one training step, and the layer (kept alive by the closure)."""
    loss, k = LOSSES[loss_key]
    layer = SampledOutput(HIDDEN, vocab_size, noise=zipf_counts(vocab_size), loss=loss, noise_ratio=k)
    if loss == "full":
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)  # dense gradients over all V rows
    else:
        optimizer = torch.optim.SparseAdam(layer.sparse_parameters(), lr=1e-3)  # touched rows only
    hidden = torch.randn(BATCH, BPTT, HIDDEN, requires_grad=True)  # gradient flows back as to a network
    target = layer.noise.sample((BATCH, BPTT))  # Zipfian targets: realistic accidental hits

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        hidden.grad = None
        layer(hidden, target).backward()
        optimizer.step()

    return step


def bench_steps(vocabs: list[int], losses: list[str], repeats: int, full_max_vocab: int) -> list[dict]:
    rows = []
    for vocab_size in vocabs:
        for key in losses:
            if key == "full" and vocab_size > full_max_vocab:
                rows.append({"vocab": vocab_size, "loss": key, "ms": None, "repeats": 0})
                continue
            reps = repeats if key != "full" or vocab_size <= 33_000 else max(2, repeats // 5)
            warmup = 3 if key != "full" or vocab_size <= 100_000 else 1
            step = make_step(vocab_size, key)
            seconds = median_seconds(step, reps, warmup)
            rows.append({"vocab": vocab_size, "loss": key, "ms": 1e3 * seconds, "repeats": reps})
            print(f"  step V={vocab_size} {key}: {1e3 * seconds:.2f} ms ({reps} repeats)", file=sys.stderr)
            del step
            gc.collect()
    return rows


def bench_alias(vocabs: list[int], repeats: int) -> list[dict]:
    rows = []
    for vocab_size in vocabs:
        for name, probs in (("zipf", zipf_counts(vocab_size)), ("uniform-random", torch.rand(vocab_size))):
            seconds = median_seconds(lambda p=probs: AliasSampler(p), repeats, warmup=1)
            rows.append({"vocab": vocab_size, "probs": name, "ms": 1e3 * seconds})
    return rows


def bench_draws(vocabs: list[int], sizes: list[int], repeats: int) -> list[dict]:
    """Each timing is a loop of calls drawing ≥ 10⁵ values in all, so per-call overhead is measured fairly."""
    rows = []
    for vocab_size in vocabs:
        probs = zipf_counts(vocab_size).float()
        probs /= probs.sum()
        sampler = AliasSampler(probs)
        for n in sizes:
            calls = max(1, 100_000 // n)

            def alias(n=n, calls=calls, sampler=sampler):
                for _ in range(calls):
                    sampler.sample((n,))

            def multinomial(n=n, calls=calls, probs=probs):
                for _ in range(calls):
                    torch.multinomial(probs, n, replacement=True)

            alias_s = median_seconds(alias, repeats, warmup=1) / calls
            multi_s = median_seconds(multinomial, repeats, warmup=1) / calls
            rows.append({"vocab": vocab_size, "n": n, "alias_per_s": n / alias_s, "multinomial_per_s": n / multi_s})
    return rows


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(vocab_size: int, loss_key: str, steps: int) -> dict:
    """Runs in a fresh process: RSS after set-up and one step (optimiser state allocated; freed heap handed
    back to the OS with glibc's malloc_trim), then the peak RSS over `steps` steps."""
    step = make_step(vocab_size, loss_key)
    step()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the VmHWM high-water mark to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (not resettable: includes set-up)"
    for _ in range(steps):
        step()
    peak = _rss_kib("VmHWM")
    return {"vocab": vocab_size, "loss": loss_key, "baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
            "step_mib": (peak - baseline) / 1024, "method": method}


def bench_memory(vocab_size: int, loss_key: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(vocab_size), loss_key, "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    params = vocab_size * (HIDDEN + 1) * 4
    result.update({"params_mib": params / 2**20, "adam_state_mib": 2 * params / 2**20,
                   "dense_logits_mib": BATCH * BPTT * vocab_size * 4 / 2**20})
    return result


def fmt(x: float | None, digits: int = 2) -> str:
    return "skipped" if x is None else f"{x:,.{digits}f}"


def step_table(rows: list[dict]) -> str:
    full = {r["vocab"]: r["ms"] for r in rows if r["loss"] == "full"}
    base = {r["vocab"]: r["ms"] for r in rows if r["loss"] == "nce100"}
    lines = ["| V | loss | median ms/step | tokens/s | speed-up over full | repeats |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = full.get(r["vocab"]) / r["ms"] if full.get(r["vocab"]) and r["ms"] else None
        tps = BATCH * BPTT / (r["ms"] / 1e3) if r["ms"] else None
        lines.append(f"| {r['vocab']:,} | {r['loss']} | {fmt(r['ms'])} | {fmt(tps, 0)} | "
                     f"{'n/a' if ratio is None else f'{ratio:,.1f}×'} | {r['repeats']} |")
    if base:
        smallest, largest = min(base), max(base)
        lines.append("")
        lines.append(f"NCE k=100 step at V={largest:,} / at V={smallest:,}: {base[largest] / base[smallest]:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["step", "alias", "draws", "memory"],
                        choices=["step", "alias", "draws", "memory"])
    parser.add_argument("--vocab", nargs="+", type=int, default=[10_000, 33_000, 100_000, 1_000_000])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--full-max-vocab", type=int, default=100_000,
                        help="largest V at which full softmax is timed (at 1M it needs ≈ 6 GB and seconds per step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.memory_child is not None:
        vocab_size, loss_key = args.memory_child
        print(json.dumps(memory_child(int(vocab_size), loss_key, steps=5)))
        return

    load_before = os.getloadavg()
    results: dict = {"threads": args.threads, "torch": torch.__version__, "cpus": os.cpu_count()}
    out: list[str] = []
    if "step" in args.sections:
        results["step"] = bench_steps(args.vocab, args.losses, args.repeats, args.full_max_vocab)
        out += ["### Training step: output layer + loss + optimiser update (hidden 256, 20×35 tokens)", "",
                step_table(results["step"]), ""]
    if "alias" in args.sections:
        results["alias"] = bench_alias([10_000, 100_000, 1_000_000], repeats=7)
        out += ["### Alias table build (AliasSampler(probs), median of 7)", "",
                "| V | probabilities | build ms |", "|---|---|---|"]
        out += [f"| {r['vocab']:,} | {r['probs']} | {r['ms']:.1f} |" for r in results["alias"]] + [""]
    if "draws" in args.sections:
        results["draws"] = bench_draws([10_000, 1_000_000], [100, 1_000_000], repeats=9)
        out += ["### Draws per second: AliasSampler.sample vs torch.multinomial (with replacement), Zipf probs", "",
                "| V | draws per call | alias draws/s | multinomial draws/s | alias / multinomial |",
                "|---|---|---|---|---|"]
        out += [f"| {r['vocab']:,} | {r['n']:,} | {r['alias_per_s']:,.0f} | {r['multinomial_per_s']:,.0f} | "
                f"{r['alias_per_s'] / r['multinomial_per_s']:,.1f}× |" for r in results["draws"]] + [""]
    if "memory" in args.sections:
        results["memory"] = [bench_memory(1_000_000, "nce100", args.threads),
                             bench_memory(100_000, "full", args.threads)]
        out += ["### Memory of a training step (fresh subprocess per row)", "",
                "| V | loss | parameters (V×257 float32) | Adam state | RSS after set-up | peak RSS over 5 steps | "
                "added by a step | one [tokens × V] float32 tensor |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {m['vocab']:,} | {m['loss']} | {m['params_mib']:,.0f} MiB | {m['adam_state_mib']:,.0f} MiB | "
                f"{m['baseline_mib']:,.0f} MiB | {m['peak_mib']:,.0f} MiB | {m['step_mib']:,.1f} MiB | "
                f"{m['dense_logits_mib']:,.0f} MiB |" for m in results["memory"]]
        out += ["", f"Measured with {results['memory'][0]['method']}.", ""]
    load_after = os.getloadavg()
    results["load"] = {"before": load_before, "after": load_after}
    out.append(f"torch {torch.__version__}, {args.threads} intra-op thread(s), {os.cpu_count()} CPUs; load average "
               f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after.")
    text = "\n".join(out)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"output_layer-{stamp}.md").write_text(text + "\n")
    (RESULTS / f"output_layer-{stamp}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
