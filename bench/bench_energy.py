"""Benchmark of the 2D energy model at default settings: quality and time per run.

    python bench/bench_energy.py                                   # 5 reference datasets × 3 seeds
    python bench/bench_energy.py --datasets rings moons --seeds 0 --epochs 5

Each run is ``train_energy(EnergyConfig(dataset, seed))`` with every other setting at its default, frames
included (they are part of a run's cost). The table gives medians over seeds of the final metrics
(100k test points; KL by the paired estimator against the exact data density; the normaliser error counts
the model's mass on the whole plane, and "mass outside" is the share of it beyond the data's box) and of the
timings:
training and plotting seconds per epoch, and the whole run's wall time. Results go to
bench/results/energy.jsonl (one line per run) and bench/results/energy.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ebm.data.toy import REFERENCE_DATASETS, TOY_DATASETS
from ebm.energy import EnergyConfig, train_energy
from ebm.utils import read_metrics

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    ("normaliser error", "normaliser_error", "{:.4f}"),
    ("mass outside", "mass_outside", "{:.4f}"),
    ("test NLL", "test_nll", "{:.4f}"),
    ("entropy", "entropy", "{:.4f}"),
    ("KL gap", "kl", "{:.4f}"),
    ("KL max", "kl_max", "{:.4f}"),
    ("train s/epoch", "train_per_epoch", "{:.1f}"),
    ("plot s/epoch", "plot_per_epoch", "{:.2f}"),
    ("s/run", "seconds", "{:.0f}"),
]


def run_one(dataset: str, seed: int, epochs: int | None, threads: int | None, workdir: Path) -> dict:
    """One run at default settings; its final metrics plus per-epoch timing medians and total wall time."""
    config = EnergyConfig(
        dataset=dataset,
        seed=seed,
        out=str(workdir / f"{dataset}-{seed}"),
        progress=False,
        threads=threads,
        **({"epochs": epochs} if epochs else {}),
    )
    started = time.perf_counter()
    final = train_energy(config)
    seconds = time.perf_counter() - started
    epochs_run = [r for r in read_metrics(config.run_dir / "metrics.jsonl") if not r.get("final")]
    return {
        "dataset": dataset,
        "seed": seed,
        "epochs": config.epochs,
        **{k: final[k] for k in ("normaliser_error", "mass_outside", "test_nll", "entropy", "kl", "kl_stderr")},
        "train_per_epoch": statistics.median(r["train_seconds"] for r in epochs_run),
        "plot_per_epoch": statistics.median(r["plot_seconds"] for r in epochs_run),
        "seconds": seconds,
    }


def table(rows: list[dict]) -> str:
    """Markdown table of medians over seeds per dataset (KL max: the worst seed)."""
    lines = [
        "| dataset | seeds | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        runs = [r for r in rows if r["dataset"] == dataset]
        values = {key: statistics.median(r[key] for r in runs) for _, key, _ in COLUMNS if key != "kl_max"}
        values["kl_max"] = max(r["kl"] for r in runs)
        cells = [fmt.format(values[key]) for _, key, fmt in COLUMNS]
        lines.append(f"| {dataset} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=TOY_DATASETS, default=list(REFERENCE_DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="override the default number of epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                rows.append(run_one(dataset, seed, args.epochs, args.threads, Path(tmp)))
                with (RESULTS / "energy.jsonl").open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(
                    f"{dataset} seed {seed}: KL {rows[-1]['kl']:.4f}, normaliser error "
                    f"{rows[-1]['normaliser_error']:.4f}, {rows[-1]['seconds']:.0f} s",
                    file=sys.stderr,
                )
    text = table(rows)
    header = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    (RESULTS / "energy.md").write_text(header + "\n\n" + text + "\n")
    print(header + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
