"""Exact evaluation of a 2D energy model by normalising it on a grid that reaches all of its mass.

In 2D, Z = ∫ exp(log p_model(x)) dx over the whole plane can be computed by quadrature, so every run reports

    normaliser error   |log Z|                                   (0 when NCE learned c = log Z exactly)
    test NLL           −E_test[log p_model − log Z]              (the normalised model)
    entropy            −E_test[log p_data]                       (exact reference densities only)
    KL gap             E_test[log p_data − log p_model + log Z] = KL(p_data ‖ p_model)

The KL gap uses the paired estimator: both log-densities on the same test points, so its standard error
(reported as ``kl_stderr``) is that of their difference, far below that of either term.

**The plane as a box plus rings.** A fine grid of R² cells (spacing h) covers the data box [−B, B]²
(``Grid.covering``). Around it lie nested square rings: level k = 1, 2, … is the box [−2ᵏB, 2ᵏB]² covered by
R² cells of spacing 2ᵏh, of which only the cells outside the previous box [−2ᵏ⁻¹B, 2ᵏ⁻¹B]² count (3/4 of them;
only those are evaluated). Each level is summed by the midpoint rule,

    Z_k = Σ_{cells of level k} exp(log p_model(centre)) · (2ᵏh)²,      log Z = log Σ_k Z_k,

and the rings stop at the first one whose mass is below 10⁻⁷ of the running total (once that total is
positive), or after ``MAX_RINGS`` = 10 rings (half-width 1024·B). The rings use R rounded up to a multiple of 8,
so that every ring's inner edge is a cell edge of its grid and of its 2×-coarser grid. The sum trusts that the
first ring with negligible mass ends the mass: a blob beyond an empty ring would go unseen.

- ``mass_outside`` = 1 − Z_0 / Z: the fraction of the model's mass outside the data box, which a box-only
  quadrature would silently drop (``log_normaliser_box`` = log Z_0 is that box-only value).
- ``outer_bound``: the half-width 2ᵏB of the last level summed; ``mass_converged``: whether the rings ended.
- ``grid_check`` = |log Z − log Z_coarse|: the same box and rings summed again on grids of R/2 cells per
  side (spacing 2ᵏ⁺¹h; their cell centres are new points, a quarter as many as the fine grid's). The midpoint
  rule's error grows about fourfold on the coarser grid, so the change is about three times the fine grid's
  error where the model is smooth, and large where the grid is too coarse for its sharpest features.
- If the rings have not converged after ``MAX_RINGS`` rings, the model is not normalisable as far as the
  quadrature can tell (a tail like a Cauchy density's, mass ~1/r beyond radius r, counts as such):
  ``mass_converged`` is False and ``log_normaliser`` = +∞, so ``normaliser_error``,
  ``test_nll`` and ``kl`` are +∞, ``mass_outside`` is 1, ``grid_check`` and ``kl_stderr`` are NaN (never a
  truncated finite number). A model that is −∞ everywhere gets log Z = −∞; one that yields NaN gets NaN.

All float64 arithmetic happens on CPU tensors: the model runs on ``device`` in its own precision (float32), its
values are moved to the CPU and only then made float64 (Apple MPS has no float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ebm.data import toy
from ebm.protocols import LogProb

RING_TOLERANCE = 1e-7  # a ring with less than this fraction of the running total ends the sum
MAX_RINGS = 10  # the outermost box has half-width 2**MAX_RINGS · B


@dataclass(frozen=True)
class Grid:
    """A square grid of resolution² cell centres covering [−bound, bound]²."""

    bound: float
    resolution: int

    @property
    def spacing(self) -> float:
        return 2 * self.bound / self.resolution

    def axis(self) -> Tensor:
        """Cell centres along one axis: (R,)."""
        return -self.bound + self.spacing * (torch.arange(self.resolution) + 0.5)

    def points(self) -> Tensor:
        """All cell centres, row-major with x₂ the slow index: (R², 2)."""
        a = self.axis()
        x1, x2 = torch.meshgrid(a, a, indexing="xy")
        return torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)

    @classmethod
    def covering(cls, points: Tensor, resolution: int = 256, margin: float = 1.0) -> Grid:
        """The grid over the points' range plus ``margin``, its bound rounded up to a multiple of 0.5."""
        bound = math.ceil(2 * (points.abs().max().item() + margin)) / 2
        return cls(bound, resolution)


