"""Training a 2D energy model: the config, the loop, and loading a trained model.

Each epoch draws ``samples`` fresh data points and takes one Adam step per batch on the loss of the chosen
estimator (``ebm.energy.estimators``: NCE by default, with ν·B noise points per batch of B; or ranking NCE,
eNCE, conditional NCE, flow contrastive estimation, score matching, contrastive divergence, grid maximum
likelihood), with a cosine-decaying learning rate. At the end of each epoch the model is normalised on a grid
and scored (``ebm.energy.evaluate``), a frame is drawn, a line is appended to ``metrics.jsonl`` and the
checkpoint is replaced atomically. The run folder, resume rule, divergence rule, time budget and progress
bars are the shared harness's (``ebm.harness``).

All randomness comes from CPU generators (data, noise) and torch's global RNG (initialisation), so a seed
gives the same run on any device, and a run can be resumed on another device.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ebm.data.toy import EXACT_DATASETS, TOY_DATASETS, log_prob, sample
from ebm.energy.chasm import chasm_warning
from ebm.energy.estimators import (
    ESTIMATOR_OPTION_FIELDS,
    ESTIMATORS,
    Estimator,
    EstimatorOptions,
    empty_estimator,
    make_estimator,
)
from ebm.energy.evaluate import Grid, density_metrics, grid_log_prob
from ebm.energy.model import ACTIVATIONS, EnergyMLP
from ebm.energy.noise import NOISE_CHOICES, empty_noise, make_noise
from ebm.energy.plot import DensityFigure
from ebm.harness import (
    DivergenceGuard,
    Position,
    RunConfig,
    RunFolder,
    StepStats,
    TrainingClock,
    checkpoint_path,
    from_dict,
    option,
    positive,
    progress_bar,
    say,
    set_threads,
)
from ebm.utils import get_device, get_rng_state, load_checkpoint, seed_everything, set_rng_state

EPOCH_EVAL_POINTS = 10_000  # test points scored each epoch; the paired KL estimate's error is then ≈ 0.003
BASE_CHOICES = ("noise", "none")
NOISE_CONTRASTIVE = ("nce", "rnce", "ence")  # the estimators that classify data against --noise


def _even_resolution(name: str, value: int) -> None:
    if value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer ≥ 2, got {value}")


@dataclass
class EnergyConfig(RunConfig, EstimatorOptions):
    """Everything that defines a 2D run (saved as ``config.json`` and in the checkpoint).

    The estimators' own options (``cd_steps``, ``fce_rule``, …) and ``noise_ratio`` come from
    ``EstimatorOptions``.
    """

    option_groups = {"estimator options": ESTIMATOR_OPTION_FIELDS}

    dataset: str = option("8gaussians", "toy 2D distribution", choices=TOY_DATASETS)
    estimator: str = option("nce", "nce, rnce (ranking NCE), ence (eNCE), cnce (conditional NCE), fce (flow "
                            "contrastive), dsm / ssm (denoising / sliced score matching), cd (contrastive divergence), "
                            "mle (grid maximum likelihood)", choices=ESTIMATORS)
    epochs: int = option(20, "epochs; each ends with an evaluation, a frame and a checkpoint", check=positive)
    samples: int = option(64_000, "fresh data points per epoch (steps per epoch = samples / batch size)",
                          check=positive)
    batch_size: int = option(256, "data points per step", check=positive)
    lr: float = option(5e-3, "Adam's peak learning rate, decayed to 0 by a cosine over all steps", check=positive)
    noise: str = option("gmm", "gaussian: the seed's N(0, 4I); fitted: the data's Gaussian; gmm: a fitted mixture "
                        "plus a broad defensive component; flow: a spline flow fitted by maximum likelihood",
                        choices=NOISE_CHOICES)
    noise_components: int = option(8, "components of the gmm noise", check=positive)
    noise_widen: float = option(1.5, "factor on the fitted noise covariances", check=positive)
    width: int = option(128, "hidden units per layer of the energy MLP", check=positive)
    depth: int = option(6, "hidden layers of the energy MLP", check=positive)
    activation: str = option("silu", "activation of the energy MLP", choices=tuple(ACTIVATIONS))
    base: str = option("noise", "noise: energy relative to the noise density (log p = log q − g − log_z); "
                       "none: a plain MLP (log p = −g − log_z)", choices=BASE_CHOICES)
    eval_points: int = option(100_000, "fresh test points for the final NLL and KL (each epoch scores up to 10k)",
                              check=positive)
    resolution: int = option(128, "grid cells per side for each epoch's evaluation and frame; the final uses 2×",
                             check=_even_resolution)
    frames: str = option("", "frame folder ('' = <run folder>/frames, 'none' = no frames)", resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if round(self.noise_ratio * self.batch_size) < 1:
            raise ValueError(f"noise_ratio × batch_size must give at least one noise point per step, got "
                             f"{self.noise_ratio} × {self.batch_size}")
        if self.estimator in ("rnce", "cnce") and self.noise_ratio != round(self.noise_ratio):
            raise ValueError(f"{self.estimator} draws a whole number of noise points per data point; "
                             f"noise_ratio {self.noise_ratio} is not one")

    def run_name(self) -> str:
        return self.dataset if self.estimator == "nce" else f"{self.dataset}-{self.estimator}"

    def run_folder(self) -> RunFolder:
        frames = None if self.frames == "none" else (self.frames or "frames")
        return RunFolder(self.run_dir, frames)


def cosine_lr(step: int, total_steps: int, peak: float) -> float:
    """Learning rate at ``step``: peak · ½(1 + cos(π·step/total)), from peak down to 0."""
    return peak * 0.5 * (1 + math.cos(math.pi * step / total_steps))


def build_model(config: EnergyConfig, noise: torch.nn.Module) -> EnergyMLP:
    """The energy network of ``config``, relative to ``noise`` when ``config.base == "noise"``."""
    return EnergyMLP(config.width, config.depth, config.activation, noise if config.base == "noise" else None)


def train_step(model: EnergyMLP, estimator: Estimator, batch: torch.Tensor, optimizer: torch.optim.Optimizer,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One step of ``estimator`` on a batch (B, 2): an Adam step on its loss, unless the estimator updated only
    its own parameters this time (an FCE flow step). Returns detached statistics on the device: ``loss`` (when
    the energy stepped) and the estimator's own (e.g. the classifier's ``accuracy``).
    """
    loss, stats = estimator.loss(model, batch, generator)
    if loss is not None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats = {"loss": loss.detach(), **stats}
    return stats


