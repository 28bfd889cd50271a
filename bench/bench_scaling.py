"""Data-parallel scaling, mixed precision and compilation of the language model on this machine.

    python bench/bench_scaling.py                               # all sections, WikiText-2 when present
    python bench/bench_scaling.py --sections scaling --dataset synthetic
    python bench/bench_scaling.py --sections step --vocab 10001 1001 --batch-size 20 80

Sections (one CPU thread per process):

  step      the training step alone (ebm.lm.distributed.DistributedLM: shard, loss, backward, gradient sync,
            clip, optimiser step) of the default recipe on 2 gloo ranks against 1 process, the same global
            batches of Zipf-distributed tokens over V words (--vocab, several allowed) at each --batch-size:
            tokens/s and their ratio. Seconds, not minutes: no corpus, no evaluation.
            --accumulate M: each rank runs its rows as M micro-batches (gradient accumulation). Each row is the
            median of --repeats runs (one process and two ranks alternating); the load average is printed beside
            each row: the CPU may be shared.
  collectives  the gradient sync alone on 2 gloo ranks: the dense gradients of the default LSTM and --row-mb
            MB of embedding rows per rank, packed into one all-gather and summed after (the earlier
            GradientSync), against an all-reduce of the dense part in flight beside an all-gather of the rows
            (GradientSync's way): ms of wall clock and of CPU per step (bench/results/collectives.md).
  scaling   (this and the next two: real ``train.py`` commands, each in its own process) torchrun with 2 gloo
            ranks against 1 process, the same global batch and the same epochs:
            tokens/s ratio (goal ≥ 1.7× on 2 cores) and test perplexity after equal data (goal: within 1%).
  amp       the same run with and without --amp (bfloat16 autocast): tokens/s and test perplexity.
  compile   the same run with and without --compile: seconds of the first epoch (compilation included),
            tokens/s of the second, test perplexity.

The model is the README's WikiText-2 set-up (2-layer LSTM 200/200, NCE k = 100, batch 20, bptt 35) on the
benchmark folder bench_lm.py builds from ../shared/data/wikitext-2 (train = valid.txt, test = test.txt), or
the synthetic language with --dataset synthetic. Results: bench/results/scaling.md and .jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
DENSE_FLOATS = 2 * (4 * 200 * (200 + 200) + 2 * 4 * 200)  # 2 LSTM layers of 200: 4H(E + H) weights, 2·4H biases
MODEL = ["--num-layers", "2", "--emb-size", "200", "--hidden-size", "200", "--batch-size", "20", "--bptt", "35",
         "--loss", "nce", "--noise-ratio", "100", "--threads", "1", "--device", "cpu",
         "--no-progress"]


def _dataset(name: str) -> list[str]:
    if name == "synthetic":
        return ["--dataset", "synthetic", "--synthetic-vocab", "10000", "--synthetic-tokens", "300000"]
    from ebm.data.layout import heldout_layout  # the benchmarks' held-out layout (test.txt read once, at the end)

    return ["--dataset", str(heldout_layout(WIKITEXT, RESULTS / "wikitext-2-heldout"))]


def _run(args: list[str], out: Path, processes: int = 1) -> list[dict]:
    launcher = (["torchrun", "--standalone", f"--nproc-per-node={processes}"] if processes > 1
                else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, str(ROOT / "train.py"), *args, "--out", str(out)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _row(name: str, records: list[dict]) -> dict:
    epochs = [r for r in records if not r.get("final")]
    return {"run": name, "tokens_per_s": epochs[-1]["tokens_per_s"], "first_epoch_s": epochs[0]["train_seconds"],
            "test_ppl": records[-1]["test_ppl"]}


def _step_worker(rank: int, world: int, port: int, vocab: int, batch: int, steps: int, micro_batches: int,
                 results) -> None:
    """Time ``steps`` training steps (after 3 unmeasured) of the default recipe on this rank; rank 0 reports."""
    from ebm.harness.context import DistributedContext
    from ebm.lm.build import build_model
    from ebm.lm.config import LMConfig
    from ebm.lm.distributed import DistributedLM, step_seed
    from ebm.lm.optim import clip_grad_norm_, make_optimizer

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    with DistributedContext.from_env("cpu") as context:
        config = LMConfig(batch_size=batch, progress=False)  # the recipe's defaults (dropout, noise per sequence)
        counts = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)  # Zipf, the shape of word frequencies
        torch.manual_seed(0)
        model = build_model(config, counts)
        optimizer = make_optimizer(model, config.optimizer, config.lr, model.sparse_parameters())
        parallel = DistributedLM(model, context)
        sync, sync_seconds = parallel.sync_gradients, [0.0]

        class TimedSync:  # the sync called after the backward pass, timed (its overlapped part is not)
            arm = sync.arm

            def __call__(self) -> int:
                start = time.perf_counter()
                sent = sync()
                sync_seconds[0] += time.perf_counter() - start
                return sent

        parallel.sync_gradients = TimedSync()
        data = torch.multinomial(counts, (steps + 3) * batch * (config.bptt + 1), replacement=True,
                                 generator=torch.Generator().manual_seed(0)).view(steps + 3, batch, config.bptt + 1)
        noise, state, params = torch.Generator().manual_seed(1), None, list(model.parameters())
        for step, chunk in enumerate(data):
            if step == 3:
                context.barrier()
                start, cpu_start, sync_seconds[0] = time.perf_counter(), time.process_time(), 0.0
            optimizer.zero_grad(set_to_none=True)
            _, state = parallel.forward_backward(chunk[:, :-1], chunk[:, 1:], state, noise=noise,
                                                 dropout_seed=step_seed(0, step), micro_batches=micro_batches)
            clip_grad_norm_(params, config.clip)
            optimizer.step()
        cpu_seconds = time.process_time() - cpu_start  # this process's threads, gloo's included; waits excluded
        context.barrier()
        if context.is_main:
            seconds = time.perf_counter() - start
            results.put((steps * batch * config.bptt / seconds, 1000 * sync_seconds[0] / steps, cpu_seconds / steps))


def _step_rate(world: int, vocab: int, batch: int, steps: int, micro_batches: int) -> tuple[float, float, float]:
    """(tokens/s, sync ms per step, CPU seconds per step of rank 0) on ``world`` gloo ranks (1: one process)."""
    results = mp.get_context("spawn").SimpleQueue()
    port = _free_port()
    mp.start_processes(_step_worker, args=(world, port, vocab, batch, steps, micro_batches, results),
                       nprocs=world, start_method="spawn")
    return results.get()


def _one_all_gather(dense: torch.Tensor, packed: torch.Tensor, gathered: torch.Tensor) -> None:
    """The earlier GradientSync: dense gradients and rows in one buffer, one all-gather, then the dense mean."""
    import torch.distributed as dist

    packed[0, : dense.numel() * 4].view(torch.float32).copy_(dense)
    dist.all_gather_single(gathered, packed)
    parts = gathered[:, : dense.numel() * 4].view(torch.float32)
    (torch.zeros_like(dense) + parts[0] + parts[1]) / 2


def _all_reduce_beside_all_gather(dense: torch.Tensor, payload: torch.Tensor, payloads: torch.Tensor) -> None:
    """GradientSync's way: the dense sum in flight while one all-gather carries the rows, then the division."""
    import torch.distributed as dist

    flat = torch.cat([dense])
    work = dist.all_reduce(flat, async_op=True)
    dist.all_gather_single(payloads, payload)
    work.wait()
    flat.div_(2)


