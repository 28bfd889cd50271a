"""Choosing the compute device."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def get_device(name: str = "auto") -> torch.device:
    """Return the device called ``name``: "auto" tries cuda, then mps, then cpu.

    An explicit choice ("cuda", "cuda:1", "mps", "cpu") is honoured, and an unavailable one is an error
    rather than a silent fallback.
    """
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use --device auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use --device auto or cpu")
    return torch.device(name)