def _test_set(config: EnergyConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed test points (N, 2) from their own generator, and their exact log-density (N,) where one is known."""
    test = sample(config.dataset, config.eval_points, torch.Generator().manual_seed(config.seed + 1_000_003))
    return test, log_prob(config.dataset, test) if config.dataset in EXACT_DATASETS else None


def train_energy(config: EnergyConfig) -> dict[str, Any]:
    """Train (or, with ``config.resume``, continue) a run; return the final metrics.

    The final metrics are those of the last epoch with the evaluation redone on all ``eval_points`` test points
    and a grid of 2·resolution cells per side (also the last line of ``metrics.jsonl``, ``"final": true``). A
    run stopped by ``time_budget`` evaluates where it stopped (``"partial": true``) and resumes from there.

    Raises:
        CheckpointError: resuming without a readable checkpoint (nothing is written).
        ValueError: an unavailable device, or resuming with a configuration other than the checkpoint's.
        TrainingDiverged: a non-finite or exploding loss; names the epoch and steps, keeps the last good checkpoint.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the 2D energy model trains in one process: run it with python train.py, not torchrun")
    device = get_device(config.device)
    set_threads(config.threads)
    run = config.run_folder()
    state = run.load_for_resume(config) if config.resume else None

    seed_everything(config.seed)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1)
    if state is None:
        fit_points = sample(config.dataset, 10_000, data_gen)  # what the noise (and fce's flow, mle's box) fit
        noise = make_noise(config.noise, fit_points, config.noise_components, config.noise_widen, config.seed)
        estimator = make_estimator(config.estimator, config, noise, fit_points, config.seed)
        warning = chasm_warning(config.dataset, config.noise, fit_points, noise) \
            if config.estimator in NOISE_CONTRASTIVE else None
    else:
        noise = empty_noise(config.noise, config.noise_components)
        noise.load_state_dict(state["noise"])
        estimator, warning = empty_estimator(config.estimator, config, noise), None
    model = build_model(config, noise).to(device)
    noise, estimator = noise.to(device), estimator.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    position, guard, clock = Position(), DivergenceGuard(), TrainingClock(config.time_budget)
    if state is not None:
        estimator.load_state_dict(state["estimator"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], data_gen, noise_gen)
        position, guard = Position(**state["position"]), DivergenceGuard(**state["guard"])
        clock.spent = state["train_seconds"]

    test, test_log_p = _test_set(config)
    epoch_test = test[:EPOCH_EVAL_POINTS]
    epoch_test_log_p = None if test_log_p is None else test_log_p[:EPOCH_EVAL_POINTS]
    grid = Grid.covering(test, config.resolution)
    figure = None
    if run.frames is not None:
        q = getattr(estimator, "noise", noise)  # the noise the estimator draws from (fce: its flow, at the start)
        figure = DensityFigure(grid, test[:20_000], grid_log_prob(q.log_prob, grid, device), _title(config))
    logger = run.start(config, position.epoch if state is not None else None)
    if warning:
        say(f"warning: {warning}")
    steps_per_epoch = math.ceil(config.samples / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    metrics: dict[str, Any] = dict(state["metrics"]) if state is not None else {}
    stats = StepStats(state["sums"] if state is not None and position.epoch_step else None)

    def checkpoint(epoch_start_rng: torch.Tensor) -> None:
        run.save({"model": model.state_dict(), "noise": noise.state_dict(), "estimator": estimator.state_dict(),
                  "optimizer": optimizer.state_dict(),
                  "config": asdict(config), "position": position.state_dict(), "guard": guard.state_dict(),
                  "train_seconds": clock.seconds, "metrics": metrics, "sums": stats.totals,
                  "epoch_rng": epoch_start_rng, "rng": get_rng_state(data_gen, noise_gen)})

    stopped = clock.out_of_time()  # a resumed run whose budget is already spent only evaluates
    while position.epoch < config.epochs and not stopped:
        epoch = position.epoch + 1
        if position.epoch_step:  # resuming mid-epoch: redraw this epoch's data from the state it started in
            data_gen.set_state(state["epoch_rng"])
        epoch_start_rng = data_gen.get_state()
        batches = sample(config.dataset, config.samples, data_gen).to(device).split(config.batch_size)
        model.train()
        clock.run()
        bar = progress_bar(range(position.epoch_step, steps_per_epoch), steps_per_epoch, f"epoch {epoch}",
                           config.progress, initial=position.epoch_step)
        for i in bar:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(position.step, total_steps, config.lr)
            stats.add(train_step(model, estimator, batches[i], optimizer, noise_gen))
            position.step, position.epoch_step = position.step + 1, i + 1
            stopped = clock.out_of_time()
            if stats.pending_steps == config.log_interval or i + 1 == steps_per_epoch or stopped:
                first = i + 2 - stats.pending_steps
                means = stats.flush()
                if "loss" in means:
                    guard.check(means["loss"], f"in epoch {epoch}, steps {first}–{i + 1} of {steps_per_epoch}",
                                run.describe_checkpoint())
                bar.set_postfix({n: f"{m:.4f}" for n, m in means.items() if n in ("loss", "accuracy")})
            if stopped:
                break
        bar.close()
        clock.pause()
        if stopped and position.epoch_step < steps_per_epoch:
            checkpoint(epoch_start_rng)
            say(f"time budget of {config.time_budget:g} s reached in epoch {epoch}, step {position.epoch_step}; "
                f"--resume continues from there")
            break
        position.epoch, position.epoch_step = epoch, 0
        metrics = _epoch_metrics(model, config, grid, epoch_test, epoch_test_log_p, device, figure, run, epoch)
        metrics.update(epoch=epoch, step=position.step, **stats.epoch_means(), log_z=model.log_z.item(),
                       learns_log_z=estimator.learns_log_z, train_seconds=clock.seconds)
        stats = StepStats()
        logger.log(**metrics)
        checkpoint(epoch_start_rng)
        say(_summary(metrics, config.epochs))

    final = density_metrics(model.eval().log_prob, Grid(grid.bound, 2 * config.resolution), test, test_log_p, device)
    metrics = {**metrics, **final, "epoch": position.epoch + (position.epoch_step > 0), "final": True,
               "partial": position.epoch_step > 0, "train_seconds": clock.seconds}
    logger.log(**metrics)
    kl = f", KL {final['kl']:.4f} ± {final['kl_stderr']:.4f}" if "kl" in final else ""
    say(f"final ({len(test)} test points, {2 * config.resolution}² grid): normaliser error "
        f"{final['normaliser_error']:.4f}, mass outside the box {final['mass_outside']:.2g}, "
        f"test NLL {final['test_nll']:.4f}{kl}")
    return metrics


def _epoch_metrics(model: EnergyMLP, config: EnergyConfig, grid: Grid, test: torch.Tensor,
                   test_log_p: torch.Tensor | None, device: torch.device, figure: DensityFigure | None,
                   run: RunFolder, epoch: int) -> dict[str, Any]:
    """Grid-normalised metrics on the epoch's test points, and the epoch's frame; with their timings."""
    clock = TrainingClock(None)
    clock.run()
    model.eval()
    image = grid_log_prob(model.log_prob, grid, device)
    metrics = density_metrics(model.log_prob, grid, test, test_log_p, device, box_values=image)
    metrics["eval_seconds"] = clock.seconds
    if figure is not None:
        started = clock.seconds
        log_z = metrics["log_normaliser"] if metrics["mass_converged"] else metrics["log_normaliser_box"]
        text = f"epoch {epoch}" + (f", KL {metrics['kl']:.3f} nats" if "kl" in metrics else "")
        figure.save(image - log_z, run.frame_path(epoch), text)
        metrics["plot_seconds"] = clock.seconds - started
    return metrics


def _title(config: EnergyConfig) -> str:
    ratio = f" ν={config.noise_ratio:g}" if config.estimator in (*NOISE_CONTRASTIVE, "fce", "cnce") else ""
    return f"{config.dataset}, {config.estimator}{ratio}, noise {config.noise}"


def _summary(m: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracy, normaliser error (if log Z is learned), NLL, KL, timings."""
    loss = f"  loss {m['loss']:.4f}" if "loss" in m else ""
    accuracy = f"  acc {m['accuracy']:.3f}" if "accuracy" in m else ""
    kl = f" KL {m['kl']:.4f}" if "kl" in m else ""
    log_z = f"|log Z| {m['normaliser_error']:.4f}" if m["learns_log_z"] else "log Z free"
    return (f"epoch {m['epoch']:>3}/{epochs}{loss}{accuracy}  {log_z}  NLL {m['test_nll']:.4f}{kl}  "
            f"train {m['train_seconds']:.1f}s eval {m['eval_seconds']:.2f}s")


def load_model(path: str | os.PathLike, device: str = "cpu") -> EnergyMLP:
    """The trained model of a run folder or checkpoint file, in eval mode on ``device`` ("auto" allowed).

    ``model.log_prob(x)`` maps float32 (N, 2) to (N,), including the learned log_z.
    """
    state = load_checkpoint(checkpoint_path(path))
    config = from_dict(EnergyConfig, state["config"])
    model = build_model(config, empty_noise(config.noise, config.noise_components))
    model.load_state_dict(state["model"])
    return model.to(get_device(device)).eval()


__all__ = ["BASE_CHOICES", "EnergyConfig", "build_model", "cosine_lr", "load_model", "train_energy", "train_step"]
