"""Benchmark of the whole NCE language model (ebm.lm.train): step cost, quality at equal epochs and at equal time.

Prints markdown tables and writes them (plus JSON) to bench/results/lm_<section>[_<datasets>_<losses>].md / .json:

  1. step     median time of one whole training step (embedding → 2-layer LSTM 200/200 → output → backward →
              clip → update, 20×35 tokens) with NCE k=100, against the same network with *no output layer*
              (its loss a cheap function of the features), at V = 100k and 1M; full softmax at V = 100k for
              contrast. Goal: NCE ≤ 1.25× the no-output step.
  2. epochs   CE (full softmax) vs NCE k=100, k=500 vs sampled softmax k=100, same model, same epochs, on
              WikiText-2 (train on its valid.txt, test on test.txt) and on the synthetic language: exact test
              perplexity, self-normalised perplexity, mean/spread of log Z − norm, tokens/s, ratio to CE.
  3. budget   the same losses trained for the same seconds each (--budget, 390 in the issue), then exact test
              perplexity (the seed measured full 213.8, NCE 198.8 after 390 s on this set-up).

WikiText-2 set-up (the training split is not on this machine): train.txt = WikiText-2 valid.txt, test.txt =
WikiText-2 test.txt, and valid.txt = the first 10% of the lines of test.txt (used only for the learning-rate
decay; a full-softmax pass over all of test.txt each epoch would cost more than the epoch). Files are linked
or written under bench/results/, never copied into the repository. Vocabulary from the training file
(every line, blank ones included, ends with <eos>, as PyTorch's word_language_model reads it).

Usage:
    python bench/bench_lm.py                                   # everything (hours on a shared 2-core CPU)
    python bench/bench_lm.py --sections step
    python bench/bench_lm.py --sections budget --datasets wikitext-2 --losses full nce100 --budget 120
    python bench/bench_lm.py --sections epochs --datasets synthetic --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ebm.lm.models import RNNLM
from ebm.lm.optim import clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput
from ebm.lm.train import LMConfig, train_lm

RESULTS = Path(__file__).resolve().parent / "results"
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
LOSSES = {"full": ("full", 1), "nce100": ("nce", 100), "nce500": ("nce", 500), "sampled100": ("sampled", 100)}
# The WikiText-2 model: 2-layer LSTM 200/200, 20×35 batches (the seed's set-up), dropout 0.2, Adam.
WIKITEXT_MODEL = dict(emb_size=200, hidden_size=200, num_layers=2, dropout=0.2, batch_size=20, bptt=35, lr=2e-3)
SYNTHETIC_MODEL = dict()  # LMConfig defaults are tuned for the synthetic language


class _NoOutput(torch.nn.Module):
    """Stands in for the output layer: loss = mean of the squared features (no vocabulary work at all)."""

    loss = "none"

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return features.pow(2).mean()

    def sparse_parameters(self) -> list[torch.nn.Parameter]:
        return []


def _make_step(vocab_size: int, loss: str, k: int):
    """A closure running one full training step of the 2-layer LSTM 200/200 LM on 20×35 tokens; returns seconds."""
    counts = (1.0 / torch.arange(1, vocab_size + 1)).mul(1e7).round()  # Zipfian counts
    output = _NoOutput() if loss == "none" else SampledOutput(200, vocab_size, counts, loss=loss, noise_ratio=k)
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
        cases = {"no output layer": ("none", 1), "NCE k=100": ("nce", 100)}
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


def _run(dataset: str, loss_key: str, out: Path, threads: int, **options) -> dict:
    loss, k = LOSSES[loss_key]
    model = WIKITEXT_MODEL if dataset != "synthetic" else SYNTHETIC_MODEL
    config = LMConfig(dataset=dataset, loss=loss, noise_ratio=k, out=str(out / loss_key), progress=False,
                      **{**model, **options})
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train_lm(config)
    result["wall_s"] = time.perf_counter() - start
    return result


def bench_quality(section: str, datasets: list[str], losses: list[str], threads: int, **options) -> tuple[str, list]:
    rows = []
    for name in datasets:
        dataset = str(wikitext_folder(WIKITEXT)) if name == "wikitext-2" else name
        for loss_key in losses:
            result = _run(dataset, loss_key, RESULTS / f"lm_{section}_{name}", threads, **options)
            rows.append({"dataset": name, "loss": loss_key, **result})
            print(f"  {name} {loss_key}: test ppl {result.get('test_ppl', float('nan')):.2f} "
                  f"({result['epochs']} epochs, {result['train_seconds']:.0f} s)", flush=True)
    header = ("| dataset | loss | epochs | train s | tokens/s | test ppl | × CE | self-norm ppl | log Z − norm "
              "| floor exp(H) |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ce = next((c.get("test_ppl") for c in rows if c["dataset"] == r["dataset"] and c["loss"] == "full"), None)
        ratio = f"{r['test_ppl'] / ce:.3f}" if ce and r.get("test_ppl") else "–"
        selfnorm = f"{r['test_ppl_selfnorm']:.2f}" if "test_ppl_selfnorm" in r else "–"
        gap = (f"{r['test_log_z_gap_mean']:+.3f} ± {r['test_log_z_gap_std']:.3f}" if "test_log_z_gap_mean" in r
               else "–")
        floor = f"{r['floor_ppl']:.2f}" if r.get("floor_ppl") else "–"
        lines.append(f"| {r['dataset']} | {r['loss']} | {r['epochs']} | {r['train_seconds']:.0f} | "
                     f"{r['tokens_per_s']:,.0f} | {r.get('test_ppl', float('nan')):.2f} | {ratio} | {selfnorm} | "
                     f"{gap} | {floor} |")
    return "\n".join(lines), rows


def per_epoch_table(rows: list[dict]) -> str:
    """Validation perplexity after every epoch, the losses side by side with each one's ratio to full softmax
    (read from each run's metrics.jsonl); one table per dataset."""
    tables = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        runs = {r["loss"]: [json.loads(line) for line in (Path(r["out"]) / "metrics.jsonl").read_text().splitlines()]
                for r in rows if r["dataset"] == name}
        curves = {loss: [m["valid_ppl"] for m in lines if "valid_ppl" in m and not m.get("final")]
                  for loss, lines in runs.items()}
        losses = list(curves)
        head = "| epoch | " + " | ".join(losses) + " |"
        lines = [f"{name}: validation perplexity per epoch (× full softmax)", "", head,
                 "|---|" + "---|" * len(losses)]
        for epoch in range(max(len(c) for c in curves.values())):
            cells = []
            for loss in losses:
                curve, full = curves[loss], curves.get("full", [])
                if epoch >= len(curve):
                    cells.append("–")
                elif loss != "full" and epoch < len(full):
                    cells.append(f"{curve[epoch]:.2f} ({curve[epoch] / full[epoch]:.3f})")
                else:
                    cells.append(f"{curve[epoch]:.2f}")
            lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=["step", "epochs", "budget"],
                        choices=["step", "epochs", "budget"])
    parser.add_argument("--datasets", nargs="+", default=["wikitext-2", "synthetic"],
                        choices=["wikitext-2", "synthetic"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--vocab", nargs="+", type=int, default=[100_000, 1_000_000], help="V for the step section")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per case (median)")
    parser.add_argument("--synthetic-vocab", type=int, default=200, help="words of the synthetic language")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the equal-epochs section")
    parser.add_argument("--budget", type=float, default=390.0, help="seconds of training per loss (budget section)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 avoids stalls when shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}, threads {args.threads}")
    for section in args.sections:
        if section == "step":
            table, rows = bench_step(args.vocab, args.repeats)
        elif section == "epochs":
            table, rows = bench_quality(section, args.datasets, args.losses, args.threads, epochs=args.epochs,
                                        synthetic_vocab=args.synthetic_vocab)
            table += "\n\n" + per_epoch_table(rows)
        else:
            table, rows = bench_quality(section, args.datasets, args.losses, args.threads, epochs=1000,
                                        time_budget=args.budget, synthetic_vocab=args.synthetic_vocab)
        title = {"step": "Whole LM step, 2-layer LSTM 200/200, 20×35 tokens",
                 "epochs": f"Equal epochs ({args.epochs})", "budget": f"Equal training time ({args.budget:.0f} s)"}
        print(f"\n## {title[section]}\n\n{table}\n\nload average {os.getloadavg()}", flush=True)
        stem = f"lm_{section}"
        if section != "step":
            stem += f"_{'-'.join(args.datasets)}_{'-'.join(args.losses)}"
        (RESULTS / f"{stem}.md").write_text(f"## {title[section]}\n\n{table}\n")
        (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