def _collectives_worker(rank: int, port: int, row_bytes: list[int], calls: int, repeats: int, results) -> None:
    """Time the two ways of averaging a step's gradients on 2 gloo ranks; rank 0 reports (ms wall, ms CPU)."""
    import functools

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dense = torch.randn(DENSE_FLOATS)  # the default LSTM's dense gradients, float32
    measured: dict[str, list[float]] = {}
    for nbytes in row_bytes:
        packed = torch.zeros(1, DENSE_FLOATS * 4 + nbytes, dtype=torch.uint8)
        payload = torch.zeros(1, nbytes, dtype=torch.uint8)
        ways = {"one all-gather, then the sum": functools.partial(
                    _one_all_gather, dense, packed, torch.empty(2, packed.shape[1], dtype=torch.uint8)),
                "all-reduce beside an all-gather": functools.partial(
                    _all_reduce_beside_all_gather, dense, payload, torch.empty(2, nbytes, dtype=torch.uint8))}
        for name, sync in ways.items():
            for _ in range(3):
                sync()
            walls, cpus = [], []
            for _ in range(repeats):
                dist.barrier()
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    sync()
                walls.append(1000 * (time.perf_counter() - start) / calls)
                cpus.append(1000 * (time.process_time() - cpu_start) / calls)
            measured[f"{nbytes:,}|{name}"] = [statistics.median(walls), statistics.median(cpus)]
    dist.destroy_process_group()
    if rank == 0:
        results.put(measured)


