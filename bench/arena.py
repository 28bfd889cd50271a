"""The estimator arena: every 2D estimator on every toy dataset, at an equal step budget and an equal wall-clock budget.

    python bench/arena.py                                    # both modes, every contestant × 8 datasets × seeds 0 1 2
    python bench/arena.py --mode steps --datasets rings checkerboard --estimators nce fce cd --seeds 0
    python bench/arena.py --report                           # only the tables and figures, from the saved results

Every run is ``train_energy(EnergyConfig(...))`` in a temporary run folder, without frames or progress bars,
on one CPU thread. The recipe shared by all runs (``RECIPE``): a 3 × 128 SiLU energy MLP (the package's default is
6 × 128) taken relative to the gmm noise (``base="noise"``: log p = log q − g − log_z, so every estimator starts
from the same normalised density), batches of 256 data points, Adam with peak learning rate 5e-3 decayed to 0 by a
cosine over the run's steps, 4 epochs (each ends with a grid evaluation), and the final evaluation on 100,000 fresh test
points against the dataset's exact density (KL by the paired estimator; the normaliser error |log ∫ p_model| is
meaningful only where the estimator learns log Z).

The contestants (``CONTESTANTS``) are the nine estimators of ``ebm.energy.estimators`` with their default options
(``EstimatorOptions``) except where a short tuning on rings and checkerboard (1000 steps, seed 0) found the
defaults unusable: dsm learns from a plain MLP (``base="none"``; relative to the mixture it sat on a plateau),
and cd takes Adam 2e-3 with Langevin steps of 0.003 (at the defaults it diverged). Besides them, NCE with the
spline flow fitted to the data as its fixed noise (``nce-flow``; the energy is then relative to the flow). The
noise-contrastive estimators (nce, rnce, ence) draw their noise from the gmm noise; cd starts and restarts its
chains there; fce trains its own flow (pretrained by maximum likelihood) against the energy.

Modes:
    steps  every contestant takes the same number of Adam steps (``STEP_BUDGET``: 1000 steps of 256 points).
    time   every contestant gets the same training time T (``--seconds``, default 15 s): its number of steps is
           T divided by its seconds per step, so its cosine schedule is laid over exactly the steps it can afford
           and completes. Runs are never cut mid-schedule with ``time_budget`` (that would penalise a slow
           estimator twice: fewer steps and an unfinished decay). The seconds per step come from a calibration on
           this machine (``calibrate``: each contestant's training steps on rings, timed round-robin in
           ``CALIBRATION_ROUNDS`` rounds of ``CALIBRATION_STEPS`` steps after a warm-up, the median per
           contestant; round-robin so a change of the machine's load touches all of them alike), saved in
           bench/results/arena_calibration.json and reused, so a resumed arena runs the same schedules
           (``--recalibrate`` measures again). Setting up (fitting the noise, pretraining FCE's flow) and the
           evaluations are outside the budget; they show in s/run, and each row records the training seconds a
           run actually took (``train_seconds``) beside the budget.

Results: one JSON line per run, appended as soon as it ends, to bench/results/arena_<mode>.jsonl; a run already
there with the same settings is skipped, so an interrupted arena resumes where it stopped (the datasets come
one after the other, each in both modes, the five reference sets first). A run stopped by the package's
divergence guard is recorded with KL = +inf. Seed 0's learned density on a 96² grid goes to
bench/results/arena_<mode>_densities.npz (uint8, relative to its maximum) for the figures. The tables (median KL
over seeds with the worst seed in brackets, the normaliser error where log Z is learned, steps, training
seconds, s/run) are printed and written to bench/results/arena_<mode>.md; the figure of the equal-steps runs
(contestants as rows, datasets as columns, seed 0's density with the median KL) goes to images/arena.png, and a
KL heat map of both modes to images/arena_kl.png (notebook 04 draws the equal-time densities too).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebm.data.toy import REFERENCE_DATASETS, TOY_DATASETS, sample
from ebm.energy import EnergyConfig, Grid, load_model, train_energy
from ebm.energy.estimators import ESTIMATORS, make_estimator
from ebm.energy.evaluate import grid_log_prob
from ebm.energy.noise import make_noise
from ebm.energy.task import build_energy, energy_step
from ebm.harness import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
IMAGES = ROOT / "images"
MODES = ("steps", "time")

RECIPE: dict[str, Any] = dict(epochs=4, batch_size=256, lr=5e-3, width=128, depth=3, activation="silu",
                              fourier_features=0, base="noise", noise="gmm", eval_points=100_000, resolution=128)
STEP_BUDGET = 1000  # equal-steps mode: Adam steps of every run
DEFAULT_SECONDS = 15.0  # equal-time mode: training seconds of every run

CONTESTANTS: dict[str, dict[str, Any]] = {  # name → EnergyConfig fields on top of RECIPE
    "nce": dict(estimator="nce"),
    "nce-flow": dict(estimator="nce", noise="flow"),
    "rnce": dict(estimator="rnce"),
    "ence": dict(estimator="ence"),
    "cnce": dict(estimator="cnce"),
    "fce": dict(estimator="fce"),
    # With the mixture as its base, dsm sat on a plateau for most of 1000 steps (rings KL 0.86, checkerboard
    # 0.39); from a plain MLP it reached 0.19 on both.
    "dsm": dict(estimator="dsm", base="none"),
    "ssm": dict(estimator="ssm"),
    # At Adam 5e-3 or 2e-3 with Langevin steps of 0.01, cd diverged on rings (the guard stopped it); at 1e-3 it
    # stayed at KL 0.80; Adam 2e-3 with steps of 0.003 was stable and reached 0.64.
    "cd": dict(estimator="cd", lr=2e-3, cd_step_size=0.003),
    "mle": dict(estimator="mle"),
}

CALIBRATION_DATASET = "rings"
CALIBRATION_STEPS = 30  # timed steps per contestant and round
CALIBRATION_WARMUP = 5
CALIBRATION_ROUNDS = 3
IMAGE_RESOLUTION = 96  # seed 0's density, saved for the figures


# ----------------------------------------------------------------------------------------------- schedules


def calibrate(contestants: list[str], threads: int = 1) -> dict[str, float]:
    """Seconds per training step of each contestant on this machine: {name: median over rounds}.

    Each contestant's model, noise and estimator are built as in a run (on the CPU, ``threads`` threads) and
    timed on ``CALIBRATION_STEPS`` steps of ``energy_step`` per round, contestants taken in turn in every round.
    """
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    fit_points = sample(CALIBRATION_DATASET, 10_000, generator)
    states = {}
    for name in contestants:
        config = _config(name, CALIBRATION_DATASET, 0, STEP_BUDGET, "")
        noise = make_noise(config.noise, fit_points, config.noise_components, config.noise_widen, 0)
        estimator = make_estimator(config.estimator, config, noise, fit_points, 0)
        model = build_energy(config, noise)
        states[name] = (model, estimator, torch.optim.Adam(model.parameters(), lr=config.lr))
    batches = sample(CALIBRATION_DATASET, 256 * (CALIBRATION_STEPS + CALIBRATION_WARMUP), generator).split(256)
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for round_ in range(CALIBRATION_ROUNDS):
        for name, (model, estimator, optimizer) in states.items():
            for i in range(CALIBRATION_WARMUP if round_ == 0 else 0):
                energy_step(model, estimator, batches[i], optimizer, generator)
            started = time.perf_counter()
            for batch in batches[CALIBRATION_WARMUP:]:
                energy_step(model, estimator, batch, optimizer, generator)
            seconds[name].append((time.perf_counter() - started) / CALIBRATION_STEPS)
    return {name: statistics.median(values) for name, values in seconds.items()}


def load_calibration(contestants: list[str], recalibrate: bool) -> dict[str, float]:
    """Saved seconds per step, measuring (and saving) those of contestants not yet calibrated."""
    path = RESULTS / "arena_calibration.json"
    saved = {} if recalibrate or not path.exists() else json.loads(path.read_text())
    missing = [name for name in contestants if name not in saved]
    if missing:
        print(f"calibrating seconds per step: {', '.join(missing)}", file=sys.stderr)
        saved.update(calibrate(missing))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved, indent=1) + "\n")
    return saved


def budget_steps(mode: str, seconds_per_step: float, seconds: float) -> int:
    """Adam steps of a run: STEP_BUDGET, or as many as ``seconds`` of training buy (a multiple of the epochs)."""
    if mode == "steps":
        return STEP_BUDGET
    epochs = RECIPE["epochs"]
    return epochs * max(1, round(seconds / seconds_per_step / epochs))


def _config(name: str, dataset: str, seed: int, steps: int, out: str) -> EnergyConfig:
    """The run's config: RECIPE, the contestant's settings, and ``steps`` steps spread over RECIPE's epochs."""
    settings = {**RECIPE, **CONTESTANTS[name]}
    settings["samples"] = steps // settings["epochs"] * settings["batch_size"]
    return EnergyConfig(dataset=dataset, seed=seed, out=out, frames="none", progress=False, threads=1, **settings)


