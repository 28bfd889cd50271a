"""Toy 2D distributions: seeded samplers and, for the five reference datasets, exact log-densities.

One entry point, ``sample(name, n, generator)``, over small registered functions; every sampler returns
exactly ``n`` finite float32 points of shape (n, 2). The reference definitions (z ~ N(0, I), U ~ U[0, 1])
are those of DESIGN.md:

    8gaussians    x = (0.5·z + 4·u_k)/√2, u_k the 8 unit vectors at multiples of 45°, k uniform
    2spirals      t = 3π√U; x = ±(−t·cos t + U₁/2, t·sin t + U₂/2)/3 + 0.1·z
    checkerboard  uniform (density 1/32) on the 8 squares of side 2 in [−4, 4]² with even cell parity
    rings         circles of radii 3, 2.25, 1.5, 0.75, equally many points at evenly spaced angles,
                  resampled with replacement, + N(0, 0.08²·I)
    pinwheel      arm c ~ U{0..4}; f ~ N((1, 0), diag(0.3², 0.1²)); x = 2·R(2πc/5 + 0.25·exp f₁)·f

``log_prob(name, x)`` evaluates the exact density of those five (see each ``_log_prob_*`` for how and how
accurately). moons, circles and swissroll come from scikit-learn and have no closed-form density.
"""

from __future__ import annotations

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


def _sample_checkerboard(n: int, g: torch.Generator) -> Tensor:
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    b = torch.randint(2, (n,), generator=g, dtype=torch.float64)
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * b + torch.remainder(x1.floor(), 2)
    return 2 * torch.stack([x1, x2], dim=1)


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
    return 2 * torch.stack([cos * f[:, 0] - sin * f[:, 1], sin * f[:, 0] + cos * f[:, 1]], dim=1)


def _sklearn_sampler(make: Callable[[int, np.random.RandomState], np.ndarray], scale: float) -> Sampler:
    """Wrap a scikit-learn generator: seeded from ``g``, centred, multiplied by ``scale`` to fit [−4, 4]²."""

    def sampler(n: int, g: torch.Generator) -> Tensor:
        state = np.random.RandomState(int(torch.randint(2**31 - 1, (1,), generator=g)))
        x = torch.from_numpy(make(n, state)).to(torch.float64)
        return scale * x

    return sampler


def _moons(n: int, rs: np.random.RandomState) -> np.ndarray:
    x = skdatasets.make_moons(n, noise=0.05, random_state=rs)[0]
    return x - np.array([0.5, 0.25])  # the moons' bounding box is centred at (0.5, 0.25)


def _circles(n: int, rs: np.random.RandomState) -> np.ndarray:
    return skdatasets.make_circles(n, factor=0.5, noise=0.05, random_state=rs)[0]


def _swissroll(n: int, rs: np.random.RandomState) -> np.ndarray:
    return skdatasets.make_swiss_roll(n, noise=0.5, random_state=rs)[0][:, [0, 2]]


_SAMPLERS: dict[str, Sampler] = {
    "8gaussians": _sample_8gaussians,
    "2spirals": _sample_2spirals,
    "checkerboard": _sample_checkerboard,
    "rings": _sample_rings,
    "pinwheel": _sample_pinwheel,
    "moons": _sklearn_sampler(_moons, 2.0),
    "circles": _sklearn_sampler(_circles, 3.0),
    "swissroll": _sklearn_sampler(_swissroll, 0.25),
}

TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)
"""Every toy dataset name, the five reference datasets first."""


def _check_name(name: str, choices: tuple[str, ...] | dict) -> None:
    if name not in choices:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(choices)}")


def sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw exactly ``n`` points of the toy distribution ``name``: float32, shape (n, 2), all finite.

    The same generator state gives the same points. Without a generator, torch's global one is used.
    """
    _check_name(name, _SAMPLERS)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if n == 0:
        return torch.zeros(0, 2)
    g = generator if generator is not None else torch.default_generator
    return _SAMPLERS[name](n, g).to(torch.float32).reshape(n, 2)


# ------------------------------------------------------------------------------------- exact densities


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


def _log_prob_rings(x: Tensor) -> Tensor:
    """Continuous-angle limit: each circle of radius r blurred by N(0, σ²·I), an equal mixture of four.

    Averaging N(x; r·(cos θ, sin θ), σ²I) over a uniform θ gives, with ρ = ‖x‖,

        p_r(x) = exp(−(ρ − r)²/(2σ²)) · i0e(rρ/σ²) / (2πσ²),   i0e(z) = exp(−z)·I₀(z),

    exact and overflow-free. The sampler's evenly spaced angles differ from this limit only by the
    angular spacing 2π/(n/4), far below σ/r for any sample size used here.
    """
    rho = x.norm(dim=1, keepdim=True)  # (N, 1)
    radii = torch.tensor(RING_RADII, dtype=x.dtype)  # (4,)
    var = RING_STD**2
    log_rings = (
        -((rho - radii) ** 2) / (2 * var) + torch.special.i0e(rho * radii / var).log() - math.log(2 * math.pi * var)
    )  # (N, 4)
    return torch.logsumexp(log_rings, dim=1) - math.log(4)


SPIRAL_NODES = 600


def _box(y: Tensor, width: float, std: float) -> Tensor:
    """Density of U[0, width] + N(0, std²) at y: (Φ(y/s) − Φ((y − w)/s)) / w.

    By symmetry about w/2 both Φ arguments are taken on the lower tail, where ``ndtr`` keeps its relative
    accuracy (no cancellation of two numbers near 1).
    """
    y = torch.where(y > width / 2, width - y, y)
    return (torch.special.ndtr(y / std) - torch.special.ndtr((y - width) / std)) / width


def _spiral_nodes(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Quadrature over the spiral parameter t ∈ [0, 3π] with nodes evenly spaced in arc length.

    The curve c(t)/3 = (−t·cos t, t·sin t)/3 has speed √(1 + t²)/3 and arc length
    s(t) = (t√(1 + t²) + asinh t)/6 ≈ 15.4 in all. The nodes are the midpoints of SPIRAL_NODES equal
    arc-length cells (spacing ≈ 0.025, a quarter of the blur 0.1); the weights are p(t)·dt with
    p(t) = 2t/(3π)² the density of t = 3π√U. Returns nodes (M,) and weights (M,).
    """
    fine = torch.linspace(0, 3 * math.pi, 200_001, dtype=torch.float64)
    arc = (fine * torch.sqrt(1 + fine**2) + torch.asinh(fine)) / 6
    edges_arc = torch.linspace(0, float(arc[-1]), SPIRAL_NODES + 1, dtype=torch.float64)
    edges = torch.from_numpy(np.interp(edges_arc.numpy(), arc.numpy(), fine.numpy()))
    nodes = (edges[1:] + edges[:-1]) / 2
    # ∫ p(t) dt over a cell is exact: [t²/(3π)²] between the cell's edges.
    weights = (edges[1:] ** 2 - edges[:-1] ** 2) / (3 * math.pi) ** 2
    return nodes.to(dtype), weights.to(dtype)


def _log_prob_2spirals(x: Tensor, chunk: int = 4096) -> Tensor:
    """A one-dimensional integral over the spiral parameter, by quadrature.

    Given t and the branch sign s, x = s·(c(t) + U₁₂/2)/3 + 0.1·z, so each coordinate is a uniform of
    width 1/6 blurred by N(0, 0.1²) (a closed form, ``_box``), and

        p(x) = ½ Σ_{s=±1} ∫₀^{3π} p(t) Π_i box(s·x_i − c_i(t)/3) dt.

    The integrand varies on the scale of the blur (0.1) along the curve. With nodes every ≈ 0.025 of arc
    length, log p differs from a tenfold finer rule by 2e-5 on average over samples and by at most 7e-3
    (next to the outer tip, where p(t) is cut off). Farther than ≈ 3.7 from the curve (37 std of the
    blur) the density underflows to 0 and log p is −inf; data samples never get there.
    """
    t, weights = _spiral_nodes(x.dtype)
    centres = torch.stack([-t.cos() * t, t.sin() * t], dim=1) / 3  # (M, 2)
    out = []
    for xc in x.split(chunk):
        density = xc.new_zeros(len(xc))
        for s in (1.0, -1.0):
            y = s * xc[:, None, :] - centres  # (n, M, 2)
            # Nodes farther than 0.8 (7 blur std beyond the box) add < 1e-12 of the peak: skip them.
            point, node = torch.nonzero((y - 1 / 12).abs().amax(dim=2) < 0.8, as_tuple=True)
            terms = _box(y[point, node], 1 / 6, 0.1).prod(dim=1) * weights[node]  # (pairs,)
            density.index_add_(0, point, terms)
        out.append(density.log() - math.log(2))
    return torch.cat(out) if out else x.new_zeros(0)


