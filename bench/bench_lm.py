"""Benchmark of the whole language model (ebm.lm.train) on a held-out layout: equal time, time to target, large
vocabularies, equal epochs. Tables go to stdout and <results>/lm_<section>.md; every run to <results>/lm_runs.json
(replaced when measured again), so sections run apart share their runs and ``--report-only`` reprints them.

WikiText-2 (only valid.txt and test.txt here) is laid out by ``ebm.data.layout.heldout_layout``: train = the first
90% of valid.txt's lines, valid = the rest, test = test.txt, a link ``train_lm`` opens only for the final score.
What a run chooses (plateau halvings, ``--calibrate-norm``, the curves of the time section) reads valid; every
table prints its layout. After the final score the bench scores the saved model on valid once more.

  step    one whole training step (2-layer LSTM 200/200, 20×35 tokens), NCE k=100 with noise per batch and per
          sequence, against the same network with *no output layer*, at V = --vocab (full softmax at V ≤ 100k).
  budget  --budget seconds (390 in issue 16) per run on WikiText-2: {lstm, transformer} × {full, adaptive,
          nce100, sampled100}, and for the LSTM the seed's design, nce100-calib and nce100-selfnorm: exact test
          ppl, tokens/s, epochs, the final model's valid ppl; for sampled losses exp(−mean(s − norm)) on test
          beside log Z − norm. That value is a (self-normalised) perplexity only for NCE, whose scores normalise;
          sampled softmax's do not (log Z − norm ≈ +2). Calibrated rows: perplexity cost against plain nce100.
  time    read from the budget runs: the training seconds at which each run's valid curve (every epoch and the
          end; ``seconds_to_target``) first reaches the full and the adaptive softmax's valid ppl at the end of
          their runs (same network), and that time ÷ their own. --short-budget S > 0 also trains S-second runs.
  vocab   bench/bench_large_vocab.py at V = --vocab: one output-layer step per loss, time and peak memory.
  epochs  equal epochs on the synthetic language (--synthetic-vocab words + <unk>, exact floor exp(H)): valid
          ppl per epoch with its ratio to the full softmax of the same network, test ppl.

Recipes: LMConfig's defaults (tied 2×200 LSTM, locked dropout 0.4/0.3/0.4, Adam 4e-3 held for half the run then
cosine to 0, batch 20 × bptt 35) with the loss (and --model) swapped; "adaptive" is untied (its head and tail are
not the input embedding); "seed" is the seed's design (NCE k = 100, noise per batch, untied, dropout 0.2, dense
gradients, SGD 1 + momentum 0.9, clip 0.25, halved on plateau) through ``train_lm``'s build/optimizer seams.

Usage (runs on --threads threads, --jobs at a time: wall ≈ runs × budget / jobs, plus evaluations):
    python bench/bench_lm.py --sections budget time               # 11 runs of 390 s: about 40 min at --jobs 2
    python bench/bench_lm.py --sections budget --models lstm --losses nce100-calib nce100-selfnorm
    python bench/bench_lm.py --sections epochs --epochs 10        # synthetic language, V = 2,001: 6 runs
    python bench/bench_lm.py --sections budget time epochs --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ebm.data.layout import describe_layout, heldout_layout
from ebm.harness import checkpoint_path
from ebm.lm.build import build_model
from ebm.lm.config import LMConfig
from ebm.lm.models import RNNLM
from ebm.lm.optim import SplitOptimizer, clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput
from ebm.lm.task import evaluator, load_lm_corpus
from ebm.lm.train import load_lm, train_lm
from ebm.utils import load_checkpoint

BENCH = Path(__file__).resolve().parent
WIKITEXT = BENCH.parents[1] / "shared" / "data" / "wikitext-2"
SEED_DESIGN = dict(loss="nce", noise_ratio=100, noise_sharing="batch", tie_weights=False, dropout=0.2,
                   dropout_embedding=None, dropout_between=None, dropout_output=None, locked_dropout=False,
                   optimizer="sgd", lr=1.0, clip=0.25, schedule="plateau", lr_decay=0.5)
# name → LMConfig settings over the package defaults ("seed" also gets dense gradients and momentum SGD)
RECIPES: dict[str, dict[str, Any]] = {
    "full": dict(loss="full"),
    "adaptive": dict(loss="adaptive", tie_weights=False),
    "nce100": dict(loss="nce", noise_ratio=100),
    "nce10": dict(loss="nce", noise_ratio=10),
    "nce500": dict(loss="nce", noise_ratio=500),
    "sampled100": dict(loss="sampled", noise_ratio=100),
    "nce100-calib": dict(loss="nce", noise_ratio=100, calibrate_norm=True),
    "nce100-selfnorm": dict(loss="nce", noise_ratio=100, selfnorm_weight=1.0, calibrate_norm=True),
    "seed": SEED_DESIGN,
}
MODELS: dict[str, dict[str, Any]] = {"lstm": {}, "transformer": dict(model="transformer")}
RIVALS = ["full", "adaptive", "nce100", "sampled100"]
# section → network → recipes trained by default (time trains only with --short-budget)
DEFAULT_RUNS: dict[str, dict[str, list[str]]] = {
    "budget": {"lstm": [*RIVALS, "seed", "nce100-calib", "nce100-selfnorm"], "transformer": RIVALS},
    "time": {"lstm": ["nce100"], "transformer": ["nce100"]},
    "epochs": {"lstm": ["full", "nce100", "nce10", "nce500"], "transformer": ["full", "nce100"]},
}
DEFAULT_DATASETS = {"budget": ["wikitext-2"], "time": ["wikitext-2"], "epochs": ["synthetic"]}
SECTIONS = ("step", "budget", "time", "vocab", "epochs")


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


def bench_step(vocab_sizes: list[int], repeats: int) -> str:
    """No-output and NCE steps are timed alternately (so load changes hit both alike); medians."""
    lines = ["| V | step | ms | tokens/s | × no-output step |", "|---|---|---|---|---|"]
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
            lines.append(f"| {vocab_size:,} | {name} | {1e3 * seconds:.1f} | {700 / seconds:,.0f} | "
                         f"{seconds / base:.2f} |")
    return "\n".join(lines)


def bench_vocab(vocab_sizes: list[int], threads: int) -> str:
    """The table of bench/bench_large_vocab.py at ``vocab_sizes`` (its own subprocesses, ``threads`` each)."""
    script = BENCH / "bench_large_vocab.py"
    if not script.is_file():
        return f"({script.name} is not in this checkout)"
    command = [sys.executable, str(script), "--vocab", *map(str, vocab_sizes), "--threads", str(threads)]
    text = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()
    return f"`python bench/{script.name} --vocab {' '.join(map(str, vocab_sizes))} --threads {threads}`\n\n{text}"


# ------------------------------------------------------------------------------------------------- training
def dense_model(config: LMConfig, counts: torch.Tensor, sparse: bool = True) -> torch.nn.Module:
    """The seed design's model: ``build_model`` with dense gradients everywhere."""
    return build_model(config, counts, sparse=False)


