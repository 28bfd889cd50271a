"""One training step of the output layer at large vocabularies: the exact chunked cross-entropy, NCE, sampled
softmax and PyTorch's adaptive softmax, side by side.

A step is forward + backward + optimiser update of the output layer on 20×35 = 700 tokens of H = 256 features
(a leaf tensor standing for the network's output, whose gradient is computed too), with Zipfian targets
(p(rank r) ∝ 1/(r + 1)) over word ids shuffled at random (the vocabulary is not in frequency order, as the
adaptive softmax's rank permutation must handle). The optimiser is the language model's:
``make_optimizer(layer, "adam", lr, layer.sparse_parameters())`` (Adam on dense gradients, SparseAdam on the
touched rows of the sampled losses).

    full      ``SampledOutput(loss="full")``: above 2^25 scores the chunked exact loss
              (``ebm.lm.losses.chunked_cross_entropy``), dense gradients; the "detail" column names the path used
              (cut_cross_entropy on CUDA where installed).
    full-dense  the same loss through the dense (N, V) logits (``loss_chunk_elements`` = ∞), for the cost of
              chunking; only at V ≤ ``--dense-max-vocab``.
    nce       NCE, k = 100 noise words drawn per sequence (the LM default).
    sampled   sampled softmax, k = 100 per sequence.
    adaptive  ``AdaptiveOutput`` (``nn.AdaptiveLogSoftmaxWithLoss``) with cutoffs at the given fractions of V
              (default 0.02, 0.2: 20k / 200k at V = 1M, 2k / 20k at V = 100k), div_value 4.

Each (V, loss) runs in a fresh subprocess with one intra-op thread (``--threads``): one warm-up step (which
allocates the optimiser state), glibc's ``malloc_trim``, then the Linux high-water mark VmHWM is reset
(/proc/self/clear_refs) and ``--repeats`` steps are timed. "step peak" is VmHWM − the resident memory before the
timed steps (what a step adds on top of parameters and optimiser state); "resident" is that baseline; both MiB.
(tracemalloc does not see torch's allocations.) Times are wall-clock and CPU (``time.process_time``) medians: on
a shared machine the CPU time is the steadier figure of the work a step does.

Usage:
    python bench/bench_large_vocab.py                              # V = 100k and 1M, all four losses
    python bench/bench_large_vocab.py --vocab 100000 --losses full nce --repeats 5
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

from ebm.lm.adaptive import AdaptiveOutput
from ebm.lm.optim import make_optimizer
from ebm.lm.output import SampledOutput

HIDDEN, BATCH, BPTT, NOISE_RATIO = 256, 20, 35, 100
LOSSES = ("full", "full-dense", "nce", "sampled", "adaptive")


def zipf_counts(vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """(V,) counts ∝ 1/(rank + 1) (10⁹ tokens), ranks assigned to word ids by a random permutation."""
    by_rank = (1e9 / torch.arange(1, vocab_size + 1, dtype=torch.float64)).round().clamp_min(1).long()
    return by_rank[torch.randperm(vocab_size, generator=generator)]


def make_layer(loss: str, vocab_size: int, counts: torch.Tensor, fractions: list[float]) -> torch.nn.Module:
    if loss == "adaptive":
        cutoffs = sorted({round(f * vocab_size) for f in fractions})
        return AdaptiveOutput(HIDDEN, vocab_size, counts, cutoffs=cutoffs)
    chunking = {"loss_chunk_elements": 2**62} if loss == "full-dense" else {}
    return SampledOutput(HIDDEN, vocab_size, noise=counts, loss=loss.removesuffix("-dense"), noise_ratio=NOISE_RATIO,
                         noise_sharing="sequence", **chunking)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(vocab_size: int, loss: str, repeats: int, fractions: list[float]) -> dict:
    """Runs in a fresh process: median step time and the step's peak memory above the resident baseline."""
    generator = torch.Generator().manual_seed(0)
    counts = zipf_counts(vocab_size, generator)
    layer = make_layer(loss, vocab_size, counts, fractions)
    optimizer = make_optimizer(layer, "adam", 1e-3, layer.sparse_parameters())
    target = torch.multinomial(counts.double(), BATCH * BPTT, replacement=True, generator=generator)
    target = target.view(BATCH, BPTT)
    hidden = torch.randn(BATCH, BPTT, HIDDEN, generator=generator, requires_grad=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        hidden.grad = None
        layer(hidden, target, generator=generator).backward()
        optimizer.step()

    step()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    peak = _rss_kib("VmHWM")
    detail = {"adaptive": f"cutoffs {getattr(layer, 'cutoffs', '')}",
              "full": f"backend {getattr(layer, 'full_loss_backend', '')}",
              "full-dense": f"backend {getattr(layer, 'full_loss_backend', '')}"}.get(loss, f"k = {NOISE_RATIO} "
                                                                                       "per sequence")
    return {"vocab": vocab_size, "loss": loss, "ms": 1000 * statistics.median(times),
            "cpu_ms": 1000 * statistics.median(cpu_times), "repeats": repeats,
            "step_mib": (peak - baseline) / 1024, "resident_mib": baseline / 1024, "detail": detail}


def run_child(vocab_size: int, loss: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(vocab_size), loss, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--cutoff-fractions", *map(str, args.cutoff_fractions)]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    nce = {r["vocab"]: r["cpu_ms"] for r in rows if r["loss"] == "nce"}
    lines = ["| V | loss | wall ms/step | CPU ms/step | tokens/s (CPU) | × NCE's CPU time | step peak MiB | "
             "resident MiB | detail |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['cpu_ms'] / nce[r['vocab']]:,.1f}" if r["vocab"] in nce else "—"
        lines.append(f"| {r['vocab']:,} | {r['loss']} | {r['ms']:,.1f} | {r['cpu_ms']:,.1f} | "
                     f"{BATCH * BPTT / r['cpu_ms'] * 1000:,.0f} | {ratio} | {r['step_mib']:,.0f} | "
                     f"{r['resident_mib']:,.0f} | {r['detail']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--cutoff-fractions", type=float, nargs="+", default=[0.02, 0.2],
                        help="adaptive softmax cutoffs as fractions of V")
    parser.add_argument("--dense-max-vocab", type=int, default=100_000, help="largest V of the full-dense rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("V", "LOSS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.repeats, args.cutoff_fractions)))
        return
    load = os.getloadavg()[0]
    rows = [run_child(v, loss, args) for v in args.vocab for loss in args.losses
            if loss != "full-dense" or v <= args.dense_max_vocab]
    print(f"Output-layer training step, H = {HIDDEN}, {BATCH}×{BPTT} tokens, Zipfian targets, {args.threads} "
          f"thread(s), Adam (+ SparseAdam for sampled rows), median of {args.repeats} after 1 warm-up; load "
          f"average {load:.1f} → {os.getloadavg()[0]:.1f}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
