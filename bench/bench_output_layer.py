"""Benchmark of the sampled output layer (ebm.lm): training-step time, alias sampling, memory.

Prints markdown tables and writes them (plus JSON) to bench/results/:

  1. step   forward + backward + optimiser update of SampledOutput + loss, hidden 256, 20×35 tokens, for
            full softmax (dense Adam over V×H) vs NCE k=100, k=500 and sampled softmax k=100 (sparse gradients,
            SparseAdam on the touched rows only), and NCE k=100 the seed's way (dense gradients, dense Adam):
            median ms, tokens/s, speed-up over full. Dense steps get fewer repeats at large V. The sampled
            losses draw their k noise words per sequence (each of the 20 rows its own k: the language model's
            default, ``noise_sharing="sequence"``) or, in the rows marked "batch", once for the whole batch
            (``SampledOutput``'s default); the table names which.
  2. alias  AliasSampler build time (vectorised O(V) table) at V = 10k, 100k, 1M.
  3. draws  draws/s of AliasSampler.sample vs torch.multinomial(probs, n, replacement=True), for n = 100
            (one step's shared noise) and n = 10⁶.
  4. memory peak resident memory of an NCE k=100 step at V = 1M, noise per sequence and per batch (and,
            for contrast, a full-softmax step at V = 100k), each in a fresh subprocess: after set-up and one
            step (optimiser state allocated, freed heap returned with malloc_trim) the Linux high-water mark
            VmHWM is reset (/proc/self/clear_refs), so peak − baseline is what a step adds on top of
            parameters and optimiser state. (tracemalloc does not see torch's allocations; ru_maxrss cannot
            be reset, it is the fallback.)

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
# name → (loss, k, sparse gradients + SparseAdam?, who shares a draw of k noise words: SampledOutput's
# noise_sharing); "nce100-dense" is NCE the seed's way: dense V×H gradients, Adam, one draw per batch.
LOSSES = {
    "full": ("full", 1, False, "batch"),  # no noise: the sharing is moot
    "nce100": ("nce", 100, True, "sequence"),
    "nce100-batch": ("nce", 100, True, "batch"),
    "nce500": ("nce", 500, True, "sequence"),
    "sampled100": ("sampled", 100, True, "sequence"),
    "sampled100-batch": ("sampled", 100, True, "batch"),
    "nce100-dense": ("nce", 100, False, "batch"),
}
DENSE_KEYS = [key for key, (_, _, sparse, _) in LOSSES.items() if not sparse]
RESULTS = Path(__file__).resolve().parent / "results"


def zipf_counts(vocab_size: int) -> torch.Tensor:
    """Word-frequency-like counts: count(rank r) ∝ 1/r, the shape of real unigram noise."""
    return (1e9 / torch.arange(1, vocab_size + 1, dtype=torch.float64)).floor()


def interleaved_medians(fns: dict, repeats: dict, warmup: int = 1) -> dict:
    """Median seconds per call of each function, timed round-robin (one call of each in turn), so that load
    changes on a shared machine hit every entry alike. `repeats` maps each key to its number of timings."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {key: [] for key in fns}
    for round_ in range(max(repeats.values())):
        for key, fn in fns.items():
            if round_ < repeats[key]:
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def make_steps(vocab_size: int, keys: list[str]) -> dict:
    """One closure per loss running a training step of the output layer. The sparse sampled losses share one
    layer and one SparseAdam (touched rows only); full softmax and the dense NCE variant each get their own
    layer with dense Adam over all V×H weights."""
    hidden = torch.randn(BATCH, BPTT, HIDDEN, requires_grad=True)  # its gradient flows back as to a network
    steps = {}
    sampled = sampled_optimizer = None
    for key in keys:
        loss, k, sparse, sharing = LOSSES[key]
        if not sparse:
            layer = SampledOutput(HIDDEN, vocab_size, noise=zipf_counts(vocab_size), loss=loss, noise_ratio=k,
                                  noise_sharing=sharing, sparse=False)
            optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
        else:
            if sampled is None:
                sampled = SampledOutput(HIDDEN, vocab_size, noise=zipf_counts(vocab_size), loss="nce")
                sampled_optimizer = torch.optim.SparseAdam(sampled.sparse_parameters(), lr=1e-3)
            layer, optimizer = sampled, sampled_optimizer
        target = layer.noise.sample((BATCH, BPTT))  # Zipfian targets: realistic accidental hits

        def step(layer=layer, optimizer=optimizer, target=target, loss=loss, k=k, sharing=sharing) -> None:
            layer.loss, layer.noise_ratio, layer.noise_sharing = loss, k, sharing
            optimizer.zero_grad(set_to_none=True)
            hidden.grad = None
            layer(hidden, target).backward()
            optimizer.step()

        steps[key] = step
    return steps