def collectives_section(row_mb: list[float], calls: int, repeats: int) -> list[str]:
    """Markdown rows: ms per step (wall, and CPU of rank 0's process) of the two gradient syncs on 2 gloo ranks:
    the dense gradients packed with the rows into one all-gather and summed after, against an all-reduce of the
    dense gradients in flight beside an all-gather of the rows (what ``GradientSync`` does)."""
    results = mp.get_context("spawn").SimpleQueue()
    row_bytes = [int(mb * 1e6) for mb in row_mb]
    mp.start_processes(_collectives_worker, args=(_free_port(), row_bytes, calls, repeats, results), nprocs=2,
                       start_method="spawn")
    measured = results.get()
    lines = [f"gradient sync alone, 2 gloo ranks, dense gradients {DENSE_FLOATS * 4:,} bytes (the default LSTM), "
             f"median of {repeats} × {calls} calls", "",
             "| row bytes per rank | sync | ms wall | ms CPU |", "|---|---|---|---|"]
    for key, (wall, cpu) in measured.items():
        nbytes, name = key.split("|")
        lines.append(f"| {nbytes} | {name} | {wall:.2f} | {cpu:.2f} |")
    print("\n".join(lines), flush=True)
    return lines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_section(vocabs: list[int], batches: list[int], steps: int, micro_batches: int, repeats: int) -> list[str]:
    """Markdown rows: tokens/s of 1 process and of 2 gloo ranks and their ratio (wall clock), the sync's ms per
    step (the part after the backward pass, waiting for the slower rank included), and the CPU-time ratio: one
    process's CPU seconds per step over a rank's. Each figure is the median of ``repeats`` runs, one process and
    two ranks alternating; the ratio is the median of the repeats' ratios. On a shared CPU the wall-clock ratio
    follows the load; the CPU-time ratio is the speed-up two idle cores would give if no rank ever waited (an
    upper bound), the work each rank does, communication included."""
    lines = [f"training step only, default recipe, {steps} steps, micro-batches per rank {micro_batches}, "
             f"median of {repeats} alternating repeats", "",
             "| V | global batch | 1 process tok/s | 2 ranks tok/s | ratio | sync ms/step | CPU-time ratio "
             "| load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for vocab in vocabs:
        for batch in batches:
            runs = [(_step_rate(1, vocab, batch, steps, 1), _step_rate(2, vocab, batch, steps, micro_batches))
                    for _ in range(repeats)]
            one, two = (statistics.median(run[i][0] for run in runs) for i in (0, 1))
            ratio = statistics.median(t[0] / o[0] for o, t in runs)
            sync_ms = statistics.median(t[1] for _, t in runs)
            cpu_ratio = statistics.median(o[2] / t[2] for o, t in runs)
            lines.append(f"| {vocab:,} | {batch} | {one:,.0f} | {two:,.0f} | {ratio:.2f} | {sync_ms:.1f} | "
                         f"{cpu_ratio:.2f} | {os.getloadavg()[0]:.1f} |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=("step", "collectives", "scaling", "amp", "compile"),
                        default=["step", "collectives", "scaling", "amp", "compile"])
    parser.add_argument("--dataset", choices=("wikitext-2", "synthetic"),
                        default="wikitext-2" if (WIKITEXT / "valid.txt").exists() else "synthetic")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[20],
                        help="the global batch (sequences per step); the step section takes several")
    parser.add_argument("--vocab", type=int, nargs="+", default=[10_001, 1_001], help="step section: V")
    parser.add_argument("--steps", type=int, default=30, help="step section: measured steps per run")
    parser.add_argument("--accumulate", type=int, default=1, help="step section: micro-batches per rank")
    parser.add_argument("--repeats", type=int, default=3, help="step section: alternating runs per row (medians)")
    parser.add_argument("--row-mb", type=float, nargs="+", default=[0.5, 1.5],
                        help="collectives section: MB of embedding rows per rank (V = 10,001 at global batch 20, 80)")
    args = parser.parse_args(argv)
    step_lines = step_section(args.vocab, args.batch_size, args.steps, args.accumulate, args.repeats) \
        if "step" in args.sections else []
    if "collectives" in args.sections:
        RESULTS.mkdir(parents=True, exist_ok=True)
        collective_lines = collectives_section(args.row_mb, calls=40, repeats=args.repeats * 3)
        (RESULTS / "collectives.md").write_text("\n".join(collective_lines) + "\n")
    rows, runs = [], {"scaling", "amp", "compile"} & set(args.sections)
    base = [*_dataset(args.dataset), *MODEL, "--batch-size", str(args.batch_size[0])] if runs else []  # last flag wins
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        epochs = ["--epochs", str(args.epochs)]
        if "scaling" in args.sections:
            one = _row("1 process × 1 thread", _run([*base, *epochs], tmp / "one"))
            two = _row("2 gloo ranks × 1 thread", _run([*base, *epochs], tmp / "two", processes=2))
            rows += [one, {**two, "speed-up": two["tokens_per_s"] / one["tokens_per_s"],
                           "ppl ratio": two["test_ppl"] / one["test_ppl"]}]
        for flag in ("amp", "compile"):
            if flag in args.sections:
                plain = _row("fp32, eager", _run([*base, "--epochs", "2"], tmp / f"plain-{flag}"))
                other = _row(f"--{flag}", _run([*base, "--epochs", "2", f"--{flag}"], tmp / flag))
                rows += [plain, {**other, "speed-up": other["tokens_per_s"] / plain["tokens_per_s"],
                                 "ppl ratio": other["test_ppl"] / plain["test_ppl"]}]
    lines = [*step_lines, "", f"dataset {args.dataset}, global batch {args.batch_size[0]}, load average "
             f"{os.getloadavg()[0]:.1f}", "",
             "| run | tokens/s | first epoch s | test ppl | speed-up | ppl ratio |", "|---|---|---|---|---|---|"] \
        if runs else step_lines
    for r in rows:
        lines.append(f"| {r['run']} | {r['tokens_per_s']:,.0f} | {r['first_epoch_s']:.0f} | {r['test_ppl']:.2f} | "
                     f"{r.get('speed-up', float('nan')):.2f} | {r.get('ppl ratio', float('nan')):.4f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if lines:  # a collectives-only run leaves the last table in place
        (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    with (RESULTS / "scaling.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
