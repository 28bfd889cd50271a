"""Noise distributions for NCE in D dimensions (2D by default), as modules whose parameters are buffers.

Each has ``dims`` (D), ``sample(shape, generator=None)`` → (*shape, D) and ``log_prob(x)``: (..., D) → (...),
built on ``torch.distributions``; ``state_dict`` carries everything, so a checkpoint restores the exact noise.

    gaussian  the seed's fixed N(0, 4·I)
    fitted    a Gaussian with the data's mean and covariance, the covariance widened by a factor
    gmm       a Gaussian mixture fitted with scikit-learn, each covariance widened by a factor, plus a
              broad "defensive" component (the data's Gaussian, twice as wide, 5% of the mass)
    flow      a neural spline flow (zuko) fitted to the data by maximum likelihood, then frozen
              (``ebm.energy.flow``)
    pairs     a product of 2D Gaussian mixtures (each like gmm's) in a basis fitted by independent subspace
              analysis: for data made of independent 2D parts, as the ``--dims D`` sets (``ebm.energy.pairs``)

The defensive component keeps q away from zero between and around the modes. Without it, NCE sees almost no
noise points where the fitted mixture has no mass, so nothing pushes the model's density down there: a
pinwheel run grew a spurious blob at the edge of the plane that way (KL 0.073 instead of about 0.03).
"""

from __future__ import annotations

import torch
from sklearn.mixture import GaussianMixture as _SkGaussianMixture
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from ebm.energy.flow import FlowNoise, fit_flow_noise
from ebm.energy.pairs import PairMixtureNoise, fit_pair_mixture


def _check_data(data: Tensor) -> None:
    if data.dim() != 2 or data.shape[1] < 1 or len(data) < 2:
        raise ValueError(f"data must have shape (N, D) with N ≥ 2 and D ≥ 1, got {tuple(data.shape)}")


class GaussianMixtureNoise(nn.Module):
    """A mixture of K full-covariance Gaussians in D dimensions (K = 1 is a single Gaussian).

    Buffers: ``logits`` (K,), ``loc`` (K, D), ``scale_tril`` (K, D, D).
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale_tril: Tensor):
        super().__init__()
        k, d = logits.shape[0], loc.shape[-1]
        if loc.shape != (k, d) or scale_tril.shape != (k, d, d):
            raise ValueError(
                f"inconsistent shapes: logits {tuple(logits.shape)}, loc {tuple(loc.shape)}, "
                f"scale_tril {tuple(scale_tril.shape)}"
            )
        if not (torch.equal(scale_tril, scale_tril.tril()) and (scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()):
            raise ValueError("scale_tril must be lower-triangular with a positive diagonal")
        self.register_buffer("logits", logits.float())
        self.register_buffer("loc", loc.float())
        self.register_buffer("scale_tril", scale_tril.float())

    @classmethod
    def empty(cls, components: int, dims: int = 2) -> GaussianMixtureNoise:
        """Placeholder of the right shapes (K = ``components``, D = ``dims``), to be filled by ``load_state_dict``."""
        return cls(torch.zeros(components), torch.zeros(components, dims), torch.eye(dims).repeat(components, 1, 1))

    @property
    def dims(self) -> int:
        """D, the dimension of the points."""
        return self.loc.shape[-1]

    def distribution(self) -> MixtureSameFamily:
        # Buffers are checked once at construction, so the per-call argument checks are skipped.
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False),
            MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False),
            validate_args=False,
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x): (..., D) → (...)."""
        if x.shape[-1:] != (self.dims,):
            raise ValueError(f"expected points of shape (..., {self.dims}), got {tuple(x.shape)}")
        return self.distribution().log_prob(x)

    def sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Tensor:
        """Draw (*shape, D) points on the buffers' device: a component k by its weight, then loc_k + L_k·z.

        The random numbers (u ~ U[0, 1) for k by inverting the weights' CDF, z ~ N(0, I)) come from the CPU
        ``generator`` (torch's global CPU generator when None), so a seed gives the same points on every device.
        """
        shape = torch.Size(shape)
        n = shape.numel()
        u = torch.rand(n, generator=generator).to(self.loc.device)  # (n,)
        z = torch.randn(n, self.dims, 1, generator=generator).to(self.loc.device)  # (n, D, 1)
        cdf = self.logits.softmax(0).cumsum(0)  # (K,)
        k = torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1)  # (n,)
        x = self.loc[k] + (self.scale_tril[k] @ z).squeeze(-1)  # (n, D)
        return x.reshape(*shape, self.dims)


def fixed_gaussian(std: float = 2.0, dims: int = 2) -> GaussianMixtureNoise:
    """N(0, std²·I) in ``dims`` dimensions; the seed's default is std = 2, i.e. N(0, 4·I)."""
    return GaussianMixtureNoise(torch.zeros(1), torch.zeros(1, dims), std * torch.eye(dims)[None])


