"""Training a 2D energy model by NCE: the config, the loop, checkpoints and loading a trained model.

Each epoch draws ``samples`` fresh data points, and for every batch of B of them ν·B noise points, and
takes one Adam step on −J (``ebm.energy.objective``) with a cosine-decaying learning rate. At the end of
each epoch the model is normalised on a grid and scored (``ebm.energy.evaluate``), a frame is drawn, a
line is appended to ``metrics.jsonl`` and the checkpoint is replaced atomically.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ebm.data.toy import REFERENCE_DATASETS, TOY_DATASETS, log_prob, sample
from ebm.energy.evaluate import Grid, chunked, density_metrics, grid_log_prob
from ebm.energy.model import ACTIVATIONS, EnergyMLP
from ebm.energy.noise import NOISE_CHOICES, GaussianMixtureNoise, empty_noise, make_noise
from ebm.energy.objective import nce_loss
from ebm.energy.plot import DensityFigure
from ebm.utils import (
    MetricsLogger,
    get_device,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

CHECKPOINT = "checkpoint.pt"
EPOCH_EVAL_POINTS = 10_000  # test points scored each epoch; the paired KL estimate's error is then ≈ 0.003
BASE_CHOICES = ("noise", "none")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EnergyConfig:
    """Everything that defines a run (saved as ``config.json`` and in the checkpoint)."""

    dataset: str = "8gaussians"  # a name in ebm.data.toy.TOY_DATASETS
    epochs: int = 20  # each epoch ends with an evaluation, a frame and a checkpoint
    samples: int = 64_000  # fresh data points per epoch (steps per epoch = samples / batch_size)
    batch_size: int = 256  # data points per step
    lr: float = 5e-3  # Adam's peak learning rate, decayed to 0 by a cosine over all steps
    noise: str = "gmm"  # gaussian (the seed's N(0, 4I)), fitted, or gmm
    noise_ratio: float = 4.0  # ν, noise points per data point
    noise_components: int = 8  # K of the gmm noise
    noise_widen: float = 1.5  # factor on the fitted noise covariances
    width: int = 128  # hidden units per layer of the energy MLP
    depth: int = 3  # hidden layers
    activation: str = "silu"
    base: str = "noise"  # "noise": energy relative to the noise density (log p = log q − g − c); "none": plain MLP
    seed: int = 0
    device: str = "auto"  # auto tries cuda, then mps, then cpu
    out: str = ""  # run folder; "" means runs/<dataset>
    images: str = ""  # frame folder; "" means images/<run folder name>, "none" writes no frames
    resume: bool = False  # continue the run in `out` from its checkpoint
    eval_points: int = 100_000  # fresh test points for the final NLL and KL (each epoch uses up to 10k of them)
    resolution: int = 128  # grid cells per side for each epoch's normalisation and frame; the final uses 2×

    def __post_init__(self) -> None:
        if self.dataset not in TOY_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(TOY_DATASETS)}")
        if self.noise not in NOISE_CHOICES:
            raise ValueError(f"unknown noise {self.noise!r}; choose one of {', '.join(NOISE_CHOICES)}")
        if self.base not in BASE_CHOICES:
            raise ValueError(f"unknown base {self.base!r}; choose one of {', '.join(BASE_CHOICES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("epochs", "samples", "batch_size", "noise_components", "width", "depth", "eval_points"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lr", "noise_ratio", "noise_widen"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if self.resolution < 2 or self.resolution % 2:
            raise ValueError(f"resolution must be an even integer ≥ 2, got {self.resolution}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.dataset}")

    @property
    def frame_dir(self) -> Path | None:
        if self.images == "none":
            return None
        return Path(self.images or f"images/{self.run_dir.name}")


# Fields that may differ between a run and its resumption: where things go, not what is computed.
_RESUMABLE_CHANGES = {"device", "out", "images", "resume"}


def cosine_lr(step: int, total_steps: int, peak: float) -> float:
    """Learning rate at ``step``: peak · ½(1 + cos(π·step/total)), from peak down to 0."""
    return peak * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def build_model(config: EnergyConfig, noise: GaussianMixtureNoise) -> EnergyMLP:
    """The energy network of ``config``, relative to ``noise`` when ``config.base == "noise"``."""
    return EnergyMLP(config.width, config.depth, config.activation, noise if config.base == "noise" else None)


def _check_resumable(saved: dict[str, Any], config: EnergyConfig) -> None:
    wanted = asdict(config)
    differ = [
        f"{k}: checkpoint {saved.get(k)!r}, now {wanted[k]!r}"
        for k in wanted
        if k not in _RESUMABLE_CHANGES and saved.get(k) != wanted[k]
    ]
    if differ:
        raise ValueError("cannot resume with a different configuration; " + "; ".join(differ))


def train_energy(config: EnergyConfig) -> dict[str, float]:
    """Train (or, with ``config.resume``, continue) a run; return the final metrics.

    The final metrics are the last epoch's, with the evaluation redone on all ``eval_points`` test points
    and a grid of 2·resolution cells per side (also the last line of ``metrics.jsonl``, ``"final": true``).

    Raises:
        CheckpointError: resuming without a readable checkpoint (nothing is written).
        ValueError: resuming with a configuration other than the checkpoint's.
        TrainingDiverged: a non-finite loss; names the epoch and step, keeps the last good checkpoint.
    """
    device = get_device(config.device)
    run_dir, frame_dir = config.run_dir, config.frame_dir
    state = load_checkpoint(run_dir / CHECKPOINT) if config.resume else None
    if state is not None:
        _check_resumable(state["config"], config)

    seed_everything(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    if state is None:
        fit_points = sample(config.dataset, 10_000, data_gen)
        noise = make_noise(config.noise, fit_points, config.noise_components, config.noise_widen, config.seed)
    else:
        noise = empty_noise(config.noise, config.noise_components)
        noise.load_state_dict(state["noise"])
    model = build_model(config, noise).to(device)
    noise = noise.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], data_gen, noise_gen)
        start_epoch = state["epoch"]

    # A fixed test set, drawn from its own generator so that it does not depend on training.
    test = sample(config.dataset, config.eval_points, torch.Generator().manual_seed(config.seed + 1_000_003))
    test_log_p = log_prob(config.dataset, test) if config.dataset in REFERENCE_DATASETS else None
    grid = Grid.covering(test, config.resolution)
    epoch_test, epoch_test_log_p = (
        test[:EPOCH_EVAL_POINTS],
        None if test_log_p is None else test_log_p[:EPOCH_EVAL_POINTS],
    )
    figure = None
    if frame_dir is not None:
        frame_dir.mkdir(parents=True, exist_ok=True)
        noise_image = grid_log_prob(noise.log_prob, grid, device)
        figure = DensityFigure(grid, test[:20_000], noise_image, f"{config.dataset}, NCE ν={config.noise_ratio:g}")

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    logger = MetricsLogger(run_dir / "metrics.jsonl")
    logger.truncate_after("epoch", start_epoch)
    steps_per_epoch = math.ceil(config.samples / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    metrics: dict[str, float] = dict(state["metrics"]) if state is not None else {}

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        data = sample(config.dataset, config.samples, data_gen).to(device)
        loss_sum, accuracy_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        bar = tqdm(
            data.split(config.batch_size),
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=os.environ.get("EBM_PROGRESS", "1") == "0",
        )
        for i, batch in enumerate(bar):
            step = (epoch - 1) * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, total_steps, config.lr)
            noise_points = noise.sample((round(config.noise_ratio * len(batch)),), noise_gen)
            loss, accuracy = nce_loss(model, noise, batch, noise_points, config.noise_ratio)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss.item()} at epoch {epoch}, step {i + 1} of {steps_per_epoch}; "
                    f"the last good checkpoint in {run_dir} is kept"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            accuracy_sum += accuracy
            if i % 25 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{accuracy.item():.3f}")
        train_seconds = time.perf_counter() - started

        started = time.perf_counter()
        model.eval()
        model_image = grid_log_prob(model.log_prob, grid, device)
        metrics = density_metrics(model_image, grid, chunked(model.log_prob, epoch_test.to(device)), epoch_test_log_p)
        eval_seconds = time.perf_counter() - started
        plot_seconds = 0.0
        if figure is not None:
            started = time.perf_counter()
            text = f"epoch {epoch}" + (f", KL {metrics['kl']:.3f} nats" if "kl" in metrics else "")
            figure.save(model_image - metrics["log_normaliser"], frame_dir / f"epoch_{epoch:04d}.png", text)
            plot_seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "step": epoch * steps_per_epoch,
            "loss": loss_sum.item() / steps_per_epoch,
            "accuracy": accuracy_sum.item() / steps_per_epoch,
            "log_z": model.log_z.item(),
            **metrics,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "plot_seconds": plot_seconds,
        }
        logger.log(**metrics)
        save_checkpoint(
            run_dir / CHECKPOINT,
            {
                "model": model.state_dict(),
                "noise": noise.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "config": asdict(config),
                "metrics": metrics,
                "rng": get_rng_state(data_gen, noise_gen),
            },
        )
        print(_summary(metrics, config.epochs))

    # The final score: all test points on a grid twice as fine.
    started = time.perf_counter()
    final_grid = Grid(grid.bound, 2 * config.resolution)
    final = density_metrics(
        grid_log_prob(model.log_prob, final_grid, device),
        final_grid,
        chunked(model.log_prob, test.to(device)),
        test_log_p,
    )
    metrics = {**metrics, **final, "final": True, "final_eval_seconds": time.perf_counter() - started}
    logger.log(**metrics)
    kl = f", KL {final['kl']:.4f} ± {final['kl_stderr']:.4f}" if "kl" in final else ""
    print(
        f"final ({len(test)} test points, {final_grid.resolution}² grid): normaliser error "
        f"{final['normaliser_error']:.4f}, test NLL {final['test_nll']:.4f}{kl}"
    )
    return metrics


def _summary(m: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracy, normaliser error, NLL, KL, timings."""
    kl = f" KL {m['kl']:.4f}" if "kl" in m else ""
    return (
        f"epoch {m['epoch']:>3}/{epochs}  loss {m['loss']:.4f}  acc {m['accuracy']:.3f}  "
        f"|log Z| {m['normaliser_error']:.4f}  NLL {m['test_nll']:.4f}{kl}  "
        f"train {m['train_seconds']:.1f}s eval {m['eval_seconds']:.1f}s plot {m['plot_seconds']:.2f}s"
    )


def load_model(path: str | os.PathLike) -> EnergyMLP:
    """The trained model of a run folder or checkpoint file, on the CPU in eval mode.

    ``model.log_prob(x)`` maps float (N, 2) to (N,), including the learned log_z.
    """
    path = Path(path)
    state = load_checkpoint(path / CHECKPOINT if path.is_dir() else path)
    names = {f.name for f in fields(EnergyConfig)}
    config = EnergyConfig(**{k: v for k, v in state["config"].items() if k in names})
    model = build_model(config, empty_noise(config.noise, config.noise_components))
    model.load_state_dict(state["model"])
    return model.eval()