def momentum_sgd(model: torch.nn.Module, config: LMConfig) -> SplitOptimizer:
    """The seed design's optimiser: SGD at ``config.lr`` with momentum 0.9 on every parameter."""
    return SplitOptimizer([torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                           momentum=0.9)])


def run_key(run: dict) -> str:
    """What identifies a run in the store: dataset, network, recipe, seed and budget or epochs."""
    length = f"b{run['budget']:g}" if run.get("budget") else f"e{run['epochs']}"
    return f"{run['dataset']}/{run['model']}/{run['recipe']}/s{run['seed']}/{length}"


def plan_runs(defaults: dict[str, list[str]], models: list[str] | None, losses: list[str] | None
              ) -> list[tuple[str, str]]:
    """(network, recipe) pairs: ``models`` × ``losses`` where given, else a section's ``defaults`` (per network)."""
    return [(model, recipe) for model in (models or defaults) for recipe in (losses or defaults.get(model, []))]


def dataset_label(name: str, synthetic_vocab: int, synthetic_tokens: int = 1_000_000) -> str:
    """The store's name of a dataset: the held-out WikiText-2 layout, or the synthetic language with its size."""
    if name == "wikitext-2":
        return "wikitext-2-heldout"
    return f"synthetic-{synthetic_vocab}" + (f"-{synthetic_tokens}" if synthetic_tokens != 1_000_000 else "")


