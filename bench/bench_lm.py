"""Benchmark of the whole NCE language model (ebm.lm.train): time to quality, quality at equal time and epochs.

Prints markdown tables and writes them to bench/results/lm_<section>.md; every training run is also kept in
bench/results/lm_runs.json (one entry per run, replaced when the same run is measured again), so sections run
in separate invocations share their runs and ``--report-only`` reprints the tables without training.

  step    median time of one whole training step (embedding → 2-layer LSTM 200/200 → output → backward → clip →
          update, 20×35 tokens) with NCE k=100 (one noise draw per batch, and one per sequence), against the same
          network with *no output layer* (its loss a cheap function of the features), at V = 100k and 1M; full
          softmax at V = 100k for contrast.
  budget  each loss trained for the same seconds (--budget, 390 in the issue) on WikiText-2: exact test perplexity,
          self-normalised perplexity, log Z − norm (mean ± sd on all of test; mean |·| and quantiles on the test
          tokens outside the valid prefix), tokens/s, epochs. Runs go side by side, --jobs at a time.
  time    time to target: the training seconds at which each run's exact perplexity first reaches the full
          softmax's perplexity at the end of its --budget run, read from each run's evaluation points (the
          validation perplexity after every epoch and after the last, partial one; see ``seconds_to_target``);
          and the runs of --short-budget seconds (39 by default: 1/10 of the budget), because a cosine schedule
          over a short budget is a different run from the first seconds of a long one. Needs the budget run of
          "full" (run --sections budget first, or in the same call).
  epochs  equal epochs on the synthetic language (V = --synthetic-vocab words + <unk>): validation perplexity
          per epoch with each loss's ratio to the full softmax, and the test perplexity at the end; "converged"
          means the last epoch changed the validation perplexity by less than --flat (0.5 %).

The losses are the package's recipe (LMConfig defaults: tied 2×200 LSTM, locked dropout 0.4/0.3/0.4, Adam 4e-3
held for half the run then cosine to 0, batch 20, bptt 35) with the loss swapped: full softmax, NCE k = 100
(one noise draw per sequence), sampled softmax k = 100; NCE with --calibrate-norm, and with a
self-normalisation penalty as well; and, as a reference row, the seed's design (NCE k = 100 with noise shared
by the batch, untied, dropout 0.2, dense gradients, SGD lr 1 with momentum 0.9, clip 0.25, lr halved when the
validation perplexity does not improve), which the package cannot express: this file swaps in dense gradients
and momentum SGD inside that run's process only.

WikiText-2 set-up (the training split is not on this machine): train.txt = WikiText-2 valid.txt, test.txt =
WikiText-2 test.txt, and valid.txt = the first 10% of the lines of test.txt (the plateau decay, the per-epoch
curve and --calibrate-norm read it; a full-softmax pass over all of test.txt every epoch would cost more than an
NCE epoch). Files are linked or written under bench/results/, never copied into the repository.

Usage (hours on a shared 2-core CPU; each run uses --threads threads, --jobs runs at a time):
    python bench/bench_lm.py --sections step
    python bench/bench_lm.py --sections budget time                  # WikiText-2: 4 runs of 390 s, 1 of 39 s
    python bench/bench_lm.py --sections budget --losses nce100-calib nce100-selfnorm
    python bench/bench_lm.py --sections time --short-budget 39 --seeds 0 1
    python bench/bench_lm.py --sections epochs --epochs 10           # synthetic language, V = 2,001
    python bench/bench_lm.py --sections budget time epochs --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ebm.data.corpus import batchify, bptt_chunks
from ebm.lm import train as lm_train
from ebm.lm.models import RNNLM
from ebm.lm.optim import SplitOptimizer, clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput
from ebm.lm.train import LMConfig, load_lm, load_lm_corpus, train_lm

RESULTS = Path(__file__).resolve().parent / "results"
STORE = RESULTS / "lm_runs.json"
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
SEED_DESIGN = dict(loss="nce", noise_ratio=100, noise_sharing="batch", tie_weights=False, dropout=0.2,
                   dropout_embedding=None, dropout_between=None, dropout_output=None, locked_dropout=False,
                   optimizer="sgd", lr=1.0, clip=0.25, schedule="plateau", lr_decay=0.5)
# name → LMConfig settings over the package defaults ("seed" also swaps in dense gradients and momentum SGD)
RECIPES: dict[str, dict[str, Any]] = {
    "full": dict(loss="full"),
    "nce100": dict(loss="nce", noise_ratio=100),
    "nce10": dict(loss="nce", noise_ratio=10),
    "nce500": dict(loss="nce", noise_ratio=500),
    "sampled100": dict(loss="sampled", noise_ratio=100),
    "nce100-calib": dict(loss="nce", noise_ratio=100, calibrate_norm=True),
    "nce100-selfnorm": dict(loss="nce", noise_ratio=100, selfnorm_weight=1.0, calibrate_norm=True),
    "seed": SEED_DESIGN,
}
DEFAULT_LOSSES = {"budget": ["full", "nce100", "sampled100", "seed"], "time": ["nce100"],
                  "epochs": ["full", "nce100", "nce10", "nce500"]}
DEFAULT_DATASETS = {"budget": ["wikitext-2"], "time": ["wikitext-2"], "epochs": ["synthetic"]}
GAP_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ------------------------------------------------------------------------------------------------------ step
class _NoOutput(torch.nn.Module):
    """Stands in for the output layer: loss = mean of the squared features (no vocabulary work at all)."""

    loss = "none"

    def forward(self, features: torch.Tensor, target: torch.Tensor, generator=None) -> torch.Tensor:
        return features.pow(2).mean()

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        return []


def _make_step(vocab_size: int, loss: str, k: int, noise_sharing: str = "batch"):
    """A closure running one full training step of the 2-layer LSTM 200/200 LM on 20×35 tokens; returns seconds."""
    counts = (1.0 / torch.arange(1, vocab_size + 1)).mul(1e7).round()  # Zipfian counts
    output = _NoOutput() if loss == "none" else SampledOutput(200, vocab_size, counts, loss=loss, noise_ratio=k,
                                                              noise_sharing=noise_sharing)
    model = RNNLM(vocab_size, output, 200, 200, 2, dropout=0.2)
    optimizer = make_optimizer(model, "adam", 1e-3, model.sparse_parameters())
    params = list(model.parameters())
    x, y = torch.randint(vocab_size, (20, 35)), torch.randint(vocab_size, (20, 35))

    def step() -> float:
        start = time.perf_counter()
        value, _ = model.loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        return time.perf_counter() - start

    return step


def bench_step(vocab_sizes: list[int], repeats: int) -> tuple[str, list[dict]]:
    """No-output and NCE steps are timed alternately (so load changes hit both alike); medians."""
    rows = []
    for vocab_size in vocab_sizes:
        cases = {"no output layer": ("none", 1), "NCE k=100, noise per batch": ("nce", 100, "batch"),
                 "NCE k=100, noise per sequence (the LM default)": ("nce", 100, "sequence")}
        if vocab_size <= 100_000:
            cases["full softmax"] = ("full", 1)
        steps = {name: _make_step(vocab_size, *case) for name, case in cases.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for i in range(repeats + 2):
            for name, step in steps.items():
                if name != "full softmax" or i % 4 == 0:  # full softmax is slow: a few samples suffice
                    seconds = step()
                    if i >= 2 or name == "full softmax":
                        times[name].append(seconds)
        del steps
        base = statistics.median(times["no output layer"])
        for name, samples in times.items():
            seconds = statistics.median(samples)
            rows.append({"V": vocab_size, "step": name, "ms": 1e3 * seconds, "tokens_per_s": 700 / seconds,
                         "ratio_to_no_output": seconds / base, "samples": len(samples)})
    lines = ["| V | step | ms | tokens/s | × no-output step |", "|---|---|---|---|---|"]
    lines += [f"| {r['V']:,} | {r['step']} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['ratio_to_no_output']:.2f} |"
              for r in rows]
    return "\n".join(lines), rows


# ------------------------------------------------------------------------------------------------- training
def wikitext_folder(source: Path) -> Path:
    """bench/results/wikitext-2-bench/{train,valid,test}.txt built from the shared valid/test files."""
    folder = RESULTS / "wikitext-2-bench"
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("train.txt", source / "valid.txt"), ("test.txt", source / "test.txt")):
        link = folder / name
        if not link.exists():
            os.symlink(target.resolve(), link)
    with (source / "test.txt").open(encoding="utf-8") as f:  # lines as the corpus reader counts them
        lines = list(f)
    valid, text = folder / "valid.txt", "".join(lines[: len(lines) // 10])
    if not valid.exists() or valid.read_text(encoding="utf-8") != text:  # runs started together read it unchanged
        partial = folder / f"valid.txt.{os.getpid()}"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, valid)  # atomic: a reader sees the old file or the new one, never half of it
    return folder


def _use_seed_design() -> None:
    """The seed's dense gradients and SGD with momentum 0.9, patched into ebm.lm.train in this process only."""
    build_model = lm_train.build_model

    def dense_model(config: LMConfig, counts: torch.Tensor, sparse: bool = True) -> torch.nn.Module:
        return build_model(config, counts, sparse=False)

    def momentum_sgd(model: torch.nn.Module, name: str, lr: float, sparse=()) -> SplitOptimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return SplitOptimizer([torch.optim.SGD(params, lr=lr, momentum=0.9)])

    lm_train.build_model, lm_train.make_optimizer = dense_model, momentum_sgd


