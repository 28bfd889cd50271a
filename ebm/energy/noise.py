"""Noise distributions for NCE in 2D, as modules whose parameters are buffers.

Each has ``sample(shape, generator=None)`` → (*shape, 2) and ``log_prob(x)``: (..., 2) → (...), built on
``torch.distributions``; ``state_dict`` carries everything, so a checkpoint restores the exact noise.

    gaussian  the seed's fixed N(0, 4·I)
    fitted    a Gaussian with the data's mean and covariance, the covariance widened by a factor
    gmm       a Gaussian mixture fitted with scikit-learn, each covariance widened by a factor, plus a
              broad "defensive" component (the data's Gaussian, twice as wide, 5% of the mass)
    flow      a neural spline flow (zuko) fitted to the data by maximum likelihood, then frozen
              (``ebm.energy.flow``)

The defensive component keeps q away from zero between and around the modes. Without it, NCE sees almost no
noise points where the fitted mixture has no mass, so nothing pushes the model's density down there: a
pinwheel run grew a spurious blob at the edge of the plane that way (KL 0.073 instead of about 0.03).
"""

from __future__ import annotations

import torch
from sklearn.mixture import GaussianMixture as _SkGaussianMixture
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from ebm.energy.flow import FlowNoise, fit_flow_noise


def _check_points(x: Tensor) -> None:
    if x.shape[-1:] != (2,):
        raise ValueError(f"expected points of shape (..., 2), got {tuple(x.shape)}")


class GaussianMixtureNoise(nn.Module):
    """A mixture of K full-covariance Gaussians in 2D (K = 1 is a single Gaussian).

    Buffers: ``logits`` (K,), ``loc`` (K, 2), ``scale_tril`` (K, 2, 2).
    """

    def __init__(self, logits: Tensor, loc: Tensor, scale_tril: Tensor):
        super().__init__()
        k = logits.shape[0]
        if loc.shape != (k, 2) or scale_tril.shape != (k, 2, 2):
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
    def empty(cls, components: int) -> GaussianMixtureNoise:
        """Placeholder of the right shapes, to be filled by ``load_state_dict``."""
        return cls(torch.zeros(components), torch.zeros(components, 2), torch.eye(2).repeat(components, 1, 1))

    def distribution(self) -> MixtureSameFamily:
        # Buffers are checked once at construction, so the per-call argument checks are skipped.
        return MixtureSameFamily(
            Categorical(logits=self.logits, validate_args=False),
            MultivariateNormal(self.loc, scale_tril=self.scale_tril, validate_args=False),
            validate_args=False,
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x): (..., 2) → (...)."""
        _check_points(x)
        return self.distribution().log_prob(x)

    def sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Tensor:
        """Draw (*shape, 2) points on the buffers' device: a component k by its weight, then loc_k + L_k·z.

        The random numbers (u ~ U[0, 1) for k by inverting the weights' CDF, z ~ N(0, I)) come from the CPU
        ``generator`` (torch's global CPU generator when None), so a seed gives the same points on every device.
        """
        shape = torch.Size(shape)
        n = shape.numel()
        u = torch.rand(n, generator=generator).to(self.loc.device)  # (n,)
        z = torch.randn(n, 2, 1, generator=generator).to(self.loc.device)  # (n, 2, 1)
        cdf = self.logits.softmax(0).cumsum(0)  # (K,)
        k = torch.searchsorted(cdf, u, right=True).clamp(max=len(cdf) - 1)  # (n,)
        x = self.loc[k] + (self.scale_tril[k] @ z).squeeze(-1)  # (n, 2)
        return x.reshape(*shape, 2)


def fixed_gaussian(std: float = 2.0) -> GaussianMixtureNoise:
    """N(0, std²·I); the seed's default is std = 2, i.e. N(0, 4·I)."""
    return GaussianMixtureNoise(torch.zeros(1), torch.zeros(1, 2), std * torch.eye(2)[None])


def fitted_gaussian(data: Tensor, widen: float = 1.0) -> GaussianMixtureNoise:
    """N(mean, widen·cov) with the mean and covariance of ``data`` (N, 2)."""
    data = data.double()
    cov = torch.cov(data.T) * widen
    return GaussianMixtureNoise(torch.zeros(1), data.mean(0)[None], torch.linalg.cholesky(cov)[None])


DEFENSIVE_WEIGHT = 0.05  # mass of the broad component of the gmm noise
DEFENSIVE_WIDEN = 4.0  # its covariance: the data's covariance times this (standard deviations × 2)


def fitted_mixture(data: Tensor, components: int = 8, widen: float = 1.5, seed: int = 0) -> GaussianMixtureNoise:
    """A K-component Gaussian mixture fitted to ``data`` (N, 2) by EM (scikit-learn), covariances × widen,
    plus one defensive component N(mean, 4·cov) of the whole data with weight 0.05: K + 1 components.

    EM is started from five k-means initialisations and the most likely fit is kept (one start can merge
    two modes of 8gaussians into one component).
    """
    gm = _SkGaussianMixture(components, covariance_type="full", n_init=5, random_state=seed, reg_covar=1e-4)
    gm.fit(data.double().cpu().numpy())
    broad = fitted_gaussian(data, DEFENSIVE_WIDEN)
    weights = torch.cat([torch.from_numpy(gm.weights_) * (1 - DEFENSIVE_WEIGHT), torch.tensor([DEFENSIVE_WEIGHT])])
    return GaussianMixtureNoise(
        weights.log(),
        torch.cat([torch.from_numpy(gm.means_).float(), broad.loc]),
        torch.cat([torch.linalg.cholesky(torch.from_numpy(gm.covariances_) * widen).float(), broad.scale_tril]),
    )


NOISE_CHOICES = ("gaussian", "fitted", "gmm", "flow")


def make_noise(name: str, data: Tensor, components: int = 8, widen: float = 1.5, seed: int = 0) -> nn.Module:
    """Build the noise ``name`` (one of NOISE_CHOICES), fitting it to ``data`` (N, 2) where it needs data.

    ``widen`` multiplies the fitted covariances (fitted, gmm); ``components`` is K for gmm; ``seed`` seeds the
    mixture's EM starts and the flow's fit.
    """
    if name == "gaussian":
        return fixed_gaussian()
    if name == "fitted":
        return fitted_gaussian(data, widen)
    if name == "gmm":
        return fitted_mixture(data, components, widen, seed)
    if name == "flow":
        return fit_flow_noise(data, seed=seed)
    raise ValueError(f"unknown noise {name!r}; choose one of {', '.join(NOISE_CHOICES)}")


def empty_noise(name: str, components: int = 8) -> nn.Module:
    """A noise module of the right shapes for ``name``, to restore from a state dict without refitting."""
    if name not in NOISE_CHOICES:
        raise ValueError(f"unknown noise {name!r}; choose one of {', '.join(NOISE_CHOICES)}")
    if name == "flow":
        return FlowNoise.empty()
    return GaussianMixtureNoise.empty(components + 1 if name == "gmm" else 1)
