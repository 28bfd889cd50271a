"""Toy distributions in 2D and in D dimensions: seeded samplers, and an exact log-density for every one of them.

One entry point, ``sample(name, n, generator, dims=2)``, over small registered functions; it returns exactly
``n`` finite float32 points of shape (n, D). In D = 2k dimensions a point is k independent draws y₁ … y_k of the
2D distribution, concatenated into y ∈ ℝᴰ and rotated by the fixed orthogonal matrix Q_D of ``rotation(D)``
(a Haar draw from its own seed; the identity at D = 2, so the 2D sets are exactly the 2D samplers'):

    x = Q_D·y,   log p(x) = Σ_j log p₂(y_j),   y = Q_Dᵀ·x   (|det Q_D| = 1)

The five reference definitions of the 2D distribution (z ~ N(0, I), U ~ U[0, 1]) are those of DESIGN.md, i.e.
the seed's (lifeitech/nce, from FFJORD's toy data):

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
accurately). Where a sampler places points at evenly spaced parameters (rings, moons, circles), the density
is that of the continuous limit, a uniform parameter; ``_log_circles`` says how small n may be.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn import datasets as skdatasets
from torch import Tensor

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


RING_RADII = (3.0, 2.25, 1.5, 0.75)
RING_STD = 0.08


def _sample_rings(n: int, g: torch.Generator) -> Tensor:
    counts = [n // 4 + (i < n % 4) for i in range(4)]  # equally many points per circle, exactly n in all
    circles = []
    for radius, count in zip(RING_RADII, counts, strict=True):
        angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / max(count, 1))
        circles.append(radius * torch.stack([angles.cos(), angles.sin()], dim=1))
    points = torch.cat(circles)[torch.randint(n, (n,), generator=g)]  # resampled with replacement
    return points + RING_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)


PINWHEEL_ARMS = 5
PINWHEEL_STD = (0.3, 0.1)
PINWHEEL_RATE = 0.25


def _sample_pinwheel(n: int, g: torch.Generator) -> Tensor:
    f = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor(PINWHEEL_STD, dtype=torch.float64)
    f[:, 0] += 1
    arm = torch.randint(PINWHEEL_ARMS, (n,), generator=g)
    angle = 2 * math.pi * arm / PINWHEEL_ARMS + PINWHEEL_RATE * f[:, 0].exp()
    cos, sin = angle.cos(), angle.sin()
    # f (a row vector) times [[cos a, −sin a], [sin a, cos a]]: a rotation by −a, as the seed computes it.
    return 2 * torch.stack([f[:, 0] * cos + f[:, 1] * sin, -f[:, 0] * sin + f[:, 1] * cos], dim=1)


MOONS_NOISE, MOONS_SHIFT, MOONS_SCALE = 0.05, (0.5, 0.25), 2.0
CIRCLES_FACTOR, CIRCLES_NOISE, CIRCLES_SCALE = 0.5, 0.05, 3.0
SWISSROLL_NOISE, SWISSROLL_SCALE = 0.5, 0.25


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
"""The five reference datasets of DESIGN.md (the seed's)."""


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


# ------------------------------------------------------------------------------------- exact densities
# Timings are for log_prob of 100,000 samples on one core of the development machine (a shared 2-core VM).


def _log_prob_8gaussians(x: Tensor) -> Tensor:
    """Closed form: an equal mixture of 8 isotropic Gaussians, means 2√2·u_k, std 0.5/√2."""
    angles = torch.arange(8, dtype=x.dtype) * (math.pi / 4)
    means = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], dim=1)  # (8, 2)
    components = torch.distributions.Independent(torch.distributions.Normal(means, 0.5 / math.sqrt(2)), 1)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(8, dtype=x.dtype)), components
    )
    return mixture.log_prob(x)


def _log_prob_checkerboard(x: Tensor) -> Tensor:
    """Closed form: log(1/32) on the squares of [−4, 4)² whose cell indices ⌊x₁/2⌋ + ⌊x₂/2⌋ are even."""
    cells = torch.floor(x / 2)
    inside = (x.abs().amax(dim=1) <= 4) & (x.amax(dim=1) < 4) & (torch.remainder(cells.sum(dim=1), 2) == 0)
    return torch.where(inside, -math.log(32), -math.inf).to(x.dtype)


