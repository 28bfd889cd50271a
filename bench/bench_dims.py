"""Energy models past the grid: KL(data ‖ model) against the dimension D, per estimator, at equal wall-clock.

    python bench/bench_dims.py                              # D = 2 … 32, three datasets, six contestants, 60 s each
    python bench/bench_dims.py --dims 16 --datasets pinwheel --contestants nce-gmm nce-flow --seconds 30
    python bench/bench_dims.py --quick                      # a tiny rehearsal (D = 2, 4; seconds), results in /tmp
    python bench/bench_dims.py --report                     # the table and the figure, from bench/results/dims.json

The data in D = 2k dimensions are k independent copies of a 2D toy set rotated by a fixed random orthogonal
matrix (``ebm.data.toy.sample(name, n, generator, dims=D)``), with an exact log-density. Every run is
``train_energy(EnergyConfig(dataset, dims=D, estimator, noise, time_budget=seconds, threads=1, progress=False,
...))`` in a temporary run folder, without frames: training stops after ``--seconds`` of training time or at the
end of its ``--steps``-step cosine schedule, whichever comes first (a run cut by the budget has an unfinished
learning-rate decay; ``steps`` and ``partial`` in its row say so). Setting up (fitting the noise, pretraining
FCE's flow) and the evaluations are outside the budget; they show in the row's ``seconds``.

Evaluation, on ``--eval-points`` fresh test points with their exact log p_data: in 2D the grid normalises the
model exactly (KL, and the learned log Z's error −log ∫p_model); for D > 2 the loop reports the sample-based KL
of ``ebm.energy.evaluate_samples.sample_metrics`` with the learned log Z (``kl``) and with the AIS bracket on log Z
(``kl_lower``–``kl_upper``), and the learned log Z's distance outside the bracket (``log_z_error``). The KL that
does not trust the learned normaliser (grid, or the bracket's interval) is the one plotted and ranked; the KL
with the learned log Z is shown beside it for the estimators that learn log Z (nce, fce), and is meaningless for
the others (their log_z gets no gradient).

Contestants (``CONTESTANTS``): NCE against the gmm noise, the spline flow and the pair noise (a product of 2D
mixtures in a fitted basis, ``ebm.energy.pairs``), NCE with the pair noise and an energy additive over its pairs
(``ebm.energy.pair_energy``: it assumes the independent 2D parts these sets have, and is normalised exactly on one
grid per pair, so its KL needs neither the learned log Z nor AIS, and checks the AIS bracket), conditional NCE, flow
contrastive estimation, denoising score matching and contrastive divergence, with the settings the 2D arena
(bench/arena.py) found usable: dsm from a plain MLP, cd at Adam 2e-3 with Langevin steps of 0.003.

Results: bench/results/dims.json (a list of rows, rewritten after each run; a run already there with the same
settings is skipped, so an interrupted bench resumes). The markdown table is printed and written to
bench/results/dims.md, the figure (KL per 2D copy against D, one panel per dataset) to images/dims_kl.png.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ebm.energy import EnergyConfig, train_energy
from ebm.energy.assess import ais_distributions
from ebm.energy.estimators import estimator_class
from ebm.harness import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "images"

DIMS = (2, 4, 8, 16, 32)
DATASETS = ("8gaussians", "checkerboard", "pinwheel")
RECIPE: dict[str, Any] = dict(epochs=4, batch_size=256, lr=5e-3, width=128, depth=3, base="noise", noise="gmm")
CONTESTANTS: dict[str, dict[str, Any]] = {  # name → EnergyConfig fields on top of RECIPE
    "nce-gmm": dict(estimator="nce"),
    "nce-flow": dict(estimator="nce", noise="flow"),
    # the pair noise as fitted (no widening; 16 components per pair for pinwheel's arms) and x without Fourier
    # features: tried on pinwheel and 8gaussians at D = 16, seed 0 (widen 1.5, 8 components and the features: 3×
    # the KL on pinwheel)
    "nce-pairs": dict(estimator="nce", noise="pairs", noise_widen=1.0, noise_components=16, fourier_features=0),
    # the energy additive over the pair noise's pairs (ebm.energy.pair_energy), 64 units × 3 layers per pair reading
    # 32 Fourier features of the pair's whitened coordinates at σ = 1: tried on 8gaussians and pinwheel at D = 2 and
    # 16, seed 0 (without the features pinwheel stays at 0.059 per copy even in 2D; with them 0.0006)
    "nce-pair-energy": dict(estimator="nce", noise="pairs", noise_widen=1.0, noise_components=16, energy="pairs",
                            width=64, fourier_features=32, fourier_scale=1.0),
    "cnce": dict(estimator="cnce"),
    "fce": dict(estimator="fce"),
    "dsm": dict(estimator="dsm", base="none"),
    "cd": dict(estimator="cd", lr=2e-3, cd_step_size=0.003),
}
METRICS = ("kl", "kl_stderr", "kl_lower", "kl_upper", "kl_exact", "log_z", "log_z_lower", "log_z_upper",
           "log_z_error", "log_normaliser", "normaliser_error", "test_nll", "entropy", "partial", "train_seconds")


def make_config(name: str, dataset: str, dims: int, args: argparse.Namespace, out: str) -> EnergyConfig:
    """The run's config: RECIPE, the contestant's settings, a schedule of ``args.steps`` steps over the epochs."""
    settings = {**RECIPE, **CONTESTANTS[name]}
    settings["samples"] = max(1, args.steps // settings["epochs"]) * settings["batch_size"]
    return EnergyConfig(dataset=dataset, dims=dims, seed=args.seed, out=out, frames="none", progress=False,
                        threads=1, time_budget=args.seconds, eval_points=args.eval_points,
                        ais_distributions=args.ais_distributions, **settings)


def run_one(name: str, dataset: str, dims: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train one run and return its row; a run stopped by the divergence guard is a row with KL = +inf."""
    config = make_config(name, dataset, dims, args, str(workdir / f"{name}-{dataset}-{dims}"))
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loop's epoch lines: the row keeps what matters
            final = train_energy(config)
        diverged = None
    except TrainingDiverged as error:
        final, diverged = {"kl": math.inf}, str(error)
    return {"contestant": name, "dataset": dataset, "dims": dims, "seed": args.seed, "budget_seconds": args.seconds,
            "schedule_steps": args.steps, "eval_points": args.eval_points, "ais_request": args.ais_distributions,
            "learns_log_z": estimator_class(config.estimator).learns_log_z,
            **{key: final.get(key, math.nan) for key in METRICS},
            "step": final.get("steps", math.nan),  # the final record's count (an epoch's "step" needs a whole epoch)
            "seconds": time.perf_counter() - started, "load": os.getloadavg()[0], "diverged": diverged}


