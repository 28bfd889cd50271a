"""The one training loop of both settings: ``fit(task, config, context)``.

A setting is a ``Task``: it builds its model from a config (or a checkpoint), yields an epoch's batches, takes
one step, evaluates at an epoch's end, and scores the trained model at the end. Everything else — resume and
RNG restore, the position in the run, the training clock and its budget, the divergence rule, step statistics,
mid-epoch resumption, per-epoch logging, checkpoints, the final record — happens here, once:

    state = resume ? checkpoint : None          seeds; data and noise generators (seed, seed + 1)
    task.setup(state, data_generator)           model, optimiser, … (from the checkpoint when resuming)
    for each epoch:                              its batches drawn from the data generator
        for each batch:  lr ← task.schedule(progress);  stats += task.step(batch, noise_generator)
                         every log_interval steps: the divergence rule, the progress bar, the time budget
        task.evaluate(epoch)  → metrics.jsonl, a summary line, an atomic checkpoint
    task.finish(...)  → the final record ("final": true)

A run stopped by its time budget checkpoints where it stopped (mid-epoch) and ``--resume`` continues exactly
from there; its final record says ``"partial": true`` whenever fewer than ``epochs`` epochs were completed.

Several processes (torchrun): the context (``ebm.harness.context``) answers ``is_main``, ``any``, ``mean``,
``barrier`` and ``run``; in one process they cost nothing, so the loop never asks which setting it runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ebm.harness.config import RunConfig
from ebm.harness.loop import DivergenceGuard, Position, StepStats, TrainingClock, progress_bar, say
from ebm.harness.run import RunFolder
from ebm.harness.tensorboard import ScalarWriter
from ebm.utils import get_rng_state, seed_everything, set_rng_state
from ebm.utils.metrics import MetricsLogger

if TYPE_CHECKING:
    from ebm.harness.context import DistributedContext


class Task(Protocol):
    """What a setting supplies to ``fit`` (``ebm.energy.task.EnergyTask``, ``ebm.lm.task.LMTask``).

    ``schedule_by_time``: with a time budget, the learning-rate schedule follows the share of the budget spent
    (else the share of all steps).
    """

    schedule_by_time: bool

    def run_folder(self) -> RunFolder: ...

    def setup(self, state: dict[str, Any] | None, data_generator: torch.Generator) -> list[str]:
        """Build the model, optimiser, … fresh or from ``state``; returns lines that introduce the run."""

    def steps_per_epoch(self) -> int: ...

    def batches(self, data_generator: torch.Generator) -> Iterable[Any]:
        """One epoch's batches, drawn from ``data_generator``."""

    def schedule(self, progress: float) -> None:
        """Set the learning rate for ``progress`` ∈ [0, 1] of the run."""

    def step(self, batch: Any, noise_generator: torch.Generator, position: Position) -> dict[str, torch.Tensor]:
        """One optimiser step; detached statistics on the device (``loss`` for the divergence rule)."""

    def evaluate(self, epoch: int, stats: dict[str, float], seconds: float) -> dict[str, Any]:
        """Metrics at the end of epoch ``epoch`` (and its frame); ``stats`` are the epoch's step means."""

    def describe(self, metrics: dict[str, Any]) -> str:
        """The summary line of an epoch's metrics."""

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint must hold of the task (a collective under torchrun: every rank calls it)."""

    def finish(self, last: dict[str, Any], completed: bool, seconds: float) -> dict[str, Any]:
        """The final metrics (test scores, …); ``last``: the last epoch's metrics; ``completed``: no step was
        taken after the last epoch's end; ``seconds``: of training in all."""


def _no_report(_: str) -> None:
    pass