def _log_circles(x: Tensor, radii: tuple[float, ...], std: float) -> Tensor:
    """log p_r(x) for each radius r: (N, 2) → (N, K), p_r the uniform circle of radius r blurred by N(0, σ²·I).

    Averaging N(x; r·(cos θ, sin θ), σ²I) over a uniform θ gives, with ρ = ‖x‖,

        p_r(x) = exp(−(ρ − r)²/(2σ²)) · i0e(rρ/σ²) / (2πσ²),   i0e(z) = exp(−z)·I₀(z),

    exact and overflow-free. A sampler that puts m points at evenly spaced angles instead (arc spacing
    h = 2πr/m) has, by Poisson summation, the density p_r·(1 + 2·e^{−2π²σ²/h²}·cos(2πs/h) + …) along the
    arc s: this continuous limit is off by the relative ripple 2·e^{−2π²σ²/h²}, negligible once h < σ
    (≤ 6e-9) but not for a few points per circle (for r = 3, σ = 0.08, m = 64 it predicts 0.466; summing
    the 64 Gaussians gives +0.472 on a point's angle and −0.460 halfway between two).
    """
    rho = x.norm(dim=1, keepdim=True)  # (N, 1)
    r = torch.tensor(radii, dtype=x.dtype)  # (K,)
    var = std**2
    return -((rho - r) ** 2) / (2 * var) + torch.special.i0e(rho * r / var).log() - math.log(2 * math.pi * var)


def _log_prob_rings(x: Tensor) -> Tensor:
    """Continuous-angle limit: an equal mixture of the four circles blurred by N(0, 0.08²·I) (``_log_circles``).

    ``sample("rings", n)`` resamples from n/4 evenly spaced angles per circle (starting at angle 0), so
    the outer circle (r = 3) has arc spacing h = 24π/n. The relative ripple of the true density around
    this limit, 2·e^{−2π²σ²/h²}, is 46% at n = 256 (64 beads on the outer circle), 0.6% at n = 512 and
    below 1e-9 from n = 1024 on: draw at least a thousand points per call for this density to be the
    data's (the 2D training loop draws each epoch's points, 64,000 by default, in one call).
    Time: ≈ 0.03 s per 100k points.
    """
    return torch.logsumexp(_log_circles(x, RING_RADII, RING_STD), dim=1) - math.log(len(RING_RADII))


def _log_prob_circles(x: Tensor) -> Tensor:
    """Continuous-angle limit: an equal mixture of circles of radii 3 and 1.5 blurred by N(0, 0.15²·I).

    ``make_circles`` puts ⌊n/2⌋ points on the outer circle and n − ⌊n/2⌋ on the inner one (weights ½ in
    the limit), at evenly spaced angles: outer arc spacing h = 12π/n, relative ripple 2·e^{−2π²σ²/h²}
    (``_log_circles``) of 3e-9 at n = 256 and 1.2% at n = 128. Time: ≈ 0.01 s per 100k points.
    """
    radii = (CIRCLES_SCALE, CIRCLES_SCALE * CIRCLES_FACTOR)
    return torch.logsumexp(_log_circles(x, radii, CIRCLES_SCALE * CIRCLES_NOISE), dim=1) - math.log(2)


NODE_BLOCK = 32