def run_key(run: dict) -> str:
    """What identifies a run in the store: dataset, recipe, seed and budget or epochs."""
    length = f"b{run['budget']:g}" if run.get("budget") else f"e{run['epochs']}"
    return f"{run['dataset']}/{run['recipe']}/s{run['seed']}/{length}"


def _curve(out: Path) -> list[list[float]]:
    """[[training seconds, validation ppl, epoch]] after every completed epoch, from the run's metrics.jsonl."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [[m["train_seconds"], m["valid_ppl"], m["epoch"]] for m in lines if "valid_ppl" in m and not m.get("final")]


@torch.no_grad()
def _gap_tail(model: torch.nn.Module, ids: torch.Tensor, bptt: int) -> dict[str, Any]:
    """Exact ppl and log Z − norm statistics over a token stream (10 rows, state carried, as ``evaluate``)."""
    nll, gaps, state = [], [], None
    for input, target in bptt_chunks(batchify(ids, 10), bptt):
        token_nll, gap, state = model.scores(input, target, state)
        nll.append(token_nll.reshape(-1).double())
        if gap is not None:
            gaps.append(gap.reshape(-1).double())
    result: dict[str, Any] = {"ppl": math.exp(float(torch.cat(nll).mean()))}
    if gaps:
        gap = torch.cat(gaps)
        result.update(mean=float(gap.mean()), sd=float(gap.std()), abs=float(gap.abs().mean()),
                      quantiles=torch.quantile(gap, torch.tensor(GAP_QUANTILES, dtype=torch.float64)).tolist())
    return result


def _after_training(result: dict, config: LMConfig) -> dict:
    """The final model's validation ppl (the last point of the curve) and log Z − norm on the test tokens outside
    the valid prefix (the bench's valid split is the first 10% of test, which --calibrate-norm reads)."""
    model = load_lm(result["out"]).model  # the checkpoint holds the final model, before any norm calibration
    if result.get("norm_shift") and isinstance(getattr(model.output, "norm", None), torch.Tensor):
        model.output.norm.add_(result["norm_shift"])
    corpus = load_lm_corpus(config)
    extra = {"final_valid_ppl": _gap_tail(model, corpus.valid.ids, config.bptt)["ppl"]}
    if config.dataset != "synthetic" and config.loss != "full":  # test = valid prefix + tail (WikiText-2 bench)
        tail = _gap_tail(model, corpus.test.ids[len(corpus.valid):], config.bptt)
        extra["test_tail"] = {"tokens": len(corpus.test) - len(corpus.valid), **tail}
    return extra


def train_one(spec: dict) -> dict:
    """One run (in a fresh process): the recipe's LMConfig, trained, then measured; returns its store entry."""
    recipe = RECIPES[spec["recipe"]]
    if spec["recipe"] == "seed":
        _use_seed_design()
    dataset = str(wikitext_folder(WIKITEXT)) if spec["dataset"] == "wikitext-2" else spec["dataset"]
    config = LMConfig(dataset=dataset, out=str(RESULTS / "lm_runs" / run_key(spec).replace("/", "_")),
                      progress=False, threads=spec["threads"], seed=spec["seed"], epochs=spec["epochs"],
                      time_budget=spec.get("budget"), synthetic_vocab=spec["synthetic_vocab"], **recipe)
    load_start, started = os.getloadavg(), time.perf_counter()
    result = train_lm(config)
    entry = {**spec, **result, "wall_s": time.perf_counter() - started, "load_start": load_start,
             "load_end": os.getloadavg(), "curve": _curve(Path(result["out"])),
             "date": datetime.now().isoformat(timespec="seconds")}
    entry.update(_after_training(result, config))
    return entry


def run_all(specs: list[dict], jobs: int) -> list[dict]:
    """Train ``specs`` in fresh processes, ``jobs`` at a time (in order, so neighbours run side by side); each
    finished run goes into the store at once."""
    entries = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(train_one, spec) for spec in specs]
        for future in futures:
            entry = future.result()
            save_entries([entry])
            entries.append(entry)
            print(f"  {run_key(entry)}: test ppl {entry['test_ppl']:.2f}, {entry['epoch']} epochs, "
                  f"{entry['train_seconds']:.0f} s, {entry['tokens_per_s']:,.0f} tok/s, load {entry['load_end']}",
                  flush=True)
    return entries