@torch.no_grad()
def chunked(log_prob: LogProb, x: Tensor, chunk: int = 65536) -> Tensor:
    """``log_prob`` over x (N, 2) in chunks, without gradients: (N,) on x's device."""
    return torch.cat([log_prob(xc) for xc in x.split(chunk)]) if len(x) else x.new_zeros(0)


def grid_log_prob(log_prob: LogProb, grid: Grid, device: torch.device | str = "cpu") -> Tensor:
    """log p on the grid's cell centres, as an image: (R, R), row i at x₂ = axis[i]."""
    values = chunked(log_prob, grid.points().to(device))
    return values.reshape(grid.resolution, grid.resolution).cpu()


@dataclass(frozen=True)
class PlaneMass:
    """The midpoint sums of one model over the box and its rings, as log-masses (float64 on the CPU)."""

    log_box: float  # log Z_0, the data box alone
    log_total: float  # log Σ_k Z_k over the levels used
    log_total_coarse: float  # the same with 2×-coarser cells
    converged: bool  # the last ring held less than RING_TOLERANCE of the total
    outer_bound: float  # half-width of the last level used


def _log_mass(values: Tensor, spacing: float) -> Tensor:
    """log Σ exp(values)·h² (the midpoint rule) over one level's cell values (any shape), float64 on the CPU."""
    return torch.logsumexp(values.cpu().double().reshape(-1), 0) + 2 * math.log(spacing)


def _first_ring(bound: float, resolution: int) -> tuple[Tensor, float]:
    """The cells of ``Grid(2·bound, resolution)`` whose centres lie outside [−bound, bound]²: (M, 2), spacing.

    With ``resolution`` a multiple of 4 the inner box is exactly R/2 × R/2 cells, so M = 3R²/4.
    """
    ring = Grid(2 * bound, resolution)
    index = torch.arange(resolution)
    inner = (4 * index + 2 > resolution) & (4 * index + 2 < 3 * resolution)  # (R,): centre in (−bound, bound)
    outside = ~(inner[None, :] & inner[:, None]).reshape(-1)  # (R²,), row-major like Grid.points
    return ring.points()[outside], ring.spacing