def describe_dataset(label: str, folder: str) -> str:
    """The line printed above a dataset's tables: where its train / valid / test come from."""
    if folder == "synthetic":
        words, *tokens = label.split("-")[1:]
        return (f"{label}: the synthetic language of {words} words + <unk>; train / valid / test sampled from it "
                f"({int(tokens[0]) if tokens else 1_000_000:,} tokens, a tenth each), exact floor exp(H)")
    return describe_layout(folder)


def _curve(out: Path) -> list[list[float]]:
    """[[training seconds, validation ppl, epoch]] after every completed epoch, from the run's metrics.jsonl."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [[m["train_seconds"], m["valid_ppl"], m["epoch"]] for m in lines if "valid_ppl" in m and not m.get("final")]


def train_one(spec: dict) -> dict:
    """One run (in a fresh process): the recipe's LMConfig trained by ``train_lm``; returns its store entry,
    with the validation ppl of the saved model (calibrated where asked), scored after the final test score."""
    settings = {**MODELS[spec["model"]], **RECIPES[spec["recipe"]]}
    seams = dict(build=dense_model, optimizer=momentum_sgd) if spec["recipe"] == "seed" else {}
    out = Path(spec["results"]) / "lm_runs" / run_key(spec).replace("/", "_")
    config = LMConfig(dataset=spec["folder"], out=str(out), progress=False, threads=spec["threads"], seed=spec["seed"],
                      epochs=spec["epochs"], time_budget=spec["budget"], synthetic_vocab=spec["synthetic_vocab"],
                      synthetic_tokens=spec["synthetic_tokens"], **settings)
    load_start, started = os.getloadavg(), time.perf_counter()
    result = train_lm(config, **seams)
    entry = {**spec, **result, "loss": config.loss, "wall_s": time.perf_counter() - started,
             "load_start": load_start, "load_end": os.getloadavg(), "curve": _curve(Path(result["out"])),
             "date": datetime.now().isoformat(timespec="seconds")}
    corpus, model = load_lm_corpus(config), load_lm(out).model  # the saved model: the calibrated one where asked
    entry["final_valid_ppl"] = evaluator(config, corpus, torch.device("cpu"))(model, corpus.valid)["ppl"]
    # all tokens over all training seconds (the result's figure divides by the clock at the last completed epoch)
    entry["tokens_per_s"] = load_checkpoint(checkpoint_path(out))["tokens"] / result["train_seconds"]
    return entry


def run_all(specs: list[dict], jobs: int, store: Path) -> None:
    """Train ``specs`` in fresh processes, ``jobs`` at a time (in order, so neighbours run side by side); each
    finished run goes into the store at once."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1) as pool:
        for future in [pool.submit(train_one, spec) for spec in specs]:
            entry = future.result()
            save_entries(store, [entry])
            print(f"  {run_key(entry)}: test ppl {entry['test_ppl']:.2f}, {entry['epoch']} epochs, "
                  f"{entry['train_seconds']:.0f} s, {entry['tokens_per_s']:,.0f} tok/s, load {entry['load_end']}",
                  flush=True)


def load_entries(store: Path) -> dict[str, dict]:
    return json.loads(store.read_text()) if store.exists() else {}


def save_entries(store: Path, entries: list[dict]) -> None:
    runs = load_entries(store)
    runs.update({run_key(e): e for e in entries})
    partial = store.with_suffix(f".{os.getpid()}")
    partial.write_text(json.dumps(runs, indent=1, default=str))
    os.replace(partial, store)