def load_entries() -> dict[str, dict]:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def save_entries(entries: list[dict]) -> None:
    store = load_entries()
    store.update({run_key(e): e for e in entries})
    partial = STORE.with_suffix(f".{os.getpid()}")
    partial.write_text(json.dumps(store, indent=1, default=str))
    os.replace(partial, STORE)


# --------------------------------------------------------------------------------------------------- tables
def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _full_of(store: dict, dataset: str, seed: int, budget: float | None = None, epochs: int | None = None):
    key = run_key({"dataset": dataset, "recipe": "full", "seed": seed, "budget": budget, "epochs": epochs})
    return store.get(key)


def budget_tables(store: dict, dataset: str, budget: float) -> str:
    """Equal-time table and the self-normalisation table for the runs of ``budget`` seconds on ``dataset``."""
    rows = [e for e in store.values() if e["dataset"] == dataset and e.get("budget") == budget]
    lines = ["| loss | seed | epochs | train s | tokens/s | test ppl | × full | self-norm ppl | log Z − norm "
             "(test) | valid ppl at end | load start → end | date |", "|---" * 12 + "|"]
    quantiles = " / ".join(f"q{round(100 * q):02d}" for q in GAP_QUANTILES)
    gap_lines = [f"| loss | seed | tail tokens | exact ppl | self-norm ppl | mean | sd | mean abs | {quantiles} |",
                 "|---" * 9 + "|"]
    for r in rows:
        full = _full_of(store, dataset, r["seed"], budget=budget)
        ratio = _fmt(r["test_ppl"] / full["test_ppl"], ".3f") if full else "–"
        gap = (f"{r['test_log_z_gap_mean']:+.3f} ± {r['test_log_z_gap_std']:.3f}" if "test_log_z_gap_mean" in r
               else "–")
        load = f"{r['load_start'][0]:.1f} → {r['load_end'][0]:.1f}"
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['epoch']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['test_ppl']:.2f} | {ratio} | {_fmt(r.get('test_ppl_selfnorm'))} | "
                     f"{gap} | {_fmt(r.get('final_valid_ppl'))} | {load} | {r['date'][:16]} |")
        tail = r.get("test_tail", {})
        if "mean" in tail:
            quantiles = " / ".join(f"{q:+.2f}" for q in tail["quantiles"])
            gap_lines.append(f"| {r['recipe']} | {r['seed']} | {tail['tokens']:,} | {tail['ppl']:.2f} | "
                             f"{math.exp(math.log(tail['ppl']) - tail['mean']):.2f} | {tail['mean']:+.3f} | "
                             f"{tail['sd']:.3f} | {tail['abs']:.3f} | {quantiles} |")
    return "\n".join(lines) + "\n\nlog Z(context) − norm on the test tokens after the valid prefix (disjoint from " \
        "what --calibrate-norm reads); goal mean |·| ≤ 0.1, sd ≤ 0.15:\n\n" + "\n".join(gap_lines)


