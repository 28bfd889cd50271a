"""The one set of value checks: config hooks and the checks of constructors called from Python.

Config hooks, ``check(name, value) -> None`` (``ebm.harness.option(..., check=positive)``; the config has checked
the type already): ``positive``, ``non_negative``, ``fraction`` [0, 1), ``unit_interval`` [0, 1], ``seed_value``,
``device_name``. Checks that also check the type and return the value (estimators, layers, batching):
``positive_int``, ``positive_float``, ``whole_number``, ``probability``. Each raises a ValueError naming the value.
"""

from __future__ import annotations

import math
import re
from typing import Any


def positive(name: str, value: Any) -> None:
    """A number > 0 (finite)."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")


def non_negative(name: str, value: Any) -> None:
    """A finite number ≥ 0."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def fraction(name: str, value: Any) -> None:
    """A probability-like value in [0, 1)."""
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def unit_interval(name: str, value: Any) -> None:
    """A value in [0, 1]."""
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def seed_value(name: str, value: Any) -> None:
    """An integer seed NumPy and scikit-learn accept as well as torch: 0 ≤ seed < 2³²."""
    if not 0 <= value < 2**32:
        raise ValueError(f"{name} must be in [0, 2**32), got {value!r}")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(name: str, value: Any) -> None:
    """auto, cpu, mps, cuda or cuda:N (availability is checked when the run starts)."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"{name} must be one of auto, cpu, cuda, cuda:N, mps; got {value!r}")


def positive_int(name: str, value: object) -> int:
    """An integer ≥ 1 (not a bool), returned as is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def positive_float(name: str, value: object) -> float:
    """A finite number > 0 (not a bool), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    positive(name, value)
    return float(value)


def whole_number(name: str, value: object) -> int:
    """A positive number that is whole (4.0 is accepted as 4), returned as an int."""
    if float(positive_float(name, value)) != round(float(value)):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return round(float(value))


def probability(name: str, value: object, *, open_low: bool = False, open_high: bool = False) -> float:
    """A number in [0, 1], or (0, 1] / [0, 1) / (0, 1) with ``open_low`` / ``open_high``, returned as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if value < 0 or value > 1 or (open_low and value == 0) or (open_high and value == 1):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


__all__ = ["device_name", "fraction", "non_negative", "positive", "positive_float", "positive_int", "probability",
           "seed_value", "unit_interval", "whole_number"]
