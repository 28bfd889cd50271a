"""Toy distributions in 2D and in D dimensions: seeded samplers, and an exact log-density for every one of them.

One entry point, ``sample(name, n, generator, dims=2)``, over small registered functions; it returns exactly
``n`` finite float32 points of shape (n, D). In D = 2k dimensions a point is k independent draws y₁ … y_k of the
2D distribution, concatenated into y ∈ ℝᴰ and rotated by the fixed orthogonal matrix Q_D of ``rotation(D)``
(a Haar draw from its own seed; the identity at D = 2, so the 2D sets are exactly the 2D samplers'):

    x = Q_D·y,   log p(x) = Σ_j log p₂(y_j),   y = Q_Dᵀ·x   (|det Q_D| = 1)

The five reference definitions of the 2D distribution (z ~ N(0, I), U ~ U[0, 1]) are the
seed's (lifeitech/nce, from FFJORD's toy data):

    8gaussians    x = (0.5·z + 4·u_k)/√2, u_k the 8 unit vectors at multiples of 45°, k uniform
    2spirals      t = 3π√U; x = ±(−t·cos t + U₁/2, t·sin t + U₂/2)/3 + 0.1·z
    checkerboard  uniform (density 1/32) on the 8 squares of side 2 in [−4, 4]² with even cell parity
    rings         circles of radii 3, 2.25, 1.5, 0.75, equally many points at evenly spaced angles,
                  resampled with replacement, + N(0, 0.08²·I)
    pinwheel      arm c ~ U{0..4}; f ~ N((1, 0), diag(0.3², 0.1²)); a = 2πc/5 + 0.25·exp f₁;
                  x = 2·(f₁ cos a + f₂ sin a, −f₁ sin a + f₂ cos a): the row vector f times
                  [[cos a, −sin a], [sin a, cos a]], a rotation by −a (by +a would give the mirror image)

Three more come from scikit-learn's generators (``make_moons``, ``make_circles``, ``make_swiss_roll``), moved
into the same box. Of the three only moons is re-centred; circles is centred at the origin by construction,
and swissroll is not centred (its mean is (1/2, 1/(6π)) ≈ (0.5, 0.05) after scaling):

    moons         ⌊n/2⌋ points on the upper arc 2·(cos θ − ½, sin θ − ¼) and the rest on the lower arc
                  2·(½ − cos θ, ¼ − sin θ), θ evenly spaced on [0, π] (both ends included), + N(0, 0.1²·I)
    circles       ⌊n/2⌋ points on the circle of radius 3 and the rest on radius 1.5, angles evenly spaced
                  from 0, + N(0, 0.15²·I)
    swissroll     t ~ U[1.5π, 4.5π]; x = 0.25·(t·cos t, t·sin t) + N(0, 0.125²·I) (columns 0 and 2 of the roll)

``log_prob(name, x)`` evaluates the exact density of every one (see each ``_log_prob_*`` for how and how
accurately, in ``ebm.data.toy_density``). Where a sampler places points at evenly spaced parameters (rings,
moons, circles), the density is that of the continuous limit, a uniform parameter; ``_log_circles`` says how
small n may be.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn import datasets as skdatasets
from torch import Tensor

from ebm.data.toy_density import (
    CIRCLES_FACTOR,
    CIRCLES_NOISE,
    CIRCLES_SCALE,
    MOONS_NOISE,
    MOONS_SCALE,
    MOONS_SHIFT,
    PINWHEEL_ARMS,
    PINWHEEL_RATE,
    PINWHEEL_STD,
    PLANE_LOG_PROBS,
    RING_RADII,
    RING_STD,
    SWISSROLL_NOISE,
    SWISSROLL_SCALE,
)

Sampler = Callable[[int, torch.Generator], Tensor]

# ---------------------------------------------------------------------------------------------- samplers


def _sample_8gaussians(n: int, g: torch.Generator) -> Tensor:
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centres = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)  # (8, 2)
    k = torch.randint(8, (n,), generator=g)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return (0.5 * z + centres[k]) / math.sqrt(2)


def _sample_2spirals(n: int, g: torch.Generator) -> Tensor:
    t = 3 * math.pi * torch.rand(n, generator=g, dtype=torch.float64).sqrt()
    offset = 0.5 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    d = torch.stack([-t.cos() * t, t.sin() * t], dim=1) + offset  # (n, 2)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).to(torch.float64)
    return sign[:, None] * d / 3 + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)


# Just below a cell's upper edge lo + 2, lo + 2 − 2⁻²² is exactly a float32 in every cell (float32 spacing is
# 2⁻²² in [2, 4)), and never a subnormal (as the largest float32 below the edge 0 would be).
_CELL_TOP = 2 - 2**-22


def _sample_checkerboard(n: int, g: torch.Generator) -> Tensor:
    """x₁ = 4U − 2, x₂ = U' − 2B + (⌊x₁⌋ mod 2), x = 2·(x₁, x₂), returned in float32 inside its own cell.

    The cell (⌊x₁⌋, ⌊x₂⌋) is computed exactly in float64; the float32 point is then clamped into the
    half-open square [lo, lo + 2)², lo = 2·cell, that ``_log_prob_checkerboard`` uses, because rounding
    2·x₁ = 4 − 2⁻⁵⁰ to float32 gives 4.0: an edge outside the support, where log p = −inf. The clamp moves
    only such points, by at most one float32 spacing.
    """
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    b = torch.randint(2, (n,), generator=g, dtype=torch.float64)
    u2 = torch.rand(n, generator=g, dtype=torch.float64)
    col = x1.floor()  # in {−2, −1, 0, 1}
    cell = torch.stack([col, torch.remainder(col, 2) - 2 * b], dim=1)  # (n, 2), even parity
    x = (2 * (cell + torch.stack([x1 - col, u2], dim=1))).to(torch.float32)  # (n, 2)
    lo = (2 * cell).to(torch.float32)
    return torch.minimum(torch.maximum(x, lo), lo + _CELL_TOP)




def _sample_rings(n: int, g: torch.Generator) -> Tensor:
    counts = [n // 4 + (i < n % 4) for i in range(4)]  # equally many points per circle, exactly n in all
    circles = []
    for radius, count in zip(RING_RADII, counts, strict=True):
        angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / max(count, 1))
        circles.append(radius * torch.stack([angles.cos(), angles.sin()], dim=1))
    points = torch.cat(circles)[torch.randint(n, (n,), generator=g)]  # resampled with replacement
    return points + RING_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)




def _sample_pinwheel(n: int, g: torch.Generator) -> Tensor:
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(PINWHEEL_STD, dtype=torch.float64)
    f[:, 0] += 1
    arm = torch.randint(PINWHEEL_ARMS, (n,), generator=g)
    angle = 2 * math.pi * arm / PINWHEEL_ARMS + PINWHEEL_RATE * f[:, 0].exp()
    cos, sin = angle.cos(), angle.sin()
    # f (a row vector) times [[cos a, −sin a], [sin a, cos a]]: a rotation by −a, as the seed computes it.
    return 2 * torch.stack([f[:, 0] * cos + f[:, 1] * sin, -f[:, 0] * sin + f[:, 1] * cos], dim=1)




def _sklearn_sampler(make: Callable[[int, np.random.RandomState], np.ndarray], scale: float) -> Sampler:
    """Wrap a scikit-learn generator: seeded from ``g``, its points multiplied by ``scale`` to fit [−4, 4]²."""

    def sampler(n: int, g: torch.Generator) -> Tensor:
        state = np.random.RandomState(int(torch.randint(2**31 - 1, (1,), generator=g)))
        x = torch.from_numpy(make(n, state)).to(torch.float64)
        return scale * x

    return sampler


def _moons(n: int, rs: np.random.RandomState) -> np.ndarray:
    x = skdatasets.make_moons(n, noise=MOONS_NOISE, random_state=rs)[0]
    return x - np.array(MOONS_SHIFT)  # the moons' bounding box is centred at (0.5, 0.25)


def _circles(n: int, rs: np.random.RandomState) -> np.ndarray:
    return skdatasets.make_circles(n, factor=CIRCLES_FACTOR, noise=CIRCLES_NOISE, random_state=rs)[0]


def _swissroll(n: int, rs: np.random.RandomState) -> np.ndarray:
    return skdatasets.make_swiss_roll(n, noise=SWISSROLL_NOISE, random_state=rs)[0][:, [0, 2]]


_SAMPLERS: dict[str, Sampler] = {
    "8gaussians": _sample_8gaussians,
    "2spirals": _sample_2spirals,
    "checkerboard": _sample_checkerboard,
    "rings": _sample_rings,
    "pinwheel": _sample_pinwheel,
    "moons": _sklearn_sampler(_moons, MOONS_SCALE),
    "circles": _sklearn_sampler(_circles, CIRCLES_SCALE),
    "swissroll": _sklearn_sampler(_swissroll, SWISSROLL_SCALE),
}

TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)
"""Every toy dataset name, the five reference datasets first."""

REFERENCE_DATASETS: tuple[str, ...] = ("8gaussians", "2spirals", "checkerboard", "rings", "pinwheel")
"""The five reference datasets (the seed's: lifeitech/nce, from FFJORD's toy data)."""


def _check_name(name: str, choices: tuple[str, ...] | dict) -> None:
    if name not in choices:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(choices)}")


def _check_dims(dims: object) -> int:
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 2 or dims % 2:
        raise ValueError(f"dims must be an even integer ≥ 2, got {dims!r}")
    return dims


ROTATION_SEED = 20_240_601  # Q_D is drawn from a generator seeded with ROTATION_SEED + D


@functools.cache
def _rotation(dims: int) -> Tensor:
    g = torch.Generator().manual_seed(ROTATION_SEED + dims)
    q, r = torch.linalg.qr(torch.randn(dims, dims, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # column j times sign(R_jj): Haar-distributed (Mezzadri 2007)


def rotation(dims: int) -> Tensor:
    """The fixed orthogonal matrix Q_D (D, D) of the D-dimensional sets, float64: x = Q_D·y, y the 2D copies.

    The identity at D = 2; for D > 2 the QR factor of a Gaussian matrix drawn from its own seed (ROTATION_SEED
    + D), its columns' signs set by R's diagonal so that it is a Haar draw from O(D). The same on every call.
    """
    return torch.eye(2, dtype=torch.float64) if _check_dims(dims) == 2 else _rotation(dims).clone()


def _inset_cells(y: Tensor, dims: int) -> Tensor:
    """Checkerboard pairs (n, k, 2) moved up to 8·D·2⁻²⁴ into their squares, before the rotation to D dimensions.

    The float32 rounding of x = Q·y moves each coordinate by at most 2⁻²⁴·‖y‖ ≤ 2⁻²⁴·4√D, so the un-rotated
    Qᵀ·x by at most 4·D·2⁻²⁴ (≈ 8e-6 at D = 32): half this margin. Without it a point at an edge could come
    back outside its square, where log p = −inf. The density moved is that within the margin of an edge.
    """
    margin = 8 * dims * 2**-24
    lo = 2 * torch.floor(y / 2)
    return torch.clamp(y, lo + margin, lo + 2 - margin)


_ROTATION_GUARDS: dict[str, Callable[[Tensor, int], Tensor]] = {"checkerboard": _inset_cells}


def sample(name: str, n: int, generator: torch.Generator | None = None, dims: int = 2) -> Tensor:
    """Draw exactly ``n`` points of the toy distribution ``name`` in ``dims`` dimensions: float32 (n, D), finite.

    D = 2 is the 2D sampler itself. For D = 2k > 2, k independent copies (k calls of the 2D sampler with n
    points each, in turn from ``generator``) are concatenated, y (n, D), and rotated: x = y·Q_Dᵀ (``rotation``).
    The same generator state gives the same points. Without a generator, torch's global one is used.
    """
    _check_name(name, _SAMPLERS)
    _check_dims(dims)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if n == 0:
        return torch.zeros(0, dims)
    g = generator if generator is not None else torch.default_generator
    if dims == 2:
        return _SAMPLERS[name](n, g).to(torch.float32).reshape(n, 2)
    y = torch.stack([_SAMPLERS[name](n, g).to(torch.float64) for _ in range(dims // 2)], dim=1)  # (n, k, 2)
    if name in _ROTATION_GUARDS:
        y = _ROTATION_GUARDS[name](y, dims)
    return (y.reshape(n, dims) @ _rotation(dims).T).to(torch.float32)  # (n, D)


EXACT_DATASETS: tuple[str, ...] = tuple(PLANE_LOG_PROBS)
"""The datasets with an exact ``log_prob``: all of TOY_DATASETS, in the same order."""


def log_prob(name: str, x: Tensor) -> Tensor:
    """Exact log-density of the toy distribution ``name`` at x: (N, D) → (N,), computed in float64 on the CPU.

    D (even) is read from x. For D > 2: y = x·Q_D (the un-rotated points, (N, D) → (N, D/2, 2) pairs) and
    log p(x) = Σ_j log p₂(y_j), |det Q_D| = 1. Points outside the support (checkerboard), or so far from the data
    that the density is negligible (see each ``_log_prob_*``), get −inf. Returns float64.
    """
    _check_name(name, PLANE_LOG_PROBS)
    if x.dim() != 2 or x.shape[1] < 2 or x.shape[1] % 2:
        raise ValueError(f"x must have shape (N, D) with D even and ≥ 2, got {tuple(x.shape)}")
    n, dims = x.shape
    if n == 0:  # torch.distributions cannot validate an empty batch
        return torch.zeros(0, dtype=torch.float64)
    x = x.detach().to("cpu", torch.float64)
    if dims == 2:
        return PLANE_LOG_PROBS[name](x)
    pairs = (x @ _rotation(dims)).reshape(n * dims // 2, 2)  # (N·D/2, 2): y = Qᵀx, row by row
    return PLANE_LOG_PROBS[name](pairs).reshape(n, dims // 2).sum(dim=1)


__all__ = ["EXACT_DATASETS", "REFERENCE_DATASETS", "TOY_DATASETS", "log_prob", "rotation", "sample"]
