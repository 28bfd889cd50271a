"""One way of running both settings: the training loop, configs, command lines, run folders, resume, progress.

    ebm.harness.trainer      the one training loop, ``fit(task, config, context)``; a setting is a ``Task``
    ebm.harness.config       configs as dataclasses (``option``, ``validate``, ``build_parser``, ``check_resumable``)
    ebm.harness.context      the process group (torchrun) or one process: the same questions, no branches
    ebm.harness.run          the run folder (config.json, metrics.jsonl, checkpoint.pt, frames/) and resume
    ebm.harness.loop         position in a run, training clock and budget, the divergence rule, progress bars
    ebm.harness.schedule     the learning-rate schedule of both settings
    ebm.harness.tensorboard  optional TensorBoard curves
    ebm.harness.cli          the command line: parse, run, exit status

The 2D model (``ebm.energy.task.EnergyTask``) and the language model (``ebm.lm.task.LMTask``) supply only what
differs between them: how a batch becomes a step, how a model is evaluated, what a checkpoint holds of it.
"""

from ebm.harness.cli import run_cli, set_threads
from ebm.harness.config import RUN_FIELDS, RunConfig, build_parser, check_resumable, from_dict, option, validate
from ebm.harness.loop import (
    DivergenceGuard,
    Position,
    StepStats,
    TrainingClock,
    TrainingDiverged,
    progress_bar,
    say,
)
from ebm.harness.run import RunFolder, checkpoint_path
from ebm.harness.trainer import Task, fit
from ebm.utils.checks import device_name, fraction, non_negative, positive, unit_interval

__all__ = [
    "RUN_FIELDS",
    "DivergenceGuard",
    "Position",
    "RunConfig",
    "RunFolder",
    "StepStats",
    "TrainingClock",
    "Task",
    "TrainingDiverged",
    "build_parser",
    "check_resumable",
    "checkpoint_path",
    "device_name",
    "fraction",
    "fit",
    "from_dict",
    "non_negative",
    "option",
    "positive",
    "progress_bar",
    "run_cli",
    "say",
    "set_threads",
    "unit_interval",
    "validate",
]