# --------------------------------------------------------------------------------------------------- tables
def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _runs(store: dict, dataset: str, **match: Any) -> list[dict]:
    """The stored runs on ``dataset`` whose fields equal ``match``, by network, recipe and seed."""
    return sorted((e for e in store.values() if e["dataset"] == dataset and all(e.get(k) == v
                                                                                 for k, v in match.items())),
                  key=lambda e: (e["model"], e["recipe"], e["seed"]))


def _partner(store: dict, run: dict, recipe: str) -> dict | None:
    """The run of ``recipe`` with the same dataset, network, seed and length as ``run``."""
    return store.get(run_key({**run, "recipe": recipe}))


def _selfnorm_row(r: dict, nce: dict | None) -> str:
    """A row of the self-normalisation table: exp(−mean(s − norm)) named for what it is, and the log Z gap."""
    value = math.exp(math.log(r["test_ppl"]) - r["test_log_z_gap_mean"])  # = test_ppl_selfnorm
    what = "self-normalised ppl" if r["loss"] == "nce" else "not a perplexity (scores do not normalise)"
    cost = f"{100 * (r['test_ppl'] / nce['test_ppl'] - 1):+.1f} %" if nce and nce is not r else "–"
    return (f"| {r['model']} | {r['recipe']} | {r['seed']} | {r['test_ppl']:.2f} | {value:.2f}: {what} | "
            f"{r['test_log_z_gap_mean']:+.3f} | {r['test_log_z_gap_std']:.3f} | {r['test_log_z_gap_abs']:.3f} | "
            f"{cost} |")


def budget_tables(store: dict, dataset: str, budget: float) -> str:
    """Equal-time table and the self-normalisation table for the runs of ``budget`` seconds on ``dataset``."""
    rows = _runs(store, dataset, budget=budget)
    if not rows:
        return f"(no {budget:g}-s runs on {dataset} in the store)"
    lines = ["| network | loss | seed | epochs | train s | tokens/s | test ppl (exact) | × full | valid ppl at end | "
             "load start → end | date |", "|---" * 11 + "|"]
    gaps = ["| network | loss | seed | test ppl (exact) | exp(−mean(s − norm)) on test | log Z − norm: mean | sd | "
            "mean abs | ppl vs nce100 |", "|---" * 9 + "|"]
    for r in rows:
        full = _partner(store, r, "full")
        ratio = _fmt(r["test_ppl"] / full["test_ppl"], ".3f") if full else "–"
        load = f"{r['load_start'][0]:.1f} → {r['load_end'][0]:.1f}"
        lines.append(f"| {r['model']} | {r['recipe']} | {r['seed']} | {r['epoch']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['test_ppl']:.2f} | {ratio} | {_fmt(r.get('final_valid_ppl'))} | "
                     f"{load} | {r['date'][:16]} |")
        if r.get("test_log_z_gap_mean") is not None:
            gaps.append(_selfnorm_row(r, _partner(store, r, "nce100")))
    return ("\n".join(lines) + "\n\nSelf-normalisation on all of test (s − norm is a sampled loss's log-score; "
            "goals with the penalty: mean |log Z − norm| ≤ 0.1, sd ≤ 0.15, perplexity cost ≤ 1%):\n\n"
            + "\n".join(gaps))


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


def time_to_target(run: dict, reference: dict) -> tuple[str, str]:
    """(seconds for ``run`` to reach ``reference``'s final validation ppl, those seconds ÷ the reference's own)."""
    target = reference["final_valid_ppl"]
    seconds, how = seconds_to_target(_points(run), target)
    if seconds is None:
        return f"not reached (best {min(p for _, p in _points(run)):.1f})", "–"
    own, _ = seconds_to_target(_points(reference), target)
    return f"{how} {seconds:.0f}".strip(), f"{how} {seconds / own:.3f}".strip() if own else "–"


