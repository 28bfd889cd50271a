"""One way of running both settings: configs, command lines, run folders, resume, progress, divergence.

    ebm.harness.config   configs as dataclasses (``option``, ``validate``, ``build_parser``, ``check_resumable``)
    ebm.harness.run      the run folder (config.json, metrics.jsonl, checkpoint.pt, frames/) and resume
    ebm.harness.loop     position in a run, training clock and budget, the divergence rule, progress bars
    ebm.harness.cli      the command line: parse, run, exit status

The 2D loop (``ebm.energy.train``) and the LM loop (``ebm.lm.train``) hold only what differs between them:
how a batch becomes a loss, and how a model is evaluated.
"""

from ebm.harness.cli import run_cli, set_threads
from ebm.harness.config import (
    RUN_FIELDS,
    RunConfig,
    build_parser,
    check_resumable,
    device_name,
    fraction,
    from_dict,
    non_negative,
    option,
    positive,
    unit_interval,
    validate,
)
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
