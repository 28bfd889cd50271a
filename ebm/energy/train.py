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
from dataclasses import asdict
from typing import Any

import torch

from ebm.data.toy import EXACT_DATASETS, log_prob, sample
from ebm.energy.chasm import chasm_warning
from ebm.energy.config import EnergyConfig
from ebm.energy.estimators import Estimator, empty_estimator, estimator_class, make_estimator
from ebm.energy.evaluate import Grid, density_metrics, grid_log_prob
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import empty_noise, make_noise
from ebm.energy.plot import DensityFigure
from ebm.harness import (
    DivergenceGuard,
    Position,
    RunFolder,
    StepStats,
    TrainingClock,
    checkpoint_path,
    from_dict,
    progress_bar,
    say,
    set_threads,
)
from ebm.utils import get_device, get_rng_state, load_checkpoint, seed_everything, set_rng_state

EPOCH_EVAL_POINTS = 10_000  # test points scored each epoch; the paired KL estimate's error is then ≈ 0.003


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
            if estimator_class(config.estimator).contrasts_noise else None
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
    ratio = f" ν={config.noise_ratio:g}" if estimator_class(config.estimator).uses_noise_ratio else ""
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


__all__ = ["EnergyConfig", "build_model", "cosine_lr", "load_model", "train_energy", "train_step"]