def seconds_to_target(points: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """First training second at which a curve of (seconds, ppl) evaluation points reaches ``target``.

    Between two points the log-perplexity is interpolated linearly in seconds; a curve whose first point is
    already at or below the target gives that point's seconds as an upper bound ("≤"). Returns (seconds, how):
    how is "", "≤" or "not reached".
    """
    if not points or min(p for _, p in points) > target:
        return None, "not reached"
    if points[0][1] <= target:
        return points[0][0], "≤"
    for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False):
        if p1 <= target:
            share = (math.log(p0) - math.log(target)) / (math.log(p0) - math.log(p1))
            return t0 + share * (t1 - t0), ""
    raise AssertionError("unreachable")


def _points(entry: dict) -> list[tuple[float, float]]:
    """Evaluation points of a run: (seconds, valid ppl) after every epoch and at the end of the run."""
    points = [(t, p) for t, p, _ in entry["curve"]]
    if "final_valid_ppl" in entry and (not points or entry["train_seconds"] > points[-1][0] + 1e-6):
        points.append((entry["train_seconds"], entry["final_valid_ppl"]))
    return points


def time_table(store: dict, dataset: str, budget: float) -> str:
    """Seconds to the full softmax's perplexity after ``budget`` s, for every run on ``dataset``."""
    fulls = [e for e in store.values()
             if e["dataset"] == dataset and e["recipe"] == "full" and e.get("budget") == budget]
    if not fulls:
        return f"(no full-softmax run of {budget:g} s on {dataset} in {STORE.name}: run --sections budget first)"
    full = min(fulls, key=lambda e: e["seed"])
    target_valid, target_test = full["final_valid_ppl"], full["test_ppl"]
    lines = [f"Target: the full softmax (seed {full['seed']}) after {budget:g} s: valid ppl {target_valid:.2f}, test "
             f"ppl {target_test:.2f}.", "",
             "| loss | seed | budget s | evaluation points (s: valid ppl) | s to target valid ppl | ÷ "
             f"{budget:g} s | test ppl at end | test ≤ target? |", "|---|---|---|---|---|---|---|---|"]
    rows = sorted((e for e in store.values() if e["dataset"] == dataset and e.get("budget")),
                  key=lambda e: (e["recipe"], -e["budget"], e["seed"]))
    for r in rows:
        points = _points(r)
        shown = ", ".join(f"{t:.0f}: {p:.1f}" for t, p in points[:4])
        if len(points) > 4:
            shown += f", … {points[-1][0]:.0f}: {points[-1][1]:.1f}"
        seconds, how = seconds_to_target(points, target_valid)
        best = min(p for _, p in points)
        reached = f"{how} {seconds:.0f}".strip() if seconds is not None else f"not reached (best {best:.1f})"
        ratio = f"{how} {seconds / budget:.3f}".strip() if seconds is not None else "–"
        meets = "yes" if r["test_ppl"] <= target_test else "no"
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['budget']:g} | {shown} | {reached} | {ratio} | "
                     f"{r['test_ppl']:.2f} | {meets} |")
    return "\n".join(lines)