PINWHEEL_GRID = 256


def _log_prob_pinwheel(x: Tensor, chunk: int = 4096) -> Tensor:
    """Change of variables through the map f ↦ x = 2·R(a(f₁))·f of each arm, a(f₁) = 2πc/5 + 0.25·e^{f₁}.

    In polar coordinates f = r·(cos β, sin β), the map keeps the radius (‖x‖ = 2r) and sends the angle β
    to φ = β + a(r·cos β). So for given x, r = ‖x‖/2 is known and the preimages are the roots β of
    β + 0.25·exp(r·cos β) ≡ φ − 2πc/5 (mod 2π). Their sum gives

        p(x) = (1/5) Σ_c Σ_roots N(f; (1, 0), diag(0.3², 0.1²)) / (4·|1 − 0.25·e^{f₁}·f₂|),

    where 4·(1 − 0.25·e^{f₁}f₂) is the map's Jacobian determinant. Roots are bracketed on a grid of
    PINWHEEL_GRID angles (all of them, including the rare folds where the map is not one-to-one) and
    polished by bisection to machine precision, so this is exact up to float rounding.
    """
    std = torch.tensor(PINWHEEL_STD, dtype=x.dtype)
    two_pi = 2 * math.pi
    beta = torch.linspace(-math.pi, math.pi, PINWHEEL_GRID + 1, dtype=x.dtype)  # (K+1,)
    out = []
    for xc in x.split(chunk):
        r = xc.norm(dim=1) / 2  # (n,)
        phi = torch.atan2(xc[:, 1], xc[:, 0])  # (n,)
        offsets = two_pi * torch.arange(PINWHEEL_ARMS, dtype=x.dtype) / PINWHEEL_ARMS  # (C,)
        target = phi[:, None] - offsets  # (n, C)

        def residual(b: Tensor, rr: Tensor, tt: Tensor) -> Tensor:
            """Unwrapped angle error; a root lies where ⌊residual / 2π⌋ changes."""
            return b + PINWHEEL_RATE * torch.exp(rr * torch.cos(b)) - tt

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
        log_jac = torch.log(4 * (1 - PINWHEEL_RATE * f[:, 0].exp() * f[:, 1]).abs())
        density = torch.zeros(len(xc), dtype=x.dtype).index_add_(0, point, torch.exp(log_n - log_jac))
        out.append(density.log() - math.log(PINWHEEL_ARMS))
    return torch.cat(out) if out else x.new_zeros(0)


_LOG_PROBS: dict[str, Callable[[Tensor], Tensor]] = {
    "8gaussians": _log_prob_8gaussians,
    "2spirals": _log_prob_2spirals,
    "checkerboard": _log_prob_checkerboard,
    "rings": _log_prob_rings,
    "pinwheel": _log_prob_pinwheel,
}

REFERENCE_DATASETS: tuple[str, ...] = tuple(_LOG_PROBS)
"""The datasets with an exact ``log_prob``."""


def log_prob(name: str, x: Tensor) -> Tensor:
    """Exact log-density of the reference distribution ``name`` at x: (N, 2) → (N,), computed in float64.

    Points outside the support (checkerboard) get −inf. Returns float64.
    """
    if name not in _LOG_PROBS:
        _check_name(name, _SAMPLERS)
        raise ValueError(f"{name!r} has no exact density; these do: {', '.join(REFERENCE_DATASETS)}")
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
    return _LOG_PROBS[name](x.detach().to("cpu", torch.float64))


__all__ = ["REFERENCE_DATASETS", "TOY_DATASETS", "log_prob", "sample"]