def _sum_near_nodes(
    x: Tensor, centres: Tensor, weights: Tensor, kernel: Callable[[Tensor], Tensor], reach: float, chunk: int = 8192
) -> Tensor:
    """Quadrature of a curve blurred by a kernel: Σ_m weights_m·kernel(x − centres_m), (N, 2) → (N,).

    centres (M, 2) are the nodes along the curve, in order, and weights (M,) their probabilities; kernel
    maps offsets (P, 2) → (P,). The nodes are taken in blocks of NODE_BLOCK consecutive ones, and a block
    is summed only where x lies within ``reach`` of its bounding box in both coordinates (the caller picks a
    reach beyond which the kernel is negligible): a point gets 0 only if every node is at least ``reach``
    away from it in some coordinate.
    """
    pad = -len(centres) % NODE_BLOCK
    centres = torch.cat([centres, centres[-1:].expand(pad, 2)]).reshape(-1, NODE_BLOCK, 2)  # (K, B, 2)
    weights = torch.cat([weights, weights.new_zeros(pad)]).reshape(-1, NODE_BLOCK)  # (K, B): padding weighs 0
    lo, hi = centres.amin(dim=1) - reach, centres.amax(dim=1) + reach  # (K, 2)
    out = []
    for xc in x.split(chunk):
        near = ((xc[:, None, :] > lo) & (xc[:, None, :] < hi)).all(dim=2)  # (n, K)
        point, block = torch.nonzero(near, as_tuple=True)
        offset = xc[point, None, :] - centres[block]  # (pairs, B, 2)
        terms = (kernel(offset.reshape(-1, 2)).reshape(-1, NODE_BLOCK) * weights[block]).sum(dim=1)  # (pairs,)
        out.append(xc.new_zeros(len(xc)).index_add_(0, point, terms))
    return torch.cat(out) if out else x.new_zeros(0)


def _gaussian_kernel(std: float) -> Callable[[Tensor], Tensor]:
    """The density of N(0, std²·I) in 2D: offsets (P, 2) → (P,)."""
    return lambda d: torch.exp(-(d[:, 0] ** 2 + d[:, 1] ** 2) / (2 * std**2)) / (2 * math.pi * std**2)


@functools.cache
def _equal_arc_cells(t_lo: float, t_hi: float, count: int) -> Tensor:
    """Edges (count + 1,) of ``count`` cells of t ∈ [t_lo, t_hi] of equal arc length on the spiral t·(cos t, sin t).

    That spiral (or its mirror image, or either scaled) has speed ∝ √(1 + t²) and arc length
    ∝ t√(1 + t²) + asinh t, inverted here by interpolation on a fine grid (float64).
    """
    fine = torch.linspace(t_lo, t_hi, 200_001, dtype=torch.float64)
    arc = fine * torch.sqrt(1 + fine**2) + torch.asinh(fine)
    targets = torch.linspace(float(arc[0]), float(arc[-1]), count + 1, dtype=torch.float64)
    return torch.from_numpy(np.interp(targets.numpy(), arc.numpy(), fine.numpy()))


def _gauss_legendre_2(edges: Tensor) -> tuple[Tensor, Tensor]:
    """Two-point Gauss–Legendre nodes in each cell [e_j, e_{j+1}]: nodes and their weights in t, both (2M,).

    Per cell of width Δ: t = midpoint ± Δ/(2√3), each weighted Δ/2; exact for cubics in t. Composed over
    cells, the error of ∫ g(t) dt for a smooth g comes only from the ends of the range and falls as Δ⁴
    (the midpoint rule's falls as Δ²), which matters where a curve's parameter range is cut off.
    """
    half = (edges[1:] - edges[:-1]) / 2  # (M,)
    mid = (edges[1:] + edges[:-1]) / 2
    nodes = torch.stack([mid - half / math.sqrt(3), mid + half / math.sqrt(3)], dim=1).reshape(-1)  # in order
    return nodes, half.repeat_interleave(2)


def _box(y: Tensor, width: float, std: float) -> Tensor:
    """Density of U[0, width] + N(0, std²) at y: (Φ(y/s) − Φ((y − w)/s)) / w.

    By symmetry about w/2 both Φ arguments are taken on the lower tail, where ``ndtr`` keeps its relative
    accuracy (no cancellation of two numbers near 1).
    """
    y = torch.where(y > width / 2, width - y, y)
    return (torch.special.ndtr(y / std) - torch.special.ndtr((y - width) / std)) / width


SPIRAL_CELLS = 600