# -------------------------------------------------------------------------------------------------- runs




LEARNS_LOG_Z = {name: cls.learns_log_z for name, cls in ESTIMATORS.items()}  # whether the objective fixes log_z


def run_one(name: str, dataset: str, seed: int, steps: int, workdir: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """Train one run; its result row and its learned density on the figure grid, as uint8 relative to its
    maximum (255 at the mode: enough for a picture, a tenth of the size of float16).

    A run stopped by the package's divergence guard is a result too: KL and normaliser error +inf, ``diverged``
    holding the guard's message, and no density.
    """
    config = _config(name, dataset, seed, steps, str(workdir / f"{name}-{dataset}-{seed}"))
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # one line per epoch: the row keeps what matters
            final = train_energy(config)
    except TrainingDiverged as error:
        final = {"step": steps, "kl": math.inf, "normaliser_error": math.inf, "train_seconds": math.nan,
                 "diverged": str(error)}
    seconds = time.perf_counter() - started
    row = {
        "contestant": name,
        "estimator": config.estimator,
        "noise": config.noise,
        "dataset": dataset,
        "seed": seed,
        "steps": final["step"],
        "learns_log_z": LEARNS_LOG_Z[config.estimator],
        **{key: final.get(key, math.nan) for key in ("kl", "kl_stderr", "normaliser_error", "log_z",
                                                      "log_normaliser", "mass_outside", "test_nll", "entropy")},
        "train_seconds": final["train_seconds"],
        "seconds": seconds,
        "load": os.getloadavg()[0],
        "diverged": final.get("diverged"),
        "settings": _settings(config),
    }
    if row["diverged"]:
        return row, None
    grid = figure_grid(dataset)
    log_p = grid_log_prob(load_model(config.run_dir).log_prob, grid).double()  # (R, R)
    density = (log_p - log_p.max()).exp().numpy()  # (R, R), 1 at the mode
    return row, np.round(255 * density).astype(np.uint8)


def _settings(config: EnergyConfig) -> dict[str, Any]:
    """What decides a run's result (not where or how it runs): the key for resuming."""
    skip = ("seed", "device", "threads", "out", "resume", "progress", "time_budget", "log_interval", "frames",
            "dataset")
    return {k: v for k, v in asdict(config).items() if k not in skip}


def figure_grid(dataset: str) -> Grid:
    """The grid the figures show a dataset on (its data's box, as the training's evaluation grid)."""
    return Grid.covering(sample(dataset, 20_000, torch.Generator().manual_seed(2)), IMAGE_RESOLUTION)


def read_rows(mode: str) -> list[dict[str, Any]]:
    path = RESULTS / f"arena_{mode}.jsonl"
    if not path.exists():
        return []
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _key(row: dict[str, Any]) -> str:
    return json.dumps([row["contestant"], row["dataset"], row["seed"], row["settings"]], sort_keys=True)


def save_density(mode: str, name: str, dataset: str, density: np.ndarray) -> None:
    """Adds one image to the mode's archive, under a lock: arenas on disjoint datasets may run side by side."""
    path = RESULTS / f"arena_{mode}_densities.npz"
    with (RESULTS / f".arena_{mode}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        images = dict(np.load(path)) if path.exists() else {}
        images[f"{name}/{dataset}"] = density
        with tempfile.NamedTemporaryFile(dir=RESULTS, suffix=".npz", delete=False) as f:
            np.savez_compressed(f, **images)
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)


def load_densities(mode: str) -> dict[str, np.ndarray]:
    """Seed 0's densities of a mode: {"contestant/dataset": (96, 96) float array, 1 at the mode}."""
    path = RESULTS / f"arena_{mode}_densities.npz"
    return {key: value / 255.0 for key, value in np.load(path).items()} if path.exists() else {}


def run_arena(modes: list[str], contestants: list[str], datasets: list[str], seeds: list[int], seconds: float,
              calibration: dict[str, float]) -> None:
    """Every mode × contestant × dataset × seed not yet in its mode's results file, appended as each run ends.

    Dataset-major (then seed, then mode): an interrupted arena holds whole datasets, in both modes, first.
    """
    done = {mode: {_key(row) for row in read_rows(mode)} for mode in modes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in datasets:
            for seed in seeds:
                for mode in modes:
                    for name in contestants:
                        steps = budget_steps(mode, calibration.get(name, math.nan), seconds)
                        probe = {"contestant": name, "dataset": dataset, "seed": seed,
                                 "settings": _settings(_config(name, dataset, seed, steps, ""))}
                        if _key(probe) in done[mode]:
                            continue
                        row, density = run_one(name, dataset, seed, steps, Path(tmp))
                        row.update(mode=mode, budget_seconds=seconds if mode == "time" else None,
                                   calibrated_step_seconds=calibration.get(name))
                        if seed == seeds[0] and density is not None:
                            save_density(mode, name, dataset, density)
                        with (RESULTS / f"arena_{mode}.jsonl").open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(f"[{mode}] {name:9s} {dataset:12s} seed {seed}: KL {row['kl']:.4f}, normaliser "
                              f"error {row['normaliser_error']:.4f}, {row['steps']} steps, "
                              f"{row['train_seconds']:.1f} s training, {row['seconds']:.0f} s in all",
                              file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- reporting


def _median_finite(values: list[float]) -> float:
    """The median of the finite values (a diverged run has no timing), NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (contestant, dataset): seeds, diverged runs, median and max KL (a diverged run counts as +inf),
    median normaliser error (None: log Z free), median steps, training seconds and s/run."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["contestant"], row["dataset"]), []).append(row)
    summary = {}
    for key, runs in groups.items():
        summary[key] = {
            "seeds": len(runs),
            "diverged": sum(bool(r.get("diverged")) for r in runs),
            "kl": statistics.median(r["kl"] for r in runs),
            "kl_max": max(r["kl"] for r in runs),
            "normaliser_error": statistics.median(r["normaliser_error"] for r in runs)
            if runs[0]["learns_log_z"] else None,
            "steps": statistics.median(r["steps"] for r in runs),
            "train_seconds": _median_finite([r["train_seconds"] for r in runs]),
            "seconds": statistics.median(r["seconds"] for r in runs),
        }
    return summary


def _kl(value: float) -> str:
    return "diverged" if value == math.inf else f"{value:.4f}" if value < 10 else f"{value:.3g}"


def latest_rows(mode: str, seconds: float | None = None) -> list[dict[str, Any]]:
    """The mode's rows, the last one of each (contestant, dataset, seed); time mode: only budget ``seconds``."""
    rows = read_rows(mode)
    if mode == "time" and seconds is not None:
        rows = [r for r in rows if r["budget_seconds"] == seconds]
    return list({(r["contestant"], r["dataset"], r["seed"]): r for r in rows}.values())


def _order(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    contestants = [c for c in CONTESTANTS if any(r["contestant"] == c for r in rows)]
    datasets = [d for d in TOY_DATASETS if any(r["dataset"] == d for r in rows)]
    return contestants, datasets


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: contestants as rows; per dataset the median KL over seeds (worst seed in brackets, "diverged"
    for a run the divergence guard stopped; the best median of each dataset in bold); then the median normaliser
    error over all runs ("free" where log Z cancels from the objective), steps, training seconds and s/run
    (medians)."""
    summary = summarise(rows)
    contestants, datasets = _order(rows)
    best = {d: min(summary[c, d]["kl"] for c in contestants if (c, d) in summary) for d in datasets}
    lines = ["| estimator | " + " | ".join(datasets) + " | log Z error | steps | train s | s/run |",
             "|---|" + "---|" * (len(datasets) + 4)]
    for c in contestants:
        cells = []
        for d in datasets:
            s = summary.get((c, d))
            if s is None:
                cells.append("")
                continue
            median = _kl(s["kl"])
            worst = "diverged" if s["kl_max"] == math.inf else f"{s['kl_max']:.3g}"
            cells.append((f"**{median}**" if s["kl"] == best[d] else median) + f" ({worst})")
        mine = [r for r in rows if r["contestant"] == c]
        log_z = (f"{statistics.median(r['normaliser_error'] for r in mine):.4f}" if mine[0]["learns_log_z"]
                 else "free")
        medians = [_median_finite([r[k] for r in mine]) for k in ("steps", "train_seconds", "seconds")]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {log_z} | {medians[0]:.0f} | {medians[1]:.1f} | "
                     f"{medians[2]:.0f} |")
    return "\n".join(lines)


def long_table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one line per (contestant, dataset): every summary statistic."""
    summary = summarise(rows)
    contestants, datasets = _order(rows)
    lines = ["| estimator | dataset | seeds | diverged | KL median | KL max | normaliser error | steps | train s | "
             "s/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in contestants:
        for d in datasets:
            s = summary.get((c, d))
            if s is None:
                continue
            error = "free" if s["normaliser_error"] is None else f"{s['normaliser_error']:.4f}"
            lines.append(f"| {c} | {d} | {s['seeds']} | {s['diverged']} | {_kl(s['kl'])} | {_kl(s['kl_max'])} | "
                         f"{error} | {s['steps']:.0f} | {s['train_seconds']:.1f} | {s['seconds']:.0f} |")
    return "\n".join(lines)


def header(mode: str, rows: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    loads = [r["load"] for r in rows]
    budget = (f"equal steps: {STEP_BUDGET} Adam steps of {RECIPE['batch_size']} points each" if mode == "steps"
              else f"equal wall-clock: {rows[0]['budget_seconds']:g} s of training each (steps from the "
                   f"calibrated seconds per step)")
    return (f"{budget}; seeds {' '.join(map(str, seeds))}; {len(rows)} runs; torch {torch.__version__}, one thread; "
            f"load average at the runs' ends: median {statistics.median(loads):.1f} "
            f"(range {min(loads):.1f}–{max(loads):.1f})")


def density_figure(mode: str, rows: list[dict[str, Any]], path: Path) -> None:
    """Contestants as rows, datasets as columns (data on top): seed 0's density, titled with the median KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    densities = load_densities(mode)
    contestants, datasets = _order(rows)
    fig, axes = plt.subplots(len(contestants) + 1, len(datasets), figsize=(1.25 * len(datasets),
                             1.3 * (len(contestants) + 1)), squeeze=False)
    for j, dataset in enumerate(datasets):
        grid = figure_grid(dataset)
        points = sample(dataset, 100_000, torch.Generator().manual_seed(1)).numpy()
        edges = np.linspace(-grid.bound, grid.bound, grid.resolution + 1)
        _show(axes[0, j], np.histogram2d(points[:, 1], points[:, 0], bins=(edges, edges))[0], grid, dataset)
        for i, name in enumerate(contestants, start=1):
            s, image = summary.get((name, dataset)), densities.get(f"{name}/{dataset}")
            title = "" if s is None else "diverged" if s["kl"] == math.inf else f"KL {s['kl']:.3g}"
            _show(axes[i, j], np.zeros((2, 2)) if image is None else image, grid, title)
    for i, name in enumerate(["data", *contestants]):
        axes[i, 0].set_ylabel(name, fontsize=9)
    budget = (f"equal steps ({STEP_BUDGET} steps)" if mode == "steps"
              else f"equal wall-clock ({rows[0]['budget_seconds']:g} s of training)")
    fig.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.2)
    fig.suptitle(f"The estimator arena, {budget}:\nseed 0's density, median KL over the seeds (nats)", fontsize=10,
                 y=1.0, va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def _show(ax, image: np.ndarray, grid: Grid, title: str) -> None:
    ax.imshow(image, origin="lower", extent=(-grid.bound, grid.bound) * 2, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=8, pad=2)
    ax.set_xticks([])
    ax.set_yticks([])


def heatmap_figure(by_mode: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """log10 of the median KL, contestants × datasets, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if by_mode.get(m)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        rows = by_mode[mode]
        summary = summarise(rows)
        contestants, datasets = _order(rows)
        kl = np.array([[summary[c, d]["kl"] if (c, d) in summary else np.nan for d in datasets] for c in contestants])
        image = ax.imshow(np.log10(np.clip(kl, 1e-4, 10)), cmap="magma_r", vmin=-3, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(kl):
            if not np.isnan(value):
                text = "div." if value == np.inf else f"{value:.3f}" if value < 10 else f"{value:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value > 0.3 else "black")
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, fontsize=8)
        ax.set_yticks(range(len(contestants)), contestants, fontsize=8)
        ax.set_title(header(mode, rows).split(";")[0], fontsize=9)
        fig.colorbar(image, ax=ax, label="log10 median KL (nats)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(seconds: float) -> None:
    """Print and save each mode's tables; draw the figures."""
    by_mode = {mode: latest_rows(mode, seconds) for mode in MODES}
    for mode, rows in by_mode.items():
        if not rows:
            continue
        text = f"{header(mode, rows)}\n\n{table(rows)}\n\n{long_table(rows)}\n"
        (RESULTS / f"arena_{mode}.md").write_text(text)
        print(f"## {mode}\n\n{header(mode, rows)}\n\n{table(rows)}\n")
        if mode == "steps":  # the equal-time densities look alike; notebook 04 shows both
            density_figure(mode, rows, IMAGES / "arena.png")
    if any(by_mode.values()):
        heatmap_figure(by_mode, IMAGES / "arena_kl.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--estimators", nargs="+", choices=tuple(CONTESTANTS), default=list(CONTESTANTS),
                        help="contestants (estimators; nce-flow is NCE with the flow noise)")
    parser.add_argument("--datasets", nargs="+", choices=TOY_DATASETS, default=list(TOY_DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="training seconds per run (time mode)")
    parser.add_argument("--recalibrate", action="store_true", help="measure the seconds per step again")
    parser.add_argument("--report", action="store_true", help="only print the tables and draw the figures")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        parser.error(f"--seconds must be positive, got {args.seconds}")
    modes = list(MODES) if args.mode == "both" else [args.mode]
    if not args.report:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # scikit-learn's mixture fit too: contended BLAS threads cost seconds per fit
        datasets = sorted(args.datasets, key=lambda d: (d not in REFERENCE_DATASETS, TOY_DATASETS.index(d)))
        calibration = load_calibration(args.estimators, args.recalibrate) if "time" in modes else {}
        run_arena(modes, args.estimators, datasets, args.seeds, args.seconds, calibration)
    report(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
