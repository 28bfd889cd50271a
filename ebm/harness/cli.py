"""The command line of a training run, the same for both settings.

    status 0   the run finished (its summary is the last line on stdout)
    status 2   the command line is wrong: an unknown option or choice, a bad number, a device that is not
               there, a resume whose settings differ from the checkpoint's (nothing was started or written)
    status 1   the run could not go on: a missing corpus or checkpoint, an unreadable checkpoint, a diverged
               loss (the message says what the run folder keeps)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ebm.harness.config import RUN_FIELDS, build_parser
from ebm.harness.loop import TrainingDiverged
from ebm.utils.checkpoint import CheckpointError
from ebm.utils.device import get_device


def run_cli(
    config_cls: type,
    train: Callable[[Any], dict[str, Any]],
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """Parse ``argv`` into ``config_cls``, run ``train(config)`` and print ``summary(result)``; the exit status."""
    parser = build_parser(config_cls, prog, description, RUN_FIELDS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    try:
        config = config_cls(**vars(args))
        get_device(config.device)  # an unavailable device is bad input: refuse before any work
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        result = train(config)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError, TrainingDiverged) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(summary(result), flush=True)
    return 0


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch's intra-op work (None: leave torch's choice)."""
    if threads is not None:
        torch.set_num_threads(threads)


__all__ = ["run_cli", "set_threads"]