def _log_prob_2spirals(x: Tensor, cells: int = SPIRAL_CELLS) -> Tensor:
    """A one-dimensional integral over the spiral parameter, by quadrature.

    Given t and the branch sign s, x = s·(c(t) + U₁₂/2)/3 + 0.1·z with c(t) = (−t·cos t, t·sin t), so each
    coordinate is a uniform of width 1/6 blurred by N(0, 0.1²) (a closed form, ``_box``), centred at
    s·(c(t)/3 + 1/12), and (the box density being symmetric about its centre)

        p(x) = ½ Σ_{s=±1} ∫₀^{3π} p(t) Π_i box(x_i − s·(c_i(t)/3 + 1/12) + 1/12) dt,   p(t) = 2t/(3π)².

    Two-point Gauss–Legendre in t on each of ``cells`` cells of equal arc length on c/3 (15.4 in all:
    nodes ≈ 0.013 apart, an eighth of the blur). log p differs from a tenfold finer rule by 1e-8
    on average over samples and by at most 1.3e-5 (next to the tips, where p(t) is cut off). Nodes are
    summed near x only (``_sum_near_nodes``, reach 0.8): a node whose box centre is 0.8 or more from x in
    some coordinate (7.2 blur std beyond its box) adds below 1e-12 of its peak, and log p = −inf only
    where no box centre is within 0.8 in both coordinates (at least 0.72 outside every box), which data
    samples reach with probability ~1e-12.
    Time: ≈ 1.1 s per 100k points.
    """
    t, dt = _gauss_legendre_2(_equal_arc_cells(0.0, 3 * math.pi, cells).to(x.dtype))  # (M,), (M,)
    weights = 2 * t / (3 * math.pi) ** 2 * dt  # p(t)·dt
    box_centres = torch.stack([-t.cos() * t, t.sin() * t], dim=1) / 3 + 1 / 12  # (M, 2)
    centres = torch.cat([box_centres, -box_centres])  # (2M, 2): both branches
    kernel = lambda d: _box(d[:, 0] + 1 / 12, 1 / 6, 0.1) * _box(d[:, 1] + 1 / 12, 1 / 6, 0.1)  # noqa: E731
    return _sum_near_nodes(x, centres, torch.cat([weights, weights]) / 2, kernel, reach=0.8).log()


MOONS_CELLS = 315


def _log_prob_moons(x: Tensor, cells: int = MOONS_CELLS) -> Tensor:
    """Two half circles blurred by a Gaussian, by quadrature along each arc.

    ``make_moons`` puts ⌊n/2⌋ points at θ evenly spaced on [0, π] on (cos θ, sin θ) and the rest on
    (1 − cos θ, ½ − sin θ), then adds N(0, 0.05²·I); moved by −(½, ¼) and scaled by 2 these are arcs of
    radius 2 about (−1, −½) (upper) and (1, ½) (lower), blurred by σ = 0.1. In the limit of a uniform θ,

        p(x) = ½ Σ_{arcs} (1/π) ∫₀^π N(x; m(θ), σ²·I) dθ,

    by two-point Gauss–Legendre on ``cells`` equal cells of θ per arc (nodes ≈ 0.01 = σ/10 apart). log p
    differs from a tenfold finer rule by 2e-8 on average over samples and by at most 4e-5
    (next to the arcs' ends, where the uniform θ is cut off). log p = −inf only at points 8σ or more from
    every node in some coordinate, where the true density is below e^{−32} ≈ 1e-14 of its peak. The
    sampler's evenly spaced θ (arc spacing h = 2π/(⌊n/2⌋ − 1)) adds a relative ripple 2·e^{−2π²σ²/h²}
    (``_log_circles``): 1.6% at n = 64, 2e-35 at n = 256. Time: ≈ 0.5 s per 100k points.
    """
    theta, dtheta = _gauss_legendre_2(torch.linspace(0, math.pi, cells + 1, dtype=x.dtype))  # (M,), (M,)
    cos, sin = theta.cos(), theta.sin()
    upper = torch.stack([cos, sin], dim=1)  # (M, 2): make_moons' outer arc
    lower = torch.stack([1 - cos, 0.5 - sin], dim=1)  # (M, 2): its inner arc
    centres = MOONS_SCALE * (torch.cat([upper, lower]) - torch.tensor(MOONS_SHIFT, dtype=x.dtype))  # (2M, 2)
    weights = torch.cat([dtheta, dtheta]) / (2 * math.pi)  # ½ · dθ/π
    std = MOONS_SCALE * MOONS_NOISE
    return _sum_near_nodes(x, centres, weights, _gaussian_kernel(std), reach=8 * std).log()


