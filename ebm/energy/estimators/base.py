"""The one interface every estimator follows, and the checks their options share.

An estimator is an ``nn.Module`` (so ``.to(device)`` moves what it owns, and ``state_dict`` /
``load_state_dict`` carry it into checkpoints) with

    loss(model, data, generator) -> (loss or None, stats)

``model`` is anything with ``log_prob(x)``: (B, D) → (B,) (an ``EnergyMLP``); ``data`` (B, D) lives on the
training device (D ≥ 1: every estimator but mle, which integrates over a 2D grid, works in any D); every random
number is drawn on the CPU from ``generator`` (a CPU ``torch.Generator``, or torch's global one when None) and
then moved to the device. ``loss`` is a scalar for the caller to
backpropagate into the energy's parameters, or None when the call already updated only the estimator's own
parameters (a flow step of FCE) and the energy must not be stepped. ``stats`` maps names to detached scalar
tensors (no device sync; call ``.item()`` when logging).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ebm.protocols import LogDensityModel


class Estimator(nn.Module, ABC):
    """Base class: an objective for an energy model, chosen by ``name``.

    Each class carries its own facts, which the training loop reads instead of lists of names:

    ``name``: its ``--estimator`` name (the registry ``ebm.energy.estimators.ESTIMATORS`` maps names to classes).
    ``learns_log_z``: True when the objective fixes the model's ``log_z`` (NCE, eNCE, FCE); False when log Z
    cancels from it (its ``log_z`` gets no or zero gradient) and the density must be normalised on a grid
    for evaluation.
    ``contrasts_noise``: it classifies data against the ``--noise`` distribution (so the density chasm between
    data and noise matters, and a run warns about it).
    ``uses_noise_ratio``: it draws ν noise points per data point (``noise_ratio``).
    ``whole_ratio``: it needs a whole number of noise points per data point.
    ``plane_only``: it works in 2D only (it integrates on a grid).
    """

    name: ClassVar[str]
    learns_log_z: ClassVar[bool]
    contrasts_noise: ClassVar[bool] = False
    uses_noise_ratio: ClassVar[bool] = False
    whole_ratio: ClassVar[bool] = False
    plane_only: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        """The estimator for ``options`` (an ``EstimatorOptions``); with ``fit_points`` None, placeholders stand in
        for what is fitted to the data (filled by ``load_state_dict``)."""

    @classmethod
    def needs_fit_points(cls, options: Any) -> bool:
        """Whether ``build`` needs the data its parts are fitted to."""
        return False

    @abstractmethod
    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """The loss for one step on ``data`` (B, D), and detached statistics."""


def check_noise(name: str, noise: nn.Module | None) -> nn.Module:
    """The noise module an estimator samples from: ``sample(shape, generator)`` and ``log_prob(x)``."""
    if noise is None or not (hasattr(noise, "sample") and hasattr(noise, "log_prob")):
        raise ValueError(f"estimator {name!r} needs a noise module with sample(shape, generator) and log_prob(x)")
    return noise


def check_batch(data: Tensor, dims: int | None = None) -> None:
    """``data`` is a batch (B, D) with B ≥ 1 and D ≥ 1, and D = ``dims`` when given (the noise's dimension)."""
    if data.dim() != 2 or data.shape[1] < 1 or len(data) == 0:
        raise ValueError(f"data must have shape (B, D) with B ≥ 1 and D ≥ 1, got {tuple(data.shape)}")
    if dims is not None and data.shape[1] != dims:
        raise ValueError(f"data must have shape (B, {dims}) to match the noise's dimension, got {tuple(data.shape)}")


def noise_dims(name: str, noise: nn.Module) -> int:
    """D, the dimension of the points of the noise module an estimator draws from (its ``dims``)."""
    dims = getattr(noise, "dims", None)
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ValueError(f"estimator {name!r} needs a noise module with a positive integer dims, got {dims!r}")
    return dims


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """N(0, 1) numbers of ``shape`` drawn on the CPU from ``generator``, then moved to ``device``."""
    return torch.randn(shape, generator=generator).to(device)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) numbers of ``shape`` drawn on the CPU from ``generator``, then moved to ``device``."""
    return torch.rand(shape, generator=generator).to(device)
