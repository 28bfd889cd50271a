"""The 2D energy model as a task of the harness's loop (``ebm.harness.trainer.fit``): what differs from the LM.

Each epoch draws ``samples`` fresh data points and takes one Adam step per batch on the loss of the chosen
estimator (``ebm.energy.estimators``: NCE by default, with ν·B noise points per batch of B), the learning rate
a cosine from ``lr`` to 0 over all steps. At the end of each epoch the model is normalised on a grid and scored
(``ebm.energy.evaluate``) and a frame is drawn; the final evaluation uses all ``eval_points`` test points and a
grid twice as fine.

All randomness comes from CPU generators (data, noise) and torch's global RNG (initialisation), so a seed
gives the same run on any device, and a run can be resumed on another device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ebm.data.toy import log_prob, sample
from ebm.energy.assess import ais_distributions, assess, exact_pair_metrics
from ebm.energy.chasm import chasm_warning
from ebm.energy.config import EnergyConfig
from ebm.energy.estimators import Estimator, empty_estimator, estimator_class, make_estimator
from ebm.energy.evaluate import Grid, density_metrics, grid_log_prob
from ebm.energy.evaluate_samples import sample_metrics
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import ais_start, empty_noise, make_noise
from ebm.energy.plot import DensityFigure
from ebm.energy.sampling import sample_cells
from ebm.harness import Position, RunFolder, TrainingClock
from ebm.harness.schedule import scheduled_lr, set_lr

EPOCH_EVAL_POINTS = 10_000  # test points scored each epoch; the paired KL estimate's error is then ≈ 0.003
FIT_POINTS = 10_000  # data points the noise (and fce's flow, mle's box) are fitted to


def build_energy(config: EnergyConfig, noise: torch.nn.Module) -> EnergyMLP:
    """The energy network of ``config`` on D = ``config.dims`` inputs, relative to ``noise`` when
    ``config.base == "noise"``; with ``config.energy == "pairs"`` a sum over the pair noise's pairs."""
    base = noise if config.base == "noise" else None
    basis = (noise.loc, noise.unmixing) if config.energy == "pairs" else None
    return EnergyMLP(config.width, config.depth, config.activation, base, dims=config.dims,
                     fourier_features=config.fourier_features, fourier_scale=config.fourier_scale, basis=basis)