def bench_steps(vocabs: list[int], losses: list[str], repeats: int, full_max_vocab: int) -> list[dict]:
    fns, reps = {}, {}
    for vocab_size in vocabs:
        keys = [key for key in losses if key != "full" or vocab_size <= full_max_vocab]
        dense_reps = repeats if vocab_size <= 10_000 else max(2, repeats // (2 if vocab_size <= 33_000 else 5))
        for key, step in make_steps(vocab_size, keys).items():
            fns[vocab_size, key] = step
            reps[vocab_size, key] = dense_reps if key in DENSE_KEYS else repeats
    medians = interleaved_medians(fns, reps, warmup=2)
    rows = []
    for vocab_size in vocabs:
        for key in losses:
            seconds = medians.get((vocab_size, key))
            rows.append({"vocab": vocab_size, "loss": key, "ms": None if seconds is None else 1e3 * seconds,
                         "repeats": reps.get((vocab_size, key), 0)})
    return rows


def bench_alias(vocabs: list[int], repeats: int) -> list[dict]:
    fns = {}
    for vocab_size in vocabs:
        for name, probs in (("zipf", zipf_counts(vocab_size)), ("uniform-random", torch.rand(vocab_size))):
            fns[vocab_size, name] = lambda p=probs: AliasSampler(p)
    medians = interleaved_medians(fns, dict.fromkeys(fns, repeats))
    return [{"vocab": v, "probs": name, "ms": 1e3 * seconds} for (v, name), seconds in medians.items()]


def bench_draws(vocabs: list[int], sizes: list[int], repeats: int) -> list[dict]:
    """Each timing is a loop of calls drawing ≥ 10⁵ values in all, so per-call overhead is measured fairly."""
    fns, calls = {}, {}
    for vocab_size in vocabs:
        probs = zipf_counts(vocab_size).float()
        probs /= probs.sum()
        sampler = AliasSampler(probs)
        for n in sizes:
            calls[vocab_size, n] = m = max(1, 100_000 // n)

            def alias(n=n, m=m, sampler=sampler):
                for _ in range(m):
                    sampler.sample((n,))

            def multinomial(n=n, m=m, probs=probs):
                for _ in range(m):
                    torch.multinomial(probs, n, replacement=True)

            fns[vocab_size, n, "alias"], fns[vocab_size, n, "multinomial"] = alias, multinomial
    medians = interleaved_medians(fns, dict.fromkeys(fns, repeats))
    return [{"vocab": v, "n": n, "alias_per_s": n * calls[v, n] / medians[v, n, "alias"],
             "multinomial_per_s": n * calls[v, n] / medians[v, n, "multinomial"]} for (v, n) in calls]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(vocab_size: int, loss_key: str, steps: int) -> dict:
    """Runs in a fresh process: RSS after set-up and one step (optimiser state allocated; freed heap handed
    back to the OS with glibc's malloc_trim), then the peak RSS over `steps` steps."""
    step = make_steps(vocab_size, [loss_key])[loss_key]
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


def noise_drawn_per(key: str) -> str:
    """Who shares a draw of noise words in loss ``key``: "sequence", "batch", or "—" (the full softmax)."""
    loss, _, _, sharing = LOSSES[key]
    return "—" if loss == "full" else sharing


def fmt(x: float | None, digits: int = 2) -> str:
    return "skipped" if x is None else f"{x:,.{digits}f}"


def step_table(rows: list[dict]) -> str:
    full = {r["vocab"]: r["ms"] for r in rows if r["loss"] == "full"}
    base = {r["vocab"]: r["ms"] for r in rows if r["loss"] == "nce100"}
    lines = ["| V | loss | noise drawn per | median ms/step | tokens/s | speed-up over full | repeats |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = full.get(r["vocab"]) / r["ms"] if full.get(r["vocab"]) and r["ms"] else None
        tps = BATCH * BPTT / (r["ms"] / 1e3) if r["ms"] else None
        lines.append(f"| {r['vocab']:,} | {r['loss']} | {noise_drawn_per(r['loss'])} | {fmt(r['ms'])} | "
                     f"{fmt(tps, 0)} | {'n/a' if ratio is None else f'{ratio:,.1f}×'} | {r['repeats']} |")
    if base:
        smallest, largest = min(base), max(base)
        lines.append("")
        lines.append(f"NCE k=100 step (noise per sequence) at V={largest:,} / at V={smallest:,}: "
                     f"{base[largest] / base[smallest]:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["step", "alias", "draws", "memory"],
                        choices=["step", "alias", "draws", "memory"])
    parser.add_argument("--vocab", nargs="+", type=int, default=[10_000, 33_000, 100_000, 1_000_000])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--full-max-vocab", type=int, default=100_000,
                        help="largest V at which full softmax is timed (at 1M it needs ≈ 6 GB and ~a minute per step)")
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
        results["alias"] = bench_alias([10_000, 100_000, 1_000_000], repeats=9)
        out += ["### Alias table build (AliasSampler(probs), median of 9)", "",
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
                             bench_memory(1_000_000, "nce100-batch", args.threads),
                             bench_memory(100_000, "full", args.threads)]
        out += ["### Memory of a training step (fresh subprocess per row)", "",
                "| V | loss | noise drawn per | parameters (V×257 float32) | Adam state | RSS after set-up | "
                "peak RSS over 5 steps | added by a step | one [tokens × V] float32 tensor |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {m['vocab']:,} | {m['loss']} | {noise_drawn_per(m['loss'])} | "
                f"{m['params_mib']:,.0f} MiB | {m['adam_state_mib']:,.0f} MiB | "
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