def _key(row: dict[str, Any]) -> tuple:
    return (row["contestant"], row["dataset"], row["dims"], row["seed"], row["budget_seconds"],
            row["schedule_steps"], row["eval_points"], row.get("ais_request"))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the results atomically (a crash mid-write leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as f:
        json.dump(rows, f, indent=1)
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def run_bench(args: argparse.Namespace, path: Path) -> list[dict[str, Any]]:
    """Every dataset × D × contestant not yet in ``path``, saved as each run ends (dataset-major, small D first)."""
    rows = read_rows(path)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for dims in args.dims:
                for name in args.contestants:
                    probe = {"contestant": name, "dataset": dataset, "dims": dims, "seed": args.seed,
                             "budget_seconds": args.seconds, "schedule_steps": args.steps,
                             "eval_points": args.eval_points, "ais_request": args.ais_distributions}
                    if any(_key(row) == _key(probe) for row in rows):
                        continue
                    row = run_one(name, dataset, dims, args, Path(tmp))
                    rows = [*read_rows(path), row]  # read again: another bench may have added rows meanwhile
                    write_rows(path, rows)
                    print(f"{name:8s} {dataset:12s} D={dims:<3d} KL {_number(honest_kl(row))} "
                          f"({row['step']} steps, {row['seconds']:.0f} s in all)", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------------------- reporting


CROSSED = 0.05  # nats: AIS bounds crossed by more than this say the reverse chains never sampled the model


def exact_beyond(row: dict[str, Any]) -> bool:
    """Beyond 2D, whether the run's normaliser is exact (a pair energy's, on one grid per pair)."""
    return row["dims"] > 2 and not row.get("diverged") and math.isfinite(row.get("kl_exact", math.nan))


def exact_outside_bracket(row: dict[str, Any]) -> float | None:
    """For a run with an exact normaliser beyond 2D, how far the exact log Z lies outside the AIS bracket (0 inside,
    negative below the lower bound); None for the others. The bounds are stochastic, so a small distance is noise."""
    if not exact_beyond(row):
        return None
    exact = row["log_z"] + row["log_normaliser"]  # log Z of exp(log_prob + log_z)
    return exact - row["log_z_upper"] if exact > row["log_z_upper"] else min(0.0, exact - row["log_z_lower"])


def bracket_failed(row: dict[str, Any]) -> bool:
    """Beyond 2D, whether the AIS "bounds" crossed (lower above upper by more than CROSSED): no bracket at all."""
    return row["dims"] > 2 and not row.get("diverged") and row["log_z_lower"] - row["log_z_upper"] > CROSSED


def honest_kl(row: dict[str, Any]) -> float:
    """The KL that does not trust the learned log Z: the grid's in 2D, the pair grids' for a pair energy, else the
    middle of the AIS interval beyond (NaN where the bounds crossed)."""
    if row["dims"] == 2 or row.get("diverged"):
        return row["kl"]
    if exact_beyond(row):
        return row["kl_exact"]
    return math.nan if bracket_failed(row) else (row["kl_lower"] + row["kl_upper"]) / 2


def log_z_error(row: dict[str, Any]) -> float:
    """The learned log Z minus the truth (2D and pair energies: −log ∫p_model on the grids) or its distance outside
    the AIS bracket."""
    return -row["log_normaliser"] if row["dims"] == 2 or exact_beyond(row) else row["log_z_error"]


def _number(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "diverged" if value == math.inf else f"{value:.{digits}g}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, a line per run: KL per 2D copy and in all (grid in 2D, AIS interval beyond), the KL with the
    learned log Z where it is learned, the learned log Z's error, the bracket's width, steps and seconds."""
    lines = ["| dataset | D | estimator | KL per copy | KL in all | KL, AIS interval | KL, learned log Z | "
             "log Z error | bracket width | AIS K | steps | train s | s in all |", "|---" * 13 + "|"]

    def inside(row: dict[str, Any]) -> str:
        outside = exact_outside_bracket(row)
        return "" if outside is None else (" (holds the exact)" if outside == 0 else f" (exact {outside:+.2g} outside)")

    order = {name: i for i, name in enumerate(CONTESTANTS)}
    for row in sorted(rows, key=lambda r: (r["dataset"], r["dims"], order.get(r["contestant"], 99))):
        kl, copies = honest_kl(row), row["dims"] / 2
        beyond = row["dims"] > 2 and not row.get("diverged")
        interval = (f"{_number(row['kl_lower'])}–{_number(row['kl_upper'])}{inside(row)}"
                    if beyond else "grid")
        learned = f"{_number(row['kl'])} ± {_number(row['kl_stderr'], 2)}" if row["learns_log_z"] else "free"
        error = _number(log_z_error(row)) if row["learns_log_z"] else "free"
        width = _number(row["log_z_upper"] - row["log_z_lower"]) if beyond else "–"
        ais = ais_distributions(row.get("ais_request"), row["dims"]) if beyond else "–"
        per_copy = "bounds crossed" if bracket_failed(row) and not exact_beyond(row) else _number(kl / copies)
        lines.append(f"| {row['dataset']} | {row['dims']} | {row['contestant']} | {per_copy} | "
                     f"{_number(kl)} | {interval} | {learned} | {error} | {width} | {ais} | {row['step']} | "
                     f"{_number(row['train_seconds'])} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def header(rows: list[dict[str, Any]]) -> str:
    first = rows[0]
    loads = [r["load"] for r in rows]
    return (f"equal wall-clock: {first['budget_seconds']:g} s of training per run unless its train s says more (or a "
            f"{first['schedule_steps']}-step cosine schedule, whichever ends first), seed {first['seed']}, "
            f"{first['eval_points']} test points; "
            f"{len(rows)} runs; torch {torch.__version__}, one thread; load average at the runs' ends "
            f"{min(loads):.1f}–{max(loads):.1f}. KL in nats: the grid's in 2D and a pair energy's own pair grids in "
            f"any D (exact), else the middle of the interval the AIS bracket on log Z implies (\"bounds crossed\": the "
            f"reverse chains never sampled the model, no bracket); log Z error: learned minus exact (2D, pair energy) "
            f"or distance outside the bracket; \"holds the exact\" / \"exact ± x outside\": whether the AIS bracket "
            f"contains the exact log Z where there is one (its bounds are stochastic).")


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """KL per 2D copy against D, one panel per dataset, a line per contestant (log scale; the AIS interval as
    error bars); dashed: the KL with the learned log Z, for the contestants that learn it. Only the runs at the
    first row's budget and the default AIS: one point per contestant and D."""
    rows = [r for r in rows if r["budget_seconds"] == rows[0]["budget_seconds"] and not r.get("ais_request")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for i, name in enumerate(CONTESTANTS):
            mine = sorted((r for r in rows if r["dataset"] == dataset and r["contestant"] == name
                           and math.isfinite(honest_kl(r))), key=lambda r: r["dims"])
            if not mine:
                continue
            dims = [r["dims"] for r in mine]
            per_copy = [honest_kl(r) / (r["dims"] / 2) for r in mine]
            spread = [0.0 if r["dims"] == 2 or exact_beyond(r) else max(0.0, r["kl_upper"] - r["kl_lower"]) / r["dims"]
                      for r in mine]
            colour = f"C{i}"
            ax.errorbar(dims, per_copy, yerr=spread, color=colour, marker="o", ms=3, capsize=2, label=name)
            if mine[0]["learns_log_z"]:
                ax.plot(dims, [r["kl"] / (r["dims"] / 2) for r in mine], color=colour, ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", title=dataset, xlabel="D", xlim=(1.7, 38))
        ax.set_xticks(DIMS, [str(d) for d in DIMS])
        ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].set_ylabel("KL(data ‖ model) per 2D copy, nats")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def report(rows: list[dict[str, Any]], markdown: Path, image: Path) -> None:
    text = header(rows) + "\n\n" + table(rows)
    print(text)
    markdown.write_text(text + "\n")
    figure(rows, image)
    print(f"\nwrote {markdown} and {image}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS), help="dimensions D (even)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--contestants", nargs="+", default=list(CONTESTANTS), choices=list(CONTESTANTS))
    parser.add_argument("--seconds", type=float, default=60.0, help="training seconds per run (time_budget)")
    parser.add_argument("--steps", type=int, default=6000, help="steps of the cosine schedule (the most a run takes)")
    parser.add_argument("--eval-points", type=int, default=20_000, help="test points of the final evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ais-distributions", type=int, default=None,
                        help="K of the AIS bracket beyond 2D (default: the loop's)")
    parser.add_argument("--quick", action="store_true", help="a tiny rehearsal: D 2 4, 8gaussians, nce-gmm and dsm, "
                        "3 s, 200 steps, 2000 test points; results, table and figure in a temporary folder")
    parser.add_argument("--report", action="store_true", help="only the table and the figure, from the saved results")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.datasets, args.contestants = [2, 4], ["8gaussians"], ["nce-gmm", "dsm"]
        args.seconds, args.steps, args.eval_points = 3.0, 200, 2000
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_dims_")) if args.quick else None
    path = (folder or RESULTS) / "dims.json"
    rows = read_rows(path) if args.report else run_bench(args, path)
    if not rows:
        sys.exit(f"no results in {path}")
    report(rows, (folder or RESULTS) / "dims.md", (folder or IMAGES) / "dims_kl.png")


if __name__ == "__main__":
    main()
