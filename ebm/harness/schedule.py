"""The learning rate over a run, as pure functions of where the run is (the one schedule of both settings).

* ``scheduled_lr``: linear warm-up, then cosine or linear decay over the run's progress (a fraction of its
  steps or of its time budget), or constant ("plateau");
* ``plateau_lr``: the learning rate multiplied by a factor whenever the validation metric does not improve;
* ``set_lr``: write a learning rate into an optimiser's parameter groups.

The 2D model uses a cosine from the peak to 0 over all steps (``scheduled_lr(lr, step / steps, "cosine")``); the
language model adds a hold at the peak, warm-up, a final fraction and the plateau rule (``LMConfig``).
"""

from __future__ import annotations

import math
from typing import Any

SCHEDULES = ("plateau", "cosine", "linear")


def set_lr(optimizer: Any, lr: float) -> None:
    """Set ``lr`` in every parameter group of ``optimizer`` (a torch optimiser or ``SplitOptimizer``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def scheduled_lr(
    base_lr: float, progress: float, schedule: str, warmup: float = 0.0, hold: float = 0.0, final: float = 0.0
) -> float:
    """The learning rate at ``progress`` ∈ [0, 1] of a run (the fraction of its steps, or of its time budget).

    Warm-up: base_lr · progress / warmup while progress < warmup; then base_lr until progress reaches ``hold``.
    After that, with start = max(warmup, hold) and x = (progress − start) / (1 − start) ∈ [0, 1]:

        cosine   base_lr · (final + (1 − final) · ½ (1 + cos πx))     (Loshchilov & Hutter 2017)
        linear   base_lr · (final + (1 − final) · (1 − x))
        plateau  base_lr (changed between epochs by ``plateau_lr`` instead)

    ``final`` is the last learning rate as a fraction of ``base_lr``. Progress beyond 1 counts as 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not (0 <= warmup < 1 and 0 <= hold < 1 and 0 <= final <= 1):
        raise ValueError(f"warmup and hold must be in [0, 1) and final in [0, 1], got {warmup}, {hold} and {final}")
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return base_lr * progress / warmup
    start = max(warmup, hold)
    if schedule == "plateau" or progress <= start:
        return base_lr
    x = (progress - start) / (1 - start)
    shape = 0.5 * (1 + math.cos(math.pi * x)) if schedule == "cosine" else 1 - x
    return base_lr * (final + (1 - final) * shape)


def plateau_lr(lr: float, best: float, metric: float, factor: float) -> tuple[float, float]:
    """(learning rate, best metric) after an evaluation: lr · factor when ``metric`` is not below ``best``
    (a plateau), else lr unchanged and ``metric`` the new best."""
    if metric < best:
        return lr, metric
    return lr * factor, best


__all__ = ["SCHEDULES", "plateau_lr", "scheduled_lr", "set_lr"]
