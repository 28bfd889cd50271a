"""What both training loops share while they run: position, clock, divergence rule, progress bars, summaries.

* ``Position``: completed epochs and the steps already taken in the unfinished one, so a run stopped by its
  time budget mid-epoch resumes mid-epoch (the partial epoch is never counted as finished).
* ``TrainingClock``: training seconds across pauses (evaluation excluded) and resumptions, and the budget.
* ``DivergenceGuard``: the one divergence rule. A loss diverges when it is not finite, or when it is finite
  but exploded: |loss| > 10⁴·(|first loss| + 1). The second clause makes the rule independent of where a
  CPU's arithmetic happens to overflow (an lr of 1e30 gives inf on one machine and 1e35 on another).
* ``StepStats``: per-step statistics summed on the device and read back in one synchronisation every few
  steps (the loss the divergence rule checks, the classifier's accuracy, …), and their epoch means.
* ``progress_bar``: tqdm on a terminal; silent when stderr is not one (CI logs, redirected runs), where the
  per-epoch summary lines are the record.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

EXPLOSION_FACTOR = 1e4


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite or exploded; the message says what the run folder keeps."""


@dataclass
class Position:
    """Where a run is: ``epoch`` epochs completed, ``epoch_step`` steps done in epoch ``epoch + 1``."""

    epoch: int = 0
    epoch_step: int = 0
    step: int = 0  # optimiser steps in all

    def state_dict(self) -> dict[str, int]:
        return asdict(self)


def _now() -> float:
    return time.perf_counter()


class TrainingClock:
    """Seconds of training, paused during evaluation and carried across resumptions, against a budget.

    Args:
        budget: seconds allowed in all (None: no limit).
        spent: seconds already spent before this process (from the checkpoint).
    """

    def __init__(self, budget: float | None, spent: float = 0.0):
        self.budget = budget
        self.spent = spent
        self._since: float | None = None

    def run(self) -> None:
        if self._since is None:
            self._since = _now()

    def pause(self) -> None:
        if self._since is not None:
            self.spent += _now() - self._since
            self._since = None

    @property
    def seconds(self) -> float:
        return self.spent + (_now() - self._since if self._since is not None else 0.0)

    def out_of_time(self) -> bool:
        return self.budget is not None and self.seconds >= self.budget


class DivergenceGuard:
    """Stops a run whose loss is not finite or has exploded past 10⁴·(|first loss| + 1).

    ``check`` is called with the mean loss of the last few steps (so the device is synchronised only then).
    The first finite loss becomes the reference; it is saved in checkpoints so a resumed run judges alike.
    """

    def __init__(self, reference: float | None = None, factor: float = EXPLOSION_FACTOR):
        self.reference = reference
        self.factor = factor

    def check(self, loss: float, where: str, keeps: str) -> None:
        """Raise ``TrainingDiverged`` naming ``where`` and what the run keeps (``keeps``) if ``loss`` diverged."""
        if self.reference is None and math.isfinite(loss):
            self.reference = abs(loss)
        limit = self.factor * ((self.reference or 0.0) + 1)
        if not math.isfinite(loss) or abs(loss) > limit:
            reason = "is not finite" if not math.isfinite(loss) else f"exploded past {limit:.3g}"
            raise TrainingDiverged(f"the training loss {reason} ({loss:.4g}) {where}; {keeps}. "
                                   f"Lower --lr or check the data.")

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference}


class StepStats:
    """Statistics of training steps: ``add`` detached device scalars each step (a statistic may skip steps, e.g.
    the loss of an FCE flow step); ``flush`` reads the sums since the last flush in one device synchronisation
    and returns their means; ``epoch_means`` gives the means over the epoch so far.

    ``totals`` (plain floats) go into a mid-epoch checkpoint, so a resumed epoch reports the same means.
    """

    def __init__(self, totals: dict[str, list[float]] | None = None):
        self.totals: dict[str, list[float]] = dict(totals or {})  # name → [sum, steps] over the epoch
        self._pending: dict[str, list] = {}  # name → [summed tensor, steps] since the last flush

    def add(self, stats: dict[str, Tensor]) -> None:
        for name, value in stats.items():
            total, count = self._pending.get(name, (0.0, 0))
            self._pending[name] = [total + value, count + 1]

    @property
    def pending_steps(self) -> int:
        """Steps since the last flush (of the statistic seen most often)."""
        return max((count for _, count in self._pending.values()), default=0)

    def flush(self, reduce: Callable[[Tensor], Tensor] = lambda sums: sums) -> dict[str, float]:
        """Means since the last flush; ``reduce`` acts on the stacked sums first (e.g. a mean over ranks)."""
        if not self._pending:
            return {}
        names = list(self._pending)
        sums = torch.stack([torch.as_tensor(self._pending[n][0]).float() for n in names])
        counts = [self._pending[n][1] for n in names]
        means = (reduce(sums).cpu() / torch.tensor(counts)).tolist()  # the one synchronisation
        for name, mean, count in zip(names, means, counts, strict=True):
            total, steps = self.totals.get(name, (0.0, 0))
            self.totals[name] = [total + mean * count, steps + count]
        self._pending = {}
        return dict(zip(names, means, strict=True))

    def epoch_means(self) -> dict[str, float]:
        return {name: total / steps for name, (total, steps) in self.totals.items()}


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A tqdm bar over ``iterable``, shown only when ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def say(line: str) -> None:
    """One summary line on stdout, flushed (logs of redirected runs stay in order)."""
    print(line, flush=True)


__all__ = ["DivergenceGuard", "Position", "StepStats", "TrainingClock", "TrainingDiverged", "progress_bar", "say"]