def fitted_gaussian(data: Tensor, widen: float = 1.0) -> GaussianMixtureNoise:
    """N(mean, widen·cov) with the mean and covariance of ``data`` (N, D)."""
    _check_data(data)
    data = data.double()
    cov = torch.cov(data.T) * widen
    return GaussianMixtureNoise(torch.zeros(1), data.mean(0)[None], torch.linalg.cholesky(cov)[None])


DEFENSIVE_WEIGHT = 0.05  # mass of the broad component of the gmm noise
DEFENSIVE_WIDEN = 4.0  # its covariance: the data's covariance times this (standard deviations × 2)


def fitted_mixture(data: Tensor, components: int = 8, widen: float = 1.5, seed: int = 0) -> GaussianMixtureNoise:
    """A K-component Gaussian mixture fitted to ``data`` (N, D) by EM (scikit-learn), covariances × widen,
    plus one defensive component N(mean, 4·cov) of the whole data with weight 0.05: K + 1 components.

    EM is started from five k-means initialisations and the most likely fit is kept (one start can merge
    two modes of 8gaussians into one component). Its BLAS calls use torch's number of threads: on the shared
    2-core machine, 10,000 points at D = 16 took 436 s with numpy's default threads and 10 s with one.
    """
    gm = _SkGaussianMixture(components, covariance_type="full", n_init=5, random_state=seed, reg_covar=1e-4)
    with threadpool_limits(torch.get_num_threads()):  # BLAS as many threads as torch's (all cores thrash when shared)
        gm.fit(data.double().cpu().numpy())
    broad = fitted_gaussian(data, DEFENSIVE_WIDEN)
    weights = torch.cat([torch.from_numpy(gm.weights_) * (1 - DEFENSIVE_WEIGHT), torch.tensor([DEFENSIVE_WEIGHT])])
    return GaussianMixtureNoise(
        weights.log(),
        torch.cat([torch.from_numpy(gm.means_).float(), broad.loc]),
        torch.cat([torch.linalg.cholesky(torch.from_numpy(gm.covariances_) * widen).float(), broad.scale_tril]),
    )


NOISE_NAMES = ("gaussian", "fitted", "gmm", "flow", "pairs")


def make_noise(name: str, data: Tensor, components: int = 8, widen: float = 1.5, seed: int = 0) -> nn.Module:
    """Build the noise ``name`` (one of NOISE_NAMES) in the dimension D of ``data`` (N, D), fitted to the data
    where it needs them (gaussian only reads D).

    ``widen`` multiplies the fitted covariances (fitted, gmm, pairs); ``components`` is K for gmm and per pair for
    pairs; ``seed`` seeds the mixtures' EM starts, the pairs' ICA and the flow's fit.
    """
    _check_data(data)
    if name == "gaussian":
        return fixed_gaussian(dims=data.shape[1])
    if name == "fitted":
        return fitted_gaussian(data, widen)
    if name == "gmm":
        return fitted_mixture(data, components, widen, seed)
    if name == "flow":
        return fit_flow_noise(data, seed=seed)
    if name == "pairs":
        return fit_pair_mixture(data, components, widen, seed)
    raise ValueError(f"unknown noise {name!r}; choose one of {', '.join(NOISE_NAMES)}")


def ais_start(name: str, noise: nn.Module) -> nn.Module:
    """Where annealed importance sampling starts: the noise ``name`` without its defensive component.

    gmm and pairs noises end in a broad component of weight 0.05 (``fitted_mixture``), there for NCE, so that
    noise points also fall where the data are not. AIS has no use for it: any normalised start gives the same
    bounds in expectation, and the closer the start is to the model the tighter they are. Chains that start in the
    broad component must travel into the modes along the path and, at D = 16 where some pair of a third of the
    chains starts there, they lag and loosen the forward bound (a trained 8gaussians pair energy: lower bound
    0.92 nats below the exact log Z at K = 300 from the noise, 0.001 from the noise without it). The other noises,
    and a mixture of one component, are returned as they are.
    """
    if name == "gmm" and len(noise.logits) > 1:
        return GaussianMixtureNoise(noise.logits[:-1], noise.loc[:-1], noise.scale_tril[:-1])
    if name == "pairs" and noise.logits.shape[1] > 1:
        return PairMixtureNoise(noise.loc, noise.unmixing, noise.logits[:, :-1], noise.means[:, :-1],
                                noise.scale_tril[:, :-1])
    return noise


def empty_noise(name: str, components: int = 8, dims: int = 2) -> nn.Module:
    """A noise module of the right shapes for ``name`` in ``dims`` dimensions, to restore from a state dict
    without refitting (``components``: the gmm's or each pair's K, as given to ``make_noise``)."""
    if name not in NOISE_NAMES:
        raise ValueError(f"unknown noise {name!r}; choose one of {', '.join(NOISE_NAMES)}")
    if name == "flow":
        return FlowNoise.empty(dims=dims)
    if name == "pairs":
        return PairMixtureNoise.empty(components + 1, dims)
    return GaussianMixtureNoise.empty(components + 1 if name == "gmm" else 1, dims)
