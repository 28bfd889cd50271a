"""An energy additive over the pair noise's basis, and its normaliser computed exactly on P 2D grids.

    s = W (x − μ) cut into P = D/2 pairs s_j (the basis ``ebm.energy.pairs.fit_pair_mixture`` found),
    g(x) = Σ_j g_j(s_j),   each g_j a small MLP on R² (optionally reading Fourier features of s_j).

Relative to the pair noise q(x) = |det W| Π_j q_j(s_j) as base, the model is again a product over the pairs,

    p̃(x) = q(x) e^{−g(x)} = |det W| Π_j q_j(s_j) e^{−g_j(s_j)},   so   log ∫ p̃ dx = Σ_j log ∫ q_j(s) e^{−g_j(s)} ds

(the change of variables x ↦ s cancels |det W|; without a base, log ∫ e^{−g} dx = Σ_j log ∫ e^{−g_j} − log |det W|).
Each term is a 2D integral, which ``ebm.energy.evaluate.plane_mass`` sums over a grid and the rings around it as in
the 2D evaluation: beyond the plane this model's normaliser, its KL(data ‖ model) and its learned log Z's error
are exact, not bracketed — a reference the AIS bracket can be checked against in any dimension.

The structure is an assumption, and the right one only for data made of independent 2D parts in some linear
basis (this package's ``--dims D`` sets by construction; the noise's fit finds the basis from the points alone).
A general MLP on all D coordinates (``EnergyMLP`` without a basis) makes no such assumption.

The P MLPs run as one batched network: a layer's weights are (P, in, out) and its input (P, B, in), one
``torch.baddbmm`` per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ebm.energy.evaluate import Grid, plane_mass
from ebm.energy.sampling import grid_sample

PAIR_GRID_RESOLUTION = 256  # cells per side of each pair's grid in the exact normaliser


class PairLinear(nn.Module):
    """P independent linear maps at once: (P, B, in) → (P, B, out), y_j = x_j A_j + b_j, initialised like
    ``nn.Linear`` (uniform on ±1/√in)."""

    def __init__(self, pairs: int, inputs: int, outputs: int):
        super().__init__()
        bound = 1 / math.sqrt(inputs)
        self.weight = nn.Parameter(torch.empty(pairs, inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(pairs, 1, outputs).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PairSumNet(nn.Module):
    """g(x) = Σ_j g_j((W(x − μ))_j): (B, D) → (B, 1), with P = D/2 MLPs R² → width → … → 1.

    Buffers ``loc`` μ (D,) and ``unmixing`` W (D, D) (the pair noise's); ``features`` is the module that maps a
    pair's coordinates (..., 2) to the MLP's input (..., F) (``nn.Identity`` or Fourier features), ``activation``
    a factory of the nonlinearity.
    """

    def __init__(self, loc: Tensor, unmixing: Tensor, width: int, depth: int, activation: Callable[[], nn.Module],
                 features: nn.Module, inputs: int):
        super().__init__()
        dims = loc.shape[-1]
        if dims < 2 or dims % 2 or unmixing.shape != (dims, dims):
            raise ValueError(f"the pair energy needs an even D ≥ 2 and a (D, D) basis, got loc {tuple(loc.shape)} "
                             f"and unmixing {tuple(unmixing.shape)}")
        pairs = dims // 2
        self.register_buffer("loc", loc.detach().float().clone())
        self.register_buffer("unmixing", unmixing.detach().float().clone())
        self.features = features
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [PairLinear(pairs, inputs if i == 0 else width, width), activation()]
        self.net = nn.Sequential(*layers, PairLinear(pairs, width, 1))

    @property
    def pairs(self) -> int:
        """P = D/2, the number of pairs."""
        return self.loc.shape[-1] // 2

    def coordinates(self, x: Tensor) -> Tensor:
        """s = W(x − μ) as pairs: (B, D) → (P, B, 2)."""
        s = (x - self.loc) @ self.unmixing.T  # (B, D)
        return s.unflatten(-1, (self.pairs, 2)).transpose(0, 1)

    def pair_energies(self, s: Tensor) -> Tensor:
        """g_j(s_j) for every pair: (P, B, 2) → (P, B)."""
        return self.net(self.features(s)).squeeze(-1)

    def one_pair(self, pair: int, s: Tensor) -> Tensor:
        """g_j alone, j = ``pair``, on points of its plane: (M, 2) → (M,)."""
        h = self.features(s)
        for layer in self.net:
            h = torch.addmm(layer.bias[pair], h, layer.weight[pair]) if isinstance(layer, PairLinear) else layer(h)
        return h.squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pair_energies(self.coordinates(x)).sum(0)[:, None]  # (B, 1)


def pair_log_density(model: nn.Module, pair: int) -> Callable[[Tensor], Tensor]:
    """Pair j's factor of the model's p̃ on its plane, as a function (M, 2) → (M,): log q_j(s) − g_j(s) with the
    pair noise as base, −g_j(s) without."""
    net, base = model.net, getattr(model, "base", None)

    def log_density(s: Tensor) -> Tensor:
        value = -net.one_pair(pair, s)
        return value if base is None else value + base.pair_log_prob(s, pair)

    return log_density


def pair_grids(model: nn.Module, points: Tensor, resolution: int = PAIR_GRID_RESOLUTION) -> list[Grid]:
    """One grid per pair, each covering the pair coordinates s_j of ``points`` (N, D) (``Grid.covering``)."""
    s = model.net.coordinates(points.float().to(model.log_z.device)).cpu()  # (P, N, 2)
    return [Grid.covering(pair, resolution) for pair in s]


@torch.no_grad()
def pair_log_normaliser(model: nn.Module, test: Tensor, resolution: int = PAIR_GRID_RESOLUTION) -> dict[str, float]:
    """log ∫ exp(model.log_prob(x)) dx of a model whose ``net`` is a ``PairSumNet``, exactly (module docstring).

    Pair j's factor (``pair_log_density``) is summed over the grid covering the test points' s_j (``pair_grids``,
    ``resolution`` cells per side) and the rings around it (``plane_mass``). Returns ``log_normaliser`` (0 when the
    learned log_z is exact), ``normaliser_error`` = its absolute value, ``pair_grid_check`` (the sum of the pairs'
    |fine − 2×-coarser| sums, an error estimate) and ``pair_mass_converged`` (every pair's rings ended).
    """
    device = model.log_z.device
    total, check, converged = 0.0, 0.0, True
    for j, grid in enumerate(pair_grids(model, test, resolution)):
        mass = plane_mass(pair_log_density(model, j), grid, device)
        total += mass.log_total
        check += abs(mass.log_total - mass.log_total_coarse)
        converged &= mass.converged
    if getattr(model, "base", None) is None:
        total -= torch.linalg.slogdet(model.net.unmixing.double().cpu())[1].item()
    log_normaliser = total - model.log_z.item()
    return {"log_normaliser": log_normaliser, "normaliser_error": abs(log_normaliser), "pair_grid_check": check,
            "pair_mass_converged": converged}


@torch.no_grad()
def pair_sample(model: nn.Module, n: int, generator: torch.Generator | None, points: Tensor,
                resolution: int = PAIR_GRID_RESOLUTION) -> Tensor:
    """n independent draws (n, D) from a pair energy, exact up to the grids: per pair j, s_j from its factor on
    the grid covering ``points``' s_j (``grid_sample``: inverse CDF over the cells, uniform within one), then
    x = μ + W⁻¹ s. On the model's device; the random numbers come from the CPU ``generator``."""
    device = model.log_z.device
    s = torch.cat([grid_sample(pair_log_density(model, j), grid, n, generator, device)
                   for j, grid in enumerate(pair_grids(model, points, resolution))], dim=1)  # (n, D)
    mixing = torch.linalg.inv(model.net.unmixing.double().cpu()).float()
    return (model.net.loc.cpu() + s @ mixing.T).to(device)


__all__ = ["PairLinear", "PairSumNet", "pair_grids", "pair_log_density", "pair_log_normaliser", "pair_sample"]
