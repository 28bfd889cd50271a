"""Bytes per step of the gradient sync (ebm.lm.distributed.GradientSync) against a dense all-reduce.

A realistic step on 2 gloo ranks of this CPU: an LSTM language model (embedding and hidden size 256, one layer)
with an NCE output layer (k = 100 noise words drawn once per global batch and shared by the ranks, or once per
sequence as the LM does by default: --noise-sharing), a global batch of 20×35 tokens split into 2 shards of
10×35. Tokens and noise are drawn from a Zipf unigram p(r) ∝ 1/(r+1) over V (the shape of word frequencies in
text), so a shard touches a few hundred (shared noise) to about a thousand (noise per sequence) distinct rows.

For every row-synchronised parameter (input embedding V×256, output embedding V×256, output bias V) it prints:
  rows      distinct rows this rank touched (n_r, after coalescing) and the union over ranks
  sparse    bytes of this rank's rows in the one packed all-gather: n_r rows of (int64 index + float32 values),
            8-byte aligned; a ring all-gather sends its buffer once per peer, (W − 1) times, so at W = 2 once
  dense     bytes a ring all-reduce of the dense gradient sends per rank: 2(W − 1)/W · V·width·4, at W = 2
            the tensor's size
  ratio     sparse / dense
and the measured time of the sparse sync against a dense all-reduce of the same parameters, plus the bytes
the loopback interface carried (Linux /proc/net/dev, both ranks together, so halved; it counts TCP framing and
any other process using loopback at the time, so it is a check on the formula, not the figure itself).
The dense LSTM gradients, summed by their own all-reduce beside the all-gather, are listed for scale; the
all-gather's buffer is the largest rank's (header and rows) plus 1/8 headroom, so a step gathers once.

Usage:
    python bench/bench_sparse_sync.py                    # V = 100k and 1M (≈ 1 min; 2 GB of parameters per rank at 1M)
    python bench/bench_sparse_sync.py --vocab 100000 --steps 5
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ebm.harness.context import DistributedContext
from ebm.lm.distributed import DistributedLM, shard_rows
from ebm.lm.models import RNNLM
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import AliasSampler

WORLD, BATCH, BPTT, HIDDEN, K = 2, 20, 35, 256, 100


def loopback_bytes() -> int | None:
    """Bytes sent on the loopback interface so far (Linux), else None."""
    path = Path("/proc/net/dev")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])  # transmit bytes
    return None


def _measure(context: DistributedContext, action) -> tuple[float, int | None, object]:
    """Seconds and loopback bytes of ``action()`` run by all ranks between two barriers."""
    context.barrier()
    before, start = loopback_bytes(), time.perf_counter()
    result = action()
    context.barrier()
    seconds, after = time.perf_counter() - start, loopback_bytes()
    return seconds, (after - before) // WORLD if before is not None else None, result


def worker(rank: int, port: int, vocab: int, steps: int, sharing: str, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    with DistributedContext.from_env("cpu") as context:
        torch.manual_seed(0)
        counts = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)  # Zipf
        words = AliasSampler.from_counts(counts)
        output = SampledOutput(in_features=HIDDEN, vocab_size=vocab, noise=counts, loss="nce", noise_ratio=K,
                               noise_sharing=sharing)
        output.noise_shard = (context.rank, WORLD, BATCH)  # each rank keeps its rows of the global batch's draws
        model = RNNLM(vocab, output, emb_size=HIDDEN, hidden_size=HIDDEN, num_layers=1, dropout=0.0, cell="lstm")
        parallel = DistributedLM(model, context)
        rows_params = model.sparse_parameters()
        names = {id(p): name for name, p in model.named_parameters()}
        text, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)  # same on every rank
        records = []
        for _ in range(steps):
            tokens = shard_rows(words.sample((BATCH, BPTT + 1), generator=text), context.rank, WORLD)
            loss, _ = model.loss(tokens[:, :-1], tokens[:, 1:], generator=noise)
            model.zero_grad(set_to_none=True)
            loss.backward()
            local: list = [None] * WORLD
            dist.all_gather_object(local, [p.grad.coalesce()._nnz() for p in rows_params])  # [rank][param]
            sync_s, sync_lo, sent = _measure(context, parallel.sync_gradients)
            union = [p.grad._nnz() for p in rows_params]
            records.append({"local": local, "union": union, "sent": sent, "sync_s": sync_s, "sync_lo": sync_lo,
                            "capacity": parallel.sync_gradients.capacity})
        dense_s, dense_lo = [], []
        for p in rows_params:  # one dense gradient at a time (1 GB each at V = 1M)
            grad = torch.zeros_like(p)
            seconds, lo, _ = _measure(context, lambda g=grad: dist.all_reduce(g))
            dense_s.append(seconds)
            dense_lo.append(lo)
            del grad
        row_ids = {id(p) for p in rows_params}
        lstm = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in row_ids)
        if context.is_main:
            results.put({"vocab": vocab, "sharing": sharing, "names": [names[id(p)] for p in rows_params],
                         "params": len(list(model.parameters())),
                         "shapes": [tuple(p.shape) for p in rows_params], "records": records,
                         "dense_s": dense_s, "dense_lo": dense_lo, "lstm_bytes": lstm})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(result: dict) -> None:
    vocab, records = result["vocab"], result["records"]
    print(f"\n### V = {vocab:,}: {WORLD} gloo ranks, global batch {BATCH}×{BPTT}, k = {K} noise words per "
          f"{result['sharing']}, "
          f"hidden {HIDDEN} (median over {len(records)} steps)\n")
    print("| parameter | rows per rank (max) | rows, union | sparse bytes/rank | dense bytes/rank | sparse/dense |")
    print("|---|---:|---:|---:|---:|---:|")
    dense_total = 0.0
    for i, (name, shape) in enumerate(zip(result["names"], result["shapes"], strict=True)):
        width = shape[1] if len(shape) > 1 else 1
        rows = statistics.median(max(r["local"][rank][i] for rank in range(WORLD)) for r in records)
        union = statistics.median(r["union"][i] for r in records)
        sparse = (WORLD - 1) * rows * (8 + 4 * width)  # max_r n_r rows: int64 index + float32 values
        dense = 2 * (WORLD - 1) / WORLD * shape[0] * width * 4
        dense_total += dense
        print(f"| {name} {tuple(shape)} | {rows:,.0f} | {union:,.0f} | {sparse:,.0f} | {dense:,.0f} | "
              f"{sparse / dense:.4%} |")
    # per rank: a header (one int64 per parameter and the total), then each row parameter's n_r rows
    widths = [shape[1] if len(shape) > 1 else 1 for shape in result["shapes"]]
    aligned = lambda n: -(-n // 8) * 8  # noqa: E731
    buffers = [max(8 * (result["params"] + 1)
                   + sum(aligned(rank[i] * 8) + aligned(rank[i] * 4 * w) for i, w in enumerate(widths))
                   for rank in r["local"]) for r in records]
    if any(r["capacity"] < b for r, b in zip(records, buffers, strict=True)) or records[-1]["sent"] != \
            records[-1]["capacity"] + result["lstm_bytes"]:
        raise RuntimeError(f"the largest buffers from the formula {buffers} do not fit the all-gather's "
                           f"{[r['capacity'] for r in records]} bytes, or a steady step gathered more than once")
    sparse_total = statistics.median(buffers) * (WORLD - 1)
    print(f"| **all rows** (header included) | | | **{sparse_total:,.0f}** | **{dense_total:,.0f}** | "
          f"**{sparse_total / dense_total:.4%}** |")
    print(f"\nbytes handed to the collectives per rank and step (rows with 1/8 headroom, dense LSTM gradients): "
          f"{statistics.median(r['sent'] for r in records[1:] or records):,.0f}")
    sync_s = statistics.median(r["sync_s"] for r in records)
    sync_lo = [r["sync_lo"] for r in records if r["sync_lo"] is not None]
    print(f"\nsync of every gradient: {sync_s * 1e3:.1f} ms/step; dense all-reduce of the row parameters alone: "
          f"{sum(result['dense_s']) * 1e3:,.0f} ms ({sum(result['dense_s']) / sync_s:,.0f}× longer)")
    if sync_lo and all(lo is not None for lo in result["dense_lo"]):
        print(f"loopback bytes per rank (TCP, any process): sparse sync {statistics.median(sync_lo):,.0f}, "
              f"dense all-reduce {sum(result['dense_lo']):,.0f}")
    print(f"dense LSTM gradients (all-reduced beside the all-gather): {result['lstm_bytes']:,} bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--noise-sharing", nargs="+", choices=("batch", "sequence"), default=["batch", "sequence"],
                        help="one noise draw per global batch (shared by the ranks), or one per sequence (the LM's "
                             "default: more distinct rows per step)")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for sharing in args.noise_sharing:
        for vocab in args.vocab:
            results = mp.get_context("spawn").SimpleQueue()
            mp.spawn(worker, args=(_free_port(), vocab, args.steps, sharing, results), nprocs=WORLD)
            report(results.get())
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