def time_table(store: dict, dataset: str, budget: float) -> str:
    """Per network: each run's seconds to the full and the adaptive softmax's validation ppl after ``budget`` s."""
    parts = []
    for model in sorted({e["model"] for e in _runs(store, dataset) if e.get("budget")}):
        refs = {name: runs[0] for name in ("full", "adaptive")
                if (runs := _runs(store, dataset, model=model, recipe=name, budget=budget))}
        if not refs:
            parts.append(f"{model}: no full or adaptive run of {budget:g} s in the store (run --sections budget)")
            continue
        heads = [f"{name} (seed {r['seed']}) after {budget:g} s: valid ppl {r['final_valid_ppl']:.2f}, test ppl "
                 f"{r['test_ppl']:.2f}" for name, r in refs.items()]
        lines = [f"{model}, targets: " + "; ".join(heads) + ". Goals: nce100 ≤ 0.5 × adaptive's time, ≤ 0.1 × "
                 "full's.", "", "| loss | seed | budget s | evaluation points (s: valid ppl) | "
                 + " | ".join(f"s to {name}'s | ÷ {name}'s s" for name in refs) + " | test ppl at end |",
                 "|---" * (5 + 2 * len(refs)) + "|"]
        for r in sorted(_runs(store, dataset, model=model), key=lambda e: (e["recipe"], -(e["budget"] or 0))):
            if not r.get("budget"):
                continue
            points = _points(r)
            shown = ", ".join(f"{t:.0f}: {p:.1f}" for t, p in points[:4])
            shown += f", … {points[-1][0]:.0f}: {points[-1][1]:.1f}" if len(points) > 4 else ""
            cells = " | ".join(" | ".join(time_to_target(r, ref)) for ref in refs.values())
            lines.append(f"| {r['recipe']} | {r['seed']} | {r['budget']:g} | {shown} | {cells} | {r['test_ppl']:.2f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or f"(no timed runs on {dataset} in the store)"


def epochs_table(store: dict, dataset: str, epochs: int, flat: float) -> str:
    """Test ppl after ``epochs`` epochs and the validation ppl per epoch, each loss's ratio to the full softmax."""
    rows = _runs(store, dataset, budget=None, epochs=epochs)
    if not rows:
        return f"(no {epochs}-epoch runs on {dataset} in the store)"
    lines = ["| network | loss | seed | epochs | train s | tokens/s | test ppl | × full | floor exp(H) | last epoch Δ "
             "valid | converged |", "|---" * 11 + "|"]
    for r in rows:
        full = _partner(store, r, "full")
        ratio = _fmt(r["test_ppl"] / full["test_ppl"], ".3f") if full else "–"
        curve = [p for _, p, _ in r["curve"]]
        change = (curve[-1] - curve[-2]) / curve[-2] if len(curve) > 1 else None
        converged = "–" if change is None else ("yes" if abs(change) < flat else "no")
        lines.append(f"| {r['model']} | {r['recipe']} | {r['seed']} | {r['epoch']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r['test_ppl']:.2f} | {ratio} | {_fmt(r.get('floor_ppl'))} | "
                     f"{_fmt(None if change is None else 100 * change, '+.2f')} % | {converged} |")
    curves = {(r["model"], r["recipe"], r["seed"]): [p for _, p, _ in r["curve"]] for r in rows}
    per_epoch = ["Validation perplexity per epoch (× the full softmax of the same network and seed):", "",
                 "| epoch | " + " | ".join(f"{m} {n} (s{s})" for m, n, s in curves) + " |",
                 "|---|" + "---|" * len(curves)]
    for epoch in range(max(map(len, curves.values()))):
        cells = []
        for (model, name, seed), curve in curves.items():
            full = curves.get((model, "full", seed), [])
            cell = f"{curve[epoch]:.2f}" if epoch < len(curve) else "–"
            if epoch < len(curve) and name != "full" and epoch < len(full):
                cell += f" ({curve[epoch] / full[epoch]:.3f})"
            cells.append(cell)
        per_epoch.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(per_epoch)


# ----------------------------------------------------------------------------------------------------- main
TABLES = {"budget": lambda runs, label, args: budget_tables(runs, label, args.budget),
          "time": lambda runs, label, args: time_table(runs, label, args.budget),
          "epochs": lambda runs, label, args: epochs_table(runs, label, args.epochs, args.flat)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--datasets", nargs="+", choices=["wikitext-2", "synthetic"],
                        help=f"default per section: {DEFAULT_DATASETS}")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="networks to train (default per section)")
    parser.add_argument("--losses", nargs="+", choices=list(RECIPES),
                        help=f"recipes to train; default per section and network: {DEFAULT_RUNS}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every trained recipe")
    parser.add_argument("--vocab", nargs="+", type=int, default=[100_000, 1_000_000], help="V of step and vocab")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per case of the step section (median)")
    parser.add_argument("--synthetic-vocab", type=int, default=2000, help="words of the synthetic language")
    parser.add_argument("--synthetic-tokens", type=int, default=1_000_000, help="its training tokens")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the equal-epochs section")
    parser.add_argument("--flat", type=float, default=0.005, help="'converged': last epoch's relative change below")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds of training per run (budget section)")
    parser.add_argument("--short-budget", type=float, default=0.0, help="seconds of the time section's own runs "
                        "(0: none; the table then reads the budget runs alone)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument("--results", type=Path, default=BENCH / "results", help="folder of the store and tables")
    parser.add_argument("--report-only", action="store_true", help="print the tables from the stored runs")
    return parser.parse_args(argv)


def training_section(section: str, args: argparse.Namespace) -> tuple[str, str]:
    """Train a section's runs (unless --report-only), then (title, tables) from the store."""
    store = args.results / "lm_runs.json"
    length = {"budget": dict(budget=args.budget, epochs=1000), "time": dict(budget=args.short_budget, epochs=1000),
              "epochs": dict(budget=None, epochs=args.epochs)}[section]
    layout = args.results / "wikitext-2-heldout"
    folders = {d: "synthetic" if d == "synthetic" else str(heldout_layout(WIKITEXT, layout))
               for d in args.datasets or DEFAULT_DATASETS[section]}
    pairs = plan_runs(DEFAULT_RUNS[section], args.models, args.losses)
    synthetic = dict(synthetic_vocab=args.synthetic_vocab, synthetic_tokens=args.synthetic_tokens)
    specs = [dict(dataset=dataset_label(d, **synthetic), folder=f, model=m, recipe=r, seed=s,
                  threads=args.threads, section=section, **synthetic,
                  results=str(args.results), **length)
             for d, f in folders.items() for s in args.seeds for m, r in pairs]
    if not args.report_only and specs and (section != "time" or args.short_budget > 0):
        run_all(specs, args.jobs, store)
    runs, tables = load_entries(store), []
    for name, folder in folders.items():
        label = dataset_label(name, **synthetic)
        table = TABLES[section](runs, label, args)
        tables.append(f"{describe_dataset(label, folder)}\n\n{table}")
    title = {"budget": f"Equal training time ({args.budget:g} s)",
             "time": f"Time to the full and the adaptive softmax's {args.budget:g}-s validation perplexity",
             "epochs": f"Equal epochs ({args.epochs})"}[section]
    return title, "\n\n".join(tables)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.results.mkdir(parents=True, exist_ok=True)
    print(f"{datetime.now().isoformat(timespec='seconds')}  load average {os.getloadavg()}, threads {args.threads}, "
          f"jobs {args.jobs}")
    for section in args.sections:
        if section in ("step", "vocab"):
            if args.report_only:
                continue
            title = {"step": "Whole LM step, 2-layer LSTM 200/200, 20×35 tokens",
                     "vocab": "Large vocabularies: one output-layer step per loss"}[section]
            table = bench_step(args.vocab, args.repeats) if section == "step" else bench_vocab(args.vocab, args.threads)
        else:
            title, table = training_section(section, args)
        text = f"## {title}\n\n{table}\n"
        print(f"\n{text}\n{datetime.now().isoformat(timespec='seconds')}  load average {os.getloadavg()}", flush=True)
        (args.results / f"lm_{section}.md").write_text(text)


if __name__ == "__main__":
    main()