def energy_step(model: EnergyMLP, estimator: Estimator, batch: torch.Tensor, optimizer: torch.optim.Optimizer,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One step of ``estimator`` on a batch (B, D): an Adam step on its loss, unless the estimator updated only
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


class EnergyTask:
    """A 2D (or D-dimensional) energy model trained by an estimator of ``ebm.energy.estimators``."""

    schedule_by_time = False  # the cosine spans all steps, also under a time budget

    def __init__(self, config: EnergyConfig, device: torch.device):
        self.config, self.device = config, device
        self.facts = estimator_class(config.estimator)

    def run_folder(self) -> RunFolder:
        return self.config.run_folder()

    def setup(self, state: dict[str, Any] | None, data_generator: torch.Generator) -> list[str]:
        config, device = self.config, self.device
        warning = None
        if state is None:
            fit_points = sample(config.dataset, FIT_POINTS, data_generator, dims=config.dims)
            noise = make_noise(config.noise, fit_points, config.noise_components, config.noise_widen, config.seed)
            estimator = make_estimator(config.estimator, config, noise, fit_points, config.seed)
            if self.facts.contrasts_noise:
                warning = chasm_warning(config.dataset, config.noise, fit_points, noise)
        else:
            noise = empty_noise(config.noise, config.noise_components, dims=config.dims)
            noise.load_state_dict(state["noise"])
            estimator = empty_estimator(config.estimator, config, noise)
        self.model = build_energy(config, noise).to(device)
        self.noise, self.estimator = noise.to(device), estimator.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        if state is not None:
            self.estimator.load_state_dict(state["estimator"])
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self._prepare_evaluation()
        return [f"warning: {warning}"] if warning else []

    def _prepare_evaluation(self) -> None:
        """Fixed test points from their own generator, their exact log-density, the grid and the figure (2D)."""
        config = self.config
        generator = torch.Generator().manual_seed(config.seed + 1_000_003)
        self.test = sample(config.dataset, config.eval_points, generator, dims=config.dims)
        self.test_log_p = log_prob(config.dataset, self.test)
        self.grid = Grid.covering(self.test, config.resolution) if config.dims == 2 else None
        self.frames = self.run_folder()
        self.figure = None
        if self.frames.frames is not None and self.grid is not None:
            q = getattr(self.estimator, "noise", self.noise)  # what the estimator draws from (fce: its flow)
            noise_image = grid_log_prob(q.log_prob, self.grid, self.device)
            self.figure = DensityFigure(self.grid, self.test[:20_000], noise_image, self._title(),
                                        samples=config.frame_samples > 0)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.config.samples / self.config.batch_size)

    def batches(self, data_generator: torch.Generator) -> list[torch.Tensor]:
        data = sample(self.config.dataset, self.config.samples, data_generator, dims=self.config.dims)
        return list(data.to(self.device).split(self.config.batch_size))

    def schedule(self, progress: float) -> None:
        set_lr(self.optimizer, scheduled_lr(self.config.lr, progress, "cosine"))

    def step(self, batch: torch.Tensor, noise_generator: torch.Generator, position: Position) -> dict[str, Any]:
        self.model.train()
        return energy_step(self.model, self.estimator, batch, self.optimizer, noise_generator)

    def evaluate(self, epoch: int, stats: dict[str, float], seconds: float) -> dict[str, Any]:
        """Grid-normalised metrics on the epoch's test points (beyond 2D: with the learned log Z), the epoch's
        frame, and their timings."""
        clock = TrainingClock(None)
        clock.run()
        self.model.eval()
        test, test_log_p = self.test[:EPOCH_EVAL_POINTS], self.test_log_p[:EPOCH_EVAL_POINTS]
        facts = {"log_z": self.model.log_z.item(), "learns_log_z": self.facts.learns_log_z}
        if self.grid is None:
            metrics = sample_metrics(self.model.log_prob, test, test_log_p, self.model.log_z.item(), None, self.device)
            metrics.update(exact_pair_metrics(self.model, test, metrics["kl"]))
            return {**metrics, "eval_seconds": clock.seconds, **stats, **facts}
        image = grid_log_prob(self.model.log_prob, self.grid, self.device)
        metrics = density_metrics(self.model.log_prob, self.grid, test, test_log_p, self.device, box_values=image)
        metrics["eval_seconds"] = clock.seconds
        if self.figure is not None:
            started = clock.seconds
            log_z = metrics["log_normaliser"] if metrics["mass_converged"] else metrics["log_normaliser_box"]
            text = f"epoch {epoch}, KL {metrics['kl']:.3f} nats"
            samples = None
            if self.config.frame_samples:  # exact draws from the grid values just computed; their own generator
                generator = torch.Generator().manual_seed(self.config.seed + 7_000_003 + epoch)
                samples = sample_cells(image, self.grid, self.config.frame_samples, generator)
            self.figure.save(image - log_z, self.frames.frame_path(epoch), text, samples)
            metrics["plot_seconds"] = clock.seconds - started
        return {**metrics, **stats, **facts}

    def describe(self, m: dict[str, Any]) -> str:
        """One line per epoch (loss, accuracy, normaliser error if log Z is learned, NLL, KL — exact in 2D and for
        a pair energy, else with the learned log Z —, timings), or the final evaluation's line."""
        bracket = (f", AIS log Z ∈ [{m['log_z_lower']:.4f}, {m['log_z_upper']:.4f}] (learned {m['log_z']:.4f})"
                   if "log_z_lower" in m else "")
        if m.get("final") and self.grid is not None:
            return (f"final ({len(self.test)} test points, {2 * self.config.resolution}² grid): normaliser error "
                    f"{m['normaliser_error']:.4f}, mass outside the box {m['mass_outside']:.2g}, test NLL "
                    f"{m['test_nll']:.4f}, KL {m['kl']:.4f} ± {m['kl_stderr']:.4f}{bracket}")
        exact = (f", exact KL {m['kl_exact']:.4f} ({m['kl_exact'] / (self.config.dims / 2):.4f} per copy; pair grids)"
                 if "kl_exact" in m else "")
        if m.get("final"):
            return (f"final ({len(self.test)} test points, D = {self.config.dims}): KL with the learned log Z "
                    f"{m['kl']:.4f} ± {m['kl_stderr']:.4f} ({m['kl_per_copy']:.4f} per 2D copy){exact}{bracket}")
        loss = f"  loss {m['loss']:.4f}" if "loss" in m else ""
        accuracy = f"  acc {m['accuracy']:.3f}" if "accuracy" in m else ""
        if "normaliser_error" not in m:
            log_z = f"log Z {m['log_z']:.3f}"
        else:
            log_z = f"|log Z| {m['normaliser_error']:.4f}" if m["learns_log_z"] else "log Z free"
        return (f"epoch {m['epoch']:>3}/{self.config.epochs}{loss}{accuracy}  {log_z}  NLL {m['test_nll']:.4f} "
                f"KL {m.get('kl_exact', m['kl']):.4f}  train {m['train_seconds']:.1f}s eval {m['eval_seconds']:.2f}s")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "noise": self.noise.state_dict(),
                "estimator": self.estimator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def finish(self, last: dict[str, Any], completed: bool, seconds: float) -> dict[str, Any]:
        """The last epoch's metrics with the evaluation redone on all test points (2D: on a grid twice as fine) and,
        where asked (by default beyond 2D), the AIS bracket on log Z (``ebm.energy.assess``; forward chains from
        the noise without its defensive component, ``ais_start``)."""
        config = self.config
        fine = Grid(self.grid.bound, 2 * config.resolution) if self.grid is not None else None
        distributions = ais_distributions(config.ais_distributions, config.dims)
        final = assess(self.model, self.noise, self.test, self.test_log_p, fine, distributions, config.ais_chains,
                       config.seed, ais_start(config.noise, self.noise))
        return {**last, **final}

    def _title(self) -> str:
        config = self.config
        ratio = f" ν={config.noise_ratio:g}" if self.facts.uses_noise_ratio else ""
        return f"{config.dataset}, {config.estimator}{ratio}, noise {config.noise}"


__all__ = ["EPOCH_EVAL_POINTS", "EnergyTask", "build_energy", "energy_step"]
