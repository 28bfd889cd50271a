"""Benchmark of the 2D energy model at default settings: quality and time per run.

    python bench/bench_energy.py                                   # 5 reference datasets × 3 seeds
    python bench/bench_energy.py --datasets rings moons --seeds 0 --epochs 5
    python bench/bench_energy.py --set noise_ratio=8 --set width=96      # a proposed recipe instead of the defaults

Each run is ``train_energy(EnergyConfig(dataset, seed))`` with every other setting at its default (or as
``--set FIELD=VALUE`` says; the value is parsed as JSON when it can be, else taken as a string), frames
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
from dataclasses import fields
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from ebm.data.toy import REFERENCE_DATASETS, TOY_DATASETS
from ebm.energy import EnergyConfig, train_energy
from ebm.utils import read_metrics

RESULTS = Path(__file__).parent / "results"
COLUMNS = [
    ("normaliser error", "normaliser_error", "{:.4f}"),
    ("mass outside", "mass_outside", "{:.1e}"),
    ("test NLL", "test_nll", "{:.4f}"),
    ("entropy", "entropy", "{:.4f}"),
    ("KL gap", "kl", "{:.4f}"),
    ("KL max", "kl_max", "{:.4f}"),
    ("train s/epoch", "train_per_epoch", "{:.1f}"),
    ("plot s/epoch", "plot_per_epoch", "{:.2f}"),
    ("s/run", "seconds", "{:.0f}"),
]


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["noise_ratio=8", "noise=flow"]`` → {"noise_ratio": 8, "noise": "flow"}: EnergyConfig fields (ValueError
    naming the valid fields for an unknown one)."""
    names = [f.name for f in fields(EnergyConfig)]
    settings = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise ValueError(f"--set takes FIELD=VALUE with FIELD one of {', '.join(names)}; got {pair!r}")
        try:
            settings[name] = json.loads(text)
        except json.JSONDecodeError:
            settings[name] = text
    return settings


def run_one(dataset: str, seed: int, epochs: int | None, threads: int | None, workdir: Path,
            settings: dict[str, Any] | None = None) -> dict:
    """One run at default settings (changed by ``settings``); its final metrics plus per-epoch timing medians
    and total wall time."""
    config = EnergyConfig(
        **{
            **(settings or {}),
            "dataset": dataset,
            "seed": seed,
            "out": str(workdir / f"{dataset}-{seed}"),
            "progress": False,
            "threads": threads,
            **({"epochs": epochs} if epochs else {}),
        }
    )
    started = time.perf_counter()
    final = train_energy(config)
    seconds = time.perf_counter() - started
    epochs_run = [r for r in read_metrics(config.run_dir / "metrics.jsonl") if not r.get("final")]
    return {
        "dataset": dataset,
        "seed": seed,
        "epochs": config.epochs,
        "settings": settings or {},
        **{k: final[k] for k in ("normaliser_error", "mass_outside", "test_nll", "entropy", "kl", "kl_stderr")},
        # train_seconds is the run's training clock so far: an epoch's time is the step between two lines
        "train_per_epoch": statistics.median(
            b - a for a, b in pairwise([0.0] + [r["train_seconds"] for r in epochs_run])
        ),
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
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                        help="an EnergyConfig field to change from its default (repeatable), e.g. noise_ratio=8")
    args = parser.parse_args(argv)
    try:
        settings = parse_settings(args.settings)
    except ValueError as error:
        parser.error(str(error))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                rows.append(run_one(dataset, seed, args.epochs, args.threads, Path(tmp), settings))
                with (RESULTS / "energy.jsonl").open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(
                    f"{dataset} seed {seed}: KL {rows[-1]['kl']:.4f}, normaliser error "
                    f"{rows[-1]['normaliser_error']:.4f}, {rows[-1]['seconds']:.0f} s",
                    file=sys.stderr,
                )
    text = table(rows)
    changed = ", ".join(f"{k}={v}" for k, v in settings.items())
    header = (
        f"{'settings changed: ' + changed if changed else 'default settings'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )
    (RESULTS / "energy.md").write_text(header + "\n\n" + text + "\n")
    print(header + "\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