def plane_mass(
    log_prob: LogProb, grid: Grid, device: torch.device | str = "cpu", box_values: Tensor | None = None
) -> PlaneMass:
    """Sum exp(log_prob) over ``grid``'s box and the rings around it, fine and 2×-coarser (module docstring).

    ``box_values`` (R, R): ``grid_log_prob(log_prob, grid)`` if already computed, else computed here.
    """
    if grid.resolution < 2:
        raise ValueError(f"the grid needs a resolution of at least 2 (for its 2×-coarser check), got {grid.resolution}")
    if box_values is None:
        box_values = grid_log_prob(log_prob, grid, device)
    if box_values.shape != (grid.resolution, grid.resolution):
        raise ValueError(
            f"box_values must have the grid's shape (R, R) = {(grid.resolution,) * 2}, got {tuple(box_values.shape)}"
        )
    coarse_box = Grid(grid.bound, grid.resolution // 2)
    log_box = _log_mass(box_values, grid.spacing)
    log_total, log_total_coarse = log_box, _log_mass(grid_log_prob(log_prob, coarse_box, device), coarse_box.spacing)

    # The first ring's cells (level 1); level k's are the same scaled by 2ᵏ⁻¹, exactly (a power of two).
    ring_resolution = 8 * math.ceil(grid.resolution / 8)
    fine_points, fine_spacing = _first_ring(grid.bound, ring_resolution)  # (3R'²/4, 2)
    coarse_points, coarse_spacing = _first_ring(grid.bound, ring_resolution // 2)  # (3R'²/16, 2)
    converged, level = False, 0
    while not converged and level < MAX_RINGS and not math.isnan(log_total):
        level += 1
        scale = 2.0 ** (level - 1)
        log_ring = _log_mass(chunked(log_prob, (fine_points * scale).to(device)), fine_spacing * scale)
        log_ring_coarse = _log_mass(chunked(log_prob, (coarse_points * scale).to(device)), coarse_spacing * scale)
        log_total = torch.logaddexp(log_total, log_ring)
        log_total_coarse = torch.logaddexp(log_total_coarse, log_ring_coarse)
        converged = bool(log_total > -math.inf and log_ring < math.log(RING_TOLERANCE) + log_total)
    return PlaneMass(log_box.item(), log_total.item(), log_total_coarse.item(), converged, grid.bound * 2**level)


def density_metrics(
    log_prob: LogProb,
    grid: Grid,
    test_points: Tensor,
    data_log_prob: Tensor | None = None,
    device: torch.device | str = "cpu",
    box_values: Tensor | None = None,
) -> dict[str, float]:
    """The module docstring's metrics of ``log_prob`` ((N, 2) → (N,), e.g. ``model.log_prob``).

    Args:
        log_prob: the model's log-density, run on ``device``.
        grid: the fine grid over the data box; the rings around it are added here.
        test_points: (N, 2) CPU points drawn from the data (given to the model as float32).
        data_log_prob: (N,) exact log p_data on ``test_points`` (CPU); adds ``entropy``, ``kl``, ``kl_stderr``.
        device: where ``log_prob`` is evaluated.
        box_values: (R, R) ``grid_log_prob(log_prob, grid)`` if the caller already has it.

    Returns: log_normaliser, log_normaliser_box, normaliser_error, mass_outside, mass_converged, outer_bound,
    grid_check, grid_bound, grid_resolution, test_nll [, entropy, kl, kl_stderr].
    """
    if test_points.dim() != 2 or test_points.shape[1] != 2 or len(test_points) == 0:
        raise ValueError(f"test_points must have shape (N, 2) with N ≥ 1, got {tuple(test_points.shape)}")
    if data_log_prob is not None and data_log_prob.shape != test_points.shape[:1]:
        raise ValueError(
            f"data_log_prob must have shape {tuple(test_points.shape[:1])}, got {tuple(data_log_prob.shape)}"
        )
    mass = plane_mass(log_prob, grid, device, box_values)
    if mass.converged:
        log_z, mass_outside, grid_check = (
            mass.log_total,
            -math.expm1(mass.log_box - mass.log_total),
            abs(mass.log_total - mass.log_total_coarse),
        )
    else:  # unbounded mass (+∞), or no mass at all (−∞), or NaN from the model
        log_z = mass.log_total if mass.log_total == -math.inf or math.isnan(mass.log_total) else math.inf
        mass_outside, grid_check = (1.0 if log_z == math.inf else math.nan), math.nan
    model_log_prob = chunked(log_prob, test_points.float().to(device)).cpu().double()  # (N,)
    normalised = model_log_prob - log_z  # (N,)
    metrics = {
        "log_normaliser": log_z,
        "log_normaliser_box": mass.log_box,
        "normaliser_error": abs(log_z),
        "mass_outside": mass_outside,
        "mass_converged": mass.converged,
        "outer_bound": mass.outer_bound,
        "grid_check": grid_check,
        "grid_bound": grid.bound,
        "grid_resolution": grid.resolution,
        "test_nll": -normalised.mean().item(),
    }
    if data_log_prob is not None:
        data_log_prob = data_log_prob.cpu().double()
        gap = data_log_prob - normalised  # (N,)
        metrics["entropy"] = -data_log_prob.mean().item()
        metrics["kl"] = gap.mean().item()
        metrics["kl_stderr"] = (gap.std() / math.sqrt(len(gap))).item() if mass.converged else math.nan
    return metrics


def evaluate_density(
    log_prob: LogProb,
    test_points: Tensor,
    dataset: str | None = None,
    resolution: int = 512,
    device: torch.device | str = "cpu",
    data_log_prob: Tensor | None = None,
) -> dict[str, float]:
    """Normalise ``log_prob`` (e.g. ``model.log_prob``) over the plane and score it on ``test_points`` (N, 2).

    The fine grid is ``Grid.covering(test_points, resolution)``. With ``dataset`` (a name that
    ``ebm.data.toy.log_prob`` knows) or ``data_log_prob`` (N,), the exact log p_data on the test points,
    also the entropy and the KL gap.

    Example:
        >>> model = load_model("runs/pinwheel/checkpoint.pt")
        >>> evaluate_density(model.log_prob, sample("pinwheel", 100_000), "pinwheel")["kl"]
    """
    if dataset is not None and data_log_prob is not None:
        raise ValueError("give dataset or data_log_prob, not both")
    if dataset is not None:
        data_log_prob = toy.log_prob(dataset, test_points)
    grid = Grid.covering(test_points, resolution)
    return density_metrics(log_prob, grid, test_points, data_log_prob, device)
