"""Data-parallel scaling, mixed precision and compilation of the language model on this machine.

    python bench/bench_scaling.py                               # all sections, WikiText-2 when present
    python bench/bench_scaling.py --sections scaling --dataset synthetic

Sections (each run is a real ``train.py`` command in its own process, one CPU thread per process):

  scaling   torchrun with 2 gloo ranks against 1 process, the same global batch and the same epochs:
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
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
MODEL = ["--num-layers", "2", "--emb-size", "200", "--hidden-size", "200", "--batch-size", "20", "--bptt", "35",
         "--loss", "nce", "--noise-ratio", "100", "--threads", "1", "--device", "cpu",
         "--no-progress"]


def _dataset(name: str) -> list[str]:
    if name == "synthetic":
        return ["--dataset", "synthetic", "--synthetic-vocab", "10000", "--synthetic-tokens", "300000"]
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_lm import wikitext_folder  # the shared benchmark folder (links, never copies)

    return ["--dataset", str(wikitext_folder(WIKITEXT))]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=("scaling", "amp", "compile"),
                        default=["scaling", "amp", "compile"])
    parser.add_argument("--dataset", choices=("wikitext-2", "synthetic"),
                        default="wikitext-2" if (WIKITEXT / "valid.txt").exists() else "synthetic")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=20, help="the global batch (sequences per step)")
    args = parser.parse_args(argv)
    base = [*_dataset(args.dataset), *MODEL, "--batch-size", str(args.batch_size)]  # the last flag wins
    rows = []
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
    lines = [f"dataset {args.dataset}, global batch {args.batch_size}, load average {os.getloadavg()[0]:.1f}", "",
             "| run | tokens/s | first epoch s | test ppl | speed-up | ppl ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['tokens_per_s']:,.0f} | {r['first_epoch_s']:.0f} | {r['test_ppl']:.2f} | "
                     f"{r.get('speed-up', float('nan')):.2f} | {r.get('ppl ratio', float('nan')):.4f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    with (RESULTS / "scaling.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
