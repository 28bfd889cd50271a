"""The exact densities of the toy 2D distributions of ``ebm.data.toy``, and the parameters both share.

``PLANE_LOG_PROBS[name](x)``: x (N, 2) float64 on the CPU → (N,) float64, the exact log-density in the plane
(closed forms where they exist, quadrature along the curve otherwise; each function says how and how
accurately). ``ebm.data.toy.log_prob`` is the public entry point (it also handles D > 2: rotated copies).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

# the distributions' parameters, read by the samplers of ebm.data.toy too
MOONS_NOISE, MOONS_SHIFT, MOONS_SCALE = 0.05, (0.5, 0.25), 2.0
CIRCLES_FACTOR, CIRCLES_NOISE, CIRCLES_SCALE = 0.5, 0.05, 3.0
SWISSROLL_NOISE, SWISSROLL_SCALE = 0.5, 0.25
RING_RADII = (3.0, 2.25, 1.5, 0.75)
RING_STD = 0.08
PINWHEEL_ARMS = 5
PINWHEEL_STD = (0.3, 0.1)
PINWHEEL_RATE = 0.25


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


PLANE_LOG_PROBS: dict[str, Callable[[Tensor], Tensor]] = {
    "8gaussians": _log_prob_8gaussians,
    "2spirals": _log_prob_2spirals,
    "checkerboard": _log_prob_checkerboard,
    "rings": _log_prob_rings,
    "pinwheel": _log_prob_pinwheel,
    "moons": _log_prob_moons,
    "circles": _log_prob_circles,
    "swissroll": _log_prob_swissroll,
}


__all__ = [
    "CIRCLES_FACTOR",
    "CIRCLES_NOISE",
    "CIRCLES_SCALE",
    "MOONS_NOISE",
    "MOONS_SCALE",
    "MOONS_SHIFT",
    "PINWHEEL_ARMS",
    "PINWHEEL_RATE",
    "PINWHEEL_STD",
    "PLANE_LOG_PROBS",
    "RING_RADII",
    "RING_STD",
    "SWISSROLL_NOISE",
    "SWISSROLL_SCALE",
]
