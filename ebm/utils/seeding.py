"""Seeding and capturing random-number-generator state for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every global RNG state plus the states of ``generators``, as tensors and plain Python values.

    The result loads with ``torch.load(..., weights_only=True)``.
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Restore what ``get_rng_state`` captured, including the given generators (same order)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if len(state["generators"]) != len(generators):
        raise ValueError(
            f"checkpoint holds {len(state['generators'])} generator states, {len(generators)} were given"
        )
    for generator, generator_state in zip(generators, state["generators"], strict=True):
        generator.set_state(generator_state)


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples, recursively (Python's random state must be made of tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value