SWISSROLL_CELLS = 900


def _log_prob_swissroll(x: Tensor, cells: int = SWISSROLL_CELLS) -> Tensor:
    """A spiral blurred by a Gaussian, by quadrature along the curve in cells of equal arc length.

    ``make_swiss_roll`` draws t ~ U[1.5π, 4.5π] and puts (t·cos t, y, t·sin t) + N(0, 0.5²·I); columns 0
    and 2 scaled by 0.25 give the curve c(t) = 0.25·t·(cos t, sin t) blurred by σ = 0.125:

        p(x) = (1/3π) ∫_{1.5π}^{4.5π} N(x; c(t), σ²·I) dt,

    by two-point Gauss–Legendre in t on ``cells`` cells of equal arc length on c (22.3 in all: nodes
    ≈ 0.012 ≈ σ/10 apart). log p differs from a tenfold finer rule by 8e-9 on average over samples
    and by at most 7e-6 (next to the curve's ends). log p = −inf only at points 8σ or more from every
    node in some coordinate, where the true density is below e^{−32} ≈ 1e-14 of its peak.
    Time: ≈ 0.4 s per 100k points.
    """
    t_lo, t_hi = 1.5 * math.pi, 4.5 * math.pi
    t, dt = _gauss_legendre_2(_equal_arc_cells(t_lo, t_hi, cells).to(x.dtype))  # (M,), (M,)
    centres = SWISSROLL_SCALE * t[:, None] * torch.stack([t.cos(), t.sin()], dim=1)  # (M, 2)
    std = SWISSROLL_SCALE * SWISSROLL_NOISE
    return _sum_near_nodes(x, centres, dt / (t_hi - t_lo), _gaussian_kernel(std), reach=8 * std).log()


PINWHEEL_GRID = 256


def _log_prob_pinwheel(x: Tensor, chunk: int = 4096) -> Tensor:
    """Change of variables through the map f ↦ x = 2·R(−a(f₁))·f of each arm, a(f₁) = 2πc/5 + 0.25·e^{f₁}.

    In polar coordinates f = r·(cos β, sin β), the map keeps the radius (‖x‖ = 2r) and sends the angle β
    to φ = β − a(r·cos β). So for given x, r = ‖x‖/2 is known and the preimages are the roots β of
    β − 0.25·exp(r·cos β) ≡ φ + 2πc/5 (mod 2π). In these coordinates the map (r, β) ↦ (2r, φ) is
    triangular with ∂φ/∂β = 1 + a'(f₁)·r·sin β = 1 + 0.25·e^{f₁}·f₂, and area elements are r dr dβ and
    (2r)·d(2r)·dφ, so the map's Jacobian determinant is 4·(1 + 0.25·e^{f₁}·f₂). Summing over the preimages,

        p(x) = (1/5) Σ_c Σ_roots N(f; (1, 0), diag(0.3², 0.1²)) / (4·|1 + 0.25·e^{f₁}·f₂|).

    Roots are bracketed on a grid of PINWHEEL_GRID angles (all of them, including the rare folds where
    the map is not one-to-one) and polished by bisection to machine precision, so this is exact up to
    float rounding. Time: ≈ 1.3 s per 100k points.
    """
    std = torch.tensor(PINWHEEL_STD, dtype=x.dtype)
    two_pi = 2 * math.pi
    beta = torch.linspace(-math.pi, math.pi, PINWHEEL_GRID + 1, dtype=x.dtype)  # (K+1,)
    out = []
    for xc in x.split(chunk):
        r = xc.norm(dim=1) / 2  # (n,)
        phi = torch.atan2(xc[:, 1], xc[:, 0])  # (n,)
        offsets = two_pi * torch.arange(PINWHEEL_ARMS, dtype=x.dtype) / PINWHEEL_ARMS  # (C,)
        target = phi[:, None] + offsets  # (n, C)

        def residual(b: Tensor, rr: Tensor, tt: Tensor) -> Tensor:
            """Unwrapped angle error; a root lies where ⌊residual / 2π⌋ changes."""
            return b - PINWHEEL_RATE * torch.exp(rr * torch.cos(b)) - tt

        wraps = torch.floor(residual(beta, r[:, None, None], target[..., None]) / two_pi)  # (n, C, K+1)
        point, arm, cell = torch.nonzero(wraps[..., 1:] != wraps[..., :-1], as_tuple=True)
        # Far out (r ≳ 2) the map folds many times, but the extra preimages lie > 12 std from the mean of
        # f; drop cells whose f is that improbable (weight < e^-70 of the peak) before polishing.
        mid = (beta[cell] + beta[cell + 1]) / 2
        z = (r[point, None] * torch.stack([mid.cos(), mid.sin()], dim=1) - torch.tensor([1.0, 0.0])) / std
        keep = z.square().sum(dim=1) < 140
        point, arm, cell = point[keep], arm[keep], cell[keep]
        level = torch.maximum(wraps[point, arm, cell], wraps[point, arm, cell + 1])  # the 2π multiple crossed
        lo, hi = beta[cell], beta[cell + 1]
        rr, tt = r[point], target[point, arm] + two_pi * level
        f_lo = residual(lo, rr, tt)
        for _ in range(60 if x.dtype == torch.float64 else 30):  # bisection: sign(f_lo) fixed, halve [lo, hi]
            mid = (lo + hi) / 2
            same = torch.sign(residual(mid, rr, tt)) == torch.sign(f_lo)
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
        root = (lo + hi) / 2
        f = torch.stack([rr * root.cos(), rr * root.sin()], dim=1)  # (roots, 2)
        log_n = torch.distributions.Normal(torch.tensor([1.0, 0.0], dtype=x.dtype), std).log_prob(f).sum(dim=1)
        log_jac = torch.log(4 * (1 + PINWHEEL_RATE * f[:, 0].exp() * f[:, 1]).abs())
        density = torch.zeros(len(xc), dtype=x.dtype).index_add_(0, point, torch.exp(log_n - log_jac))
        out.append(density.log() - math.log(PINWHEEL_ARMS))
    return torch.cat(out) if out else x.new_zeros(0)