def epochs_table(store: dict, dataset: str, epochs: int, flat: float) -> str:
    """Test ppl after ``epochs`` epochs and the validation ppl per epoch, each loss's ratio to the full softmax."""
    rows = [e for e in store.values() if e["dataset"] == dataset and not e.get("budget") and e["epochs"] == epochs]
    if not rows:
        return f"(no {epochs}-epoch runs on {dataset} in {STORE.name})"
    lines = ["| loss | seed | epochs | train s | tokens/s | test ppl | × full | self-norm ppl | log Z − norm | floor "
             "exp(H) | last epoch Δ valid | converged |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        full = _full_of(store, dataset, r["seed"], epochs=epochs)
        ratio = _fmt(r["test_ppl"] / full["test_ppl"], ".3f") if full else "–"
        gap = (f"{r['test_log_z_gap_mean']:+.3f} ± {r['test_log_z_gap_std']:.3f}" if "test_log_z_gap_mean" in r
               else "–")
        curve = [p for _, p, _ in r["curve"]]
        change = (curve[-1] - curve[-2]) / curve[-2] if len(curve) > 1 else None
        converged = "–" if change is None else ("yes" if abs(change) < flat else "no")
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['epoch']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['test_ppl']:.2f} | {ratio} | {_fmt(r.get('test_ppl_selfnorm'))} | "
                     f"{gap} | {_fmt(r.get('floor_ppl'))} | {_fmt(None if change is None else 100 * change, '+.2f')} % "
                     f"| {converged} |")
    by_loss = {(r["recipe"], r["seed"]): [p for _, p, _ in r["curve"]] for r in rows}
    names = list(by_loss)
    head = "| epoch | " + " | ".join(f"{n} (s{s})" for n, s in names) + " |"
    per_epoch = ["Validation perplexity per epoch (× full softmax of the same seed):", "", head,
                 "|---|" + "---|" * len(names)]
    for epoch in range(max(len(c) for c in by_loss.values())):
        cells = []
        for name, seed in names:
            curve, full = by_loss[(name, seed)], by_loss.get(("full", seed), [])
            if epoch >= len(curve):
                cells.append("–")
            elif name != "full" and epoch < len(full):
                cells.append(f"{curve[epoch]:.2f} ({curve[epoch] / full[epoch]:.3f})")
            else:
                cells.append(f"{curve[epoch]:.2f}")
        per_epoch.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(per_epoch)


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["step", "budget", "time", "epochs"],
                        choices=["step", "budget", "time", "epochs"])
    parser.add_argument("--datasets", nargs="+", choices=["wikitext-2", "synthetic"],
                        help="default: wikitext-2 for budget and time, synthetic for epochs")
    parser.add_argument("--losses", nargs="+", choices=list(RECIPES),
                        help=f"recipes to train; default per section: {DEFAULT_LOSSES}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every trained recipe")
    parser.add_argument("--vocab", nargs="+", type=int, default=[100_000, 1_000_000], help="V for the step section")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per case (median)")
    parser.add_argument("--synthetic-vocab", type=int, default=2000, help="words of the synthetic language")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the equal-epochs section")
    parser.add_argument("--flat", type=float, default=0.005, help="'converged': last epoch's relative change below")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds of training per loss (budget section)")
    parser.add_argument("--short-budget", type=float, default=39.0, help="seconds of the time section's own runs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--report-only", action="store_true", help="print the tables from the stored runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.now().isoformat(timespec='seconds')}  load average {os.getloadavg()}, threads {args.threads}, "
          f"jobs {args.jobs}")
    for section in args.sections:
        datasets = args.datasets or DEFAULT_DATASETS.get(section, [])
        losses = args.losses or DEFAULT_LOSSES.get(section, [])
        if section == "step":
            if args.report_only:
                continue
            table, _ = bench_step(args.vocab, args.repeats)
            title = "Whole LM step, 2-layer LSTM 200/200, 20×35 tokens"
        else:
            length = {"budget": dict(budget=args.budget, epochs=1000),
                      "time": dict(budget=args.short_budget, epochs=1000),
                      "epochs": dict(budget=None, epochs=args.epochs)}[section]
            specs = [dict(dataset=d, recipe=loss, seed=s, threads=args.threads, synthetic_vocab=args.synthetic_vocab,
                          section=section, **length) for d in datasets for s in args.seeds for loss in losses]
            if not args.report_only and specs and (section != "time" or args.short_budget > 0):
                run_all(specs, args.jobs)
            store = load_entries()
            if section == "budget":
                title = f"Equal training time ({args.budget:g} s)"
                table = "\n\n".join(f"{d}\n\n" + budget_tables(store, d, args.budget) for d in datasets)
            elif section == "time":
                title = f"Time to the full softmax's {args.budget:g}-s perplexity"
                table = "\n\n".join(f"{d}\n\n" + time_table(store, d, args.budget) for d in datasets)
            else:
                title = f"Equal epochs ({args.epochs})"
                table = "\n\n".join(f"{d}\n\n" + epochs_table(store, d, args.epochs, args.flat) for d in datasets)
        text = f"## {title}\n\n{table}\n"
        print(f"\n{text}\n{datetime.now().isoformat(timespec='seconds')}  load average {os.getloadavg()}", flush=True)
        (RESULTS / f"lm_{section}.md").write_text(text)


if __name__ == "__main__":
    main()
