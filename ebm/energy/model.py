"""The energy network: an MLP energy f(x) with a learnable log-normaliser c = log Z.

    log p(x) = −f(x) − c

NCE learns c like any other parameter (Gutmann & Hyvärinen 2010), so ``log_prob`` is a normalised
log-density once training has converged; ``ebm.energy.evaluate`` measures how close it is.

Optionally the energy is taken relative to a base density b (in practice the NCE noise q):

    f(x) = g(x) − log b(x),   log p(x) = log b(x) − g(x) − c,

with g the MLP. At initialisation (g ≈ 0, c = 0) the model is then b itself, already normalised, and the
network only learns the log-ratio −log(p_data/b) − c, which is bounded and smooth where b covers the data.
With b = q the NCE logit G = −g − c − log ν no longer contains q at all.

Optionally the MLP reads random Fourier features of x (Tancik et al. 2020),

    γ(x) = [x, sin(2π xB), cos(2π xB)],   B (D, m) ~ N(0, σ²), fixed,

which let a smooth network draw sharp edges (the checkerboard's) that it would otherwise blur.

Given a pair basis (μ, W) (the pair noise's, ``ebm.energy.pairs``), the MLP is replaced by a sum of D/2 small MLPs on
the pairs of s = W(x − μ), g(x) = Σ_j g_j(s_j) (``ebm.energy.pair_energy.PairSumNet``): a model that assumes the data
has independent 2D parts, whose normaliser can then be computed exactly in any dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebm.energy.evaluate import Grid
from ebm.energy.pair_energy import PAIR_GRID_RESOLUTION, PairSumNet, pair_sample
from ebm.energy.sampling import grid_sample, mala

ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "tanh": nn.Tanh}
FOURIER_SEED = 7_340_033  # B is drawn from its own generator, so it does not shift the network's initialisation


class FourierFeatures(nn.Module):
    """γ(x) = [x, sin(2π xB), cos(2π xB)]: (N, D) → (N, D + 2m), with the buffer B (D, m) ~ N(0, scale²)."""

    def __init__(self, dims: int, features: int, scale: float):
        super().__init__()
        generator = torch.Generator().manual_seed(FOURIER_SEED + dims)
        self.register_buffer("frequencies", scale * torch.randn(dims, features, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        angles = 2 * torch.pi * x @ self.frequencies  # (N, m)
        return torch.cat([x, angles.sin(), angles.cos()], dim=-1)


class EnergyMLP(nn.Module):
    """MLP energy D → width → … → width → 1 (``depth`` hidden layers) plus the scalar ``log_z``.

    Args:
        width: hidden units per layer.
        depth: number of hidden layers.
        activation: one of ``ACTIVATIONS``.
        base: a module with ``log_prob(x)``: (B, D) → (B,) (e.g. the noise), or None for a plain MLP energy.
        dims: D, the dimension of the points.
        fourier_features: m, random Fourier features the MLP reads besides x (0: x alone).
        fourier_scale: σ, the spread of their frequencies (cycles per unit length).
        basis: (μ (D,), W (D, D)) for a ``PairSumNet`` energy instead of one MLP: ``width`` and ``depth`` are then
            each pair's, and the Fourier features are of the pair's two coordinates.
    """

    def __init__(
        self, width: int = 128, depth: int = 6, activation: str = "silu", base: nn.Module | None = None, dims: int = 2,
        fourier_features: int = 0, fourier_scale: float = 1.0, basis: tuple[Tensor, Tensor] | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if width < 1 or depth < 1 or dims < 1:
            raise ValueError(f"width, depth and dims must be positive, got width={width}, depth={depth}, dims={dims}")
        inputs = 2 if basis is not None else dims  # what one MLP reads
        features = FourierFeatures(inputs, fourier_features, fourier_scale) if fourier_features else nn.Identity()
        if basis is not None:
            self.net = PairSumNet(*basis, width, depth, ACTIVATIONS[activation], features,
                                  inputs + 2 * fourier_features)
        else:
            layers: list[nn.Module] = [features] if fourier_features else []
            for i in range(depth):
                layers += [nn.Linear(inputs + 2 * fourier_features if i == 0 else width, width),
                           ACTIVATIONS[activation]()]
            self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        self.log_z = nn.Parameter(torch.zeros(()))
        self.base = base
        self.dims = dims

    def energy(self, x: Tensor) -> Tensor:
        """f(x) = g(x) [− log b(x) with a base]: (B, D) → (B,)."""
        g = self.net(x).squeeze(-1)  # (B,)
        return g if self.base is None else g - self.base.log_prob(x)

    def log_ratio(self, x: Tensor) -> Tensor:
        """log p(x) − log b(x) = −g(x) − log_z: (B, D) → (B,) (with no base, b = 1 and this is log p)."""
        return -self.net(x).squeeze(-1) - self.log_z

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = −f(x) − log_z: (B, D) → (B,)."""
        return -self.energy(x) - self.log_z

    def sample(self, n: int, generator: torch.Generator | None = None, method: str = "auto", **options) -> Tensor:
        """n points (n, D) from p ∝ exp(−f), D = the input size; all random numbers from the CPU ``generator``.

        method:
            "grid" (D = 2): exact up to the grid (``sampling.grid_sample``), float32 on the CPU, on
                ``options["grid"]`` or else ``Grid(options["bound"], options.get("resolution", 256))``; with
                neither, the grid covering 10⁴ draws of the base noise (``Grid.covering``).
            "pairs" (a pair energy, any D): exact up to the grids, one per pair covering ``options["points"]``
                (N, D) or else 10⁴ draws of the base noise (``pair_energy.pair_sample``), on the model's device.
            "mala" (any D): the last states of n MALA chains started from the base noise (N(0, I) without one),
                on the model's device; options go to ``sampling.mala`` (defaults steps=100, step_size=0.1).
            "auto": "grid" when D = 2, "pairs" for a pair energy, else "mala".
        """
        dims, pairs = self.dims, isinstance(self.net, PairSumNet)
        if method == "auto":
            method = "grid" if dims == 2 else ("pairs" if pairs else "mala")
        if method == "pairs":
            if not pairs or (self.base is None and "points" not in options):
                raise ValueError("the pairs sampler needs a pair energy (--energy pairs) and points without a base")
            points = options["points"] if "points" in options else self.base.sample((10_000,), generator)
            return pair_sample(self, n, generator, points, options.get("resolution", PAIR_GRID_RESOLUTION))
        if method == "grid":
            if dims != 2 or (self.base is None and "grid" not in options and "bound" not in options):
                raise ValueError(f"the grid sampler needs D = 2 (got {dims}) and a grid or bound without a base")
            if "grid" in options:
                grid = options["grid"]
            elif "bound" in options:
                grid = Grid(options["bound"], options.get("resolution", 256))
            else:
                grid = Grid.covering(self.base.sample((10_000,), generator).cpu(), options.get("resolution", 256))
            return grid_sample(self.log_prob, grid, n, generator, self.log_z.device)
        if method != "mala":
            raise ValueError(f"unknown method {method!r}; choose one of auto, grid, pairs, mala")
        if self.base is not None:
            x0 = self.base.sample((n,), generator)
        else:
            x0 = torch.randn(n, dims, generator=generator).to(self.log_z)
        options = {"steps": 100, "step_size": 0.1, **options}
        return mala(self.log_prob, x0, generator=generator, **options).samples[-1]