class _Run:
    """Where a run is and what it carries across steps, epochs and resumptions."""

    def __init__(self, task: Task, config: RunConfig, context: DistributedContext):
        self.task, self.config, self.context = task, config, context
        self.folder = task.run_folder()
        self.state = self.folder.load_for_resume(config) if config.resume else None
        seed_everything(config.seed)
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        self.introduction = task.setup(self.state, self.data_gen)
        self.position, self.guard = Position(), DivergenceGuard()
        self.clock, self.wall = TrainingClock(config.time_budget), TrainingClock(None)  # wall: evaluation included
        self.metrics: dict[str, Any] = {}  # the last epoch's
        state, mid_epoch = self.state, self.state is not None and self.state["position"]["epoch_step"] > 0
        if state is not None:
            set_rng_state(state["rng"], self.data_gen, self.noise_gen)
            self.position, self.guard = Position(**state["position"]), DivergenceGuard(**state["guard"])
            self.metrics, self.clock.spent, self.wall.spent = state["metrics"], state["train_seconds"], state["elapsed"]
        self.stats = StepStats(state["stats"] if mid_epoch else None)
        self.epoch_seconds = state["epoch_seconds"] if mid_epoch else 0.0  # training seconds of the epoch so far
        self.epoch_rng = state["epoch_rng"] if state is not None else self.data_gen.get_state()
        self.steps = task.steps_per_epoch()
        self.by_time = config.time_budget is not None and task.schedule_by_time
        self.each_step = context.world_size == 1  # one process reads its clock every step; ranks at checks only

    def progress(self) -> float:
        """The share of the run done: of the time budget (the ranks' mean clock: a collective), or of the steps."""
        if self.by_time:
            return self.context.mean(torch.tensor(self.clock.seconds)).item() / self.config.time_budget
        return self.position.step / (self.config.epochs * self.steps)

    def checkpoint(self, epoch_rng: torch.Tensor) -> None:
        self.epoch_rng = epoch_rng
        task_state = self.task.state_dict()  # every rank: it may gather
        if self.context.is_main:
            self.folder.save({**task_state, "config": self.config.as_dict(), "position": self.position.state_dict(),
                              "guard": self.guard.state_dict(), "train_seconds": self.clock.seconds,
                              "elapsed": self.wall.seconds, "metrics": self.metrics, "stats": self.stats.totals,
                              "epoch_seconds": self.epoch_seconds, "epoch_rng": epoch_rng,
                              "rng": get_rng_state(self.data_gen, self.noise_gen)})

    def train_epoch(self, logger: MetricsLogger | None, writer: ScalarWriter, report: Callable[[str], None]) -> bool:
        """Steps until the epoch ends or the budget is spent; True when the budget stopped it."""
        task, config, context, position = self.task, self.config, self.context, self.position
        epoch = position.epoch + 1
        if position.epoch_step:  # resuming mid-epoch: the epoch's batches again, from where it stopped
            self.data_gen.set_state(self.state["epoch_rng"])
        epoch_rng = self.data_gen.get_state()
        batches = task.batches(self.data_gen)
        self.clock.run()
        started, stopped = self.clock.seconds - self.epoch_seconds, False
        bar = progress_bar(itertools.islice(batches, position.epoch_step, None), self.steps, f"epoch {epoch}",
                           config.progress and context.is_main, initial=position.epoch_step)
        for i, batch in enumerate(bar, start=position.epoch_step):
            if self.each_step or not self.by_time:
                task.schedule(self.progress())
            self.stats.add(context.run("training step", lambda b=batch: task.step(b, self.noise_gen, position)))
            position.step, position.epoch_step = position.step + 1, i + 1
            at_check = self.stats.pending_steps == config.log_interval or i + 1 == self.steps
            if self.each_step or at_check:
                stopped = context.any(self.clock.out_of_time())
            if at_check or stopped:
                first = i + 2 - self.stats.pending_steps
                means = self.stats.flush(reduce=context.mean)  # the only device synchronisation
                if "loss" in means:
                    self.guard.check(means["loss"], f"in epoch {epoch}, steps {first}–{i + 1} of {self.steps}",
                                     self.folder.describe_checkpoint())
                bar.set_postfix({n: f"{m:.4f}" for n, m in means.items() if n in ("loss", "accuracy")})
                writer.add(means, position.step, "train")
                if not self.each_step and self.by_time:
                    task.schedule(self.progress())
            if stopped:
                break
        bar.close()
        self.clock.pause()
        self.epoch_seconds = self.clock.seconds - started
        if position.epoch_step < self.steps:  # stopped mid-epoch: checkpoint where it stopped
            self.checkpoint(epoch_rng)
            return True
        position.epoch, position.epoch_step = epoch, 0
        task.schedule(self.progress())  # the rate after the epoch's last step, which its metrics report
        self.metrics = {"epoch": epoch, "step": position.step,
                        **task.evaluate(epoch, self.stats.epoch_means(), self.epoch_seconds),
                        "train_seconds": self.clock.seconds, "elapsed": self.wall.seconds}
        if logger is not None:
            logger.log(**self.metrics)
        writer.add(self.metrics, position.step, "epoch")
        report(task.describe(self.metrics))
        self.stats, self.epoch_seconds = StepStats(), 0.0
        self.checkpoint(epoch_rng)
        return stopped


def fit(task: Task, config: RunConfig, context: DistributedContext) -> dict[str, Any]:
    """Train ``task`` as ``config`` says (or resume it), then finish; returns the final metrics.

    The returned dict is the final line of ``metrics.jsonl`` plus ``epochs`` (completed) and ``out`` (the
    run folder). Raises what ``task`` raises, ``CheckpointError`` for a resume without a readable checkpoint,
    ``TrainingDiverged`` for a diverged loss (the last good checkpoint is kept; a fresh run's predecessor is
    put back when the new run fails before its first checkpoint).
    """
    run = _Run(task, config, context)
    context.barrier()  # every rank has read the checkpoint before rank 0 writes
    main, position = context.is_main, run.position
    report = say if main else _no_report
    logger = run.folder.start(config, position.epoch if run.state is not None else None) if main else None
    writer = ScalarWriter(run.folder.path if main and config.tensorboard else None)
    for line in run.introduction:
        report(line)
    task.schedule(run.progress())
    run.wall.run()
    stopped = context.any(run.clock.out_of_time())  # a resumed run whose budget is spent only finishes
    try:
        while position.epoch < config.epochs and not stopped:
            stopped = run.train_epoch(logger, writer, report)
    except BaseException:
        if main:
            run.folder.abandon()  # a fresh run that dies before its first checkpoint gives the folder back
        raise
    partial = position.epoch < config.epochs
    if partial:
        report(f"time budget of {config.time_budget:g} s reached in epoch {position.epoch + 1}, step "
               f"{position.epoch_step} of {run.steps}; --resume continues from there")
    # finish may change the model (the LM's norm calibration): the checkpoint is written again after it
    final = {**task.finish(run.metrics, position.epoch_step == 0, run.clock.seconds),
             "epoch": position.epoch + (position.epoch_step > 0), "final": True, "partial": partial,
             "steps": position.step, "train_seconds": run.clock.seconds, "elapsed": run.wall.seconds}
    run.checkpoint(run.epoch_rng)  # the saved model is the one the final metrics describe
    if main:
        logger.log(**final)
    report(task.describe(final))
    writer.close()
    return {**final, "epochs": position.epoch, "out": str(run.folder.path)}


__all__ = ["Task", "fit"]