_LOG_PROBS: dict[str, Callable[[Tensor], Tensor]] = {
    "8gaussians": _log_prob_8gaussians,
    "2spirals": _log_prob_2spirals,
    "checkerboard": _log_prob_checkerboard,
    "rings": _log_prob_rings,
    "pinwheel": _log_prob_pinwheel,
    "moons": _log_prob_moons,
    "circles": _log_prob_circles,
    "swissroll": _log_prob_swissroll,
}

EXACT_DATASETS: tuple[str, ...] = tuple(_LOG_PROBS)
"""The datasets with an exact ``log_prob``: all of TOY_DATASETS, in the same order."""


def log_prob(name: str, x: Tensor) -> Tensor:
    """Exact log-density of the toy distribution ``name`` at x: (N, D) → (N,), computed in float64 on the CPU.

    D (even) is read from x. For D > 2: y = x·Q_D (the un-rotated points, (N, D) → (N, D/2, 2) pairs) and
    log p(x) = Σ_j log p₂(y_j), |det Q_D| = 1. Points outside the support (checkerboard), or so far from the data
    that the density is negligible (see each ``_log_prob_*``), get −inf. Returns float64.
    """
    _check_name(name, _LOG_PROBS)
    if x.dim() != 2 or x.shape[1] < 2 or x.shape[1] % 2:
        raise ValueError(f"x must have shape (N, D) with D even and ≥ 2, got {tuple(x.shape)}")
    n, dims = x.shape
    if n == 0:  # torch.distributions cannot validate an empty batch
        return torch.zeros(0, dtype=torch.float64)
    x = x.detach().to("cpu", torch.float64)
    if dims == 2:
        return _LOG_PROBS[name](x)
    pairs = (x @ _rotation(dims)).reshape(n * dims // 2, 2)  # (N·D/2, 2): y = Qᵀx, row by row
    return _LOG_PROBS[name](pairs).reshape(n, dims // 2).sum(dim=1)


__all__ = ["EXACT_DATASETS", "REFERENCE_DATASETS", "TOY_DATASETS", "log_prob", "rotation", "sample"]
