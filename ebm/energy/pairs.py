"""A noise for D-dimensional data made of independent 2D parts: a product of 2D Gaussian mixtures in a fitted basis.

    s = W (x − μ),   s = (s_1, …, s_P) cut into P = D/2 pairs,
    q(x) = |det W| · Π_j q_j(s_j),   q_j a 2D Gaussian mixture (``fitted_mixture``: K widened components plus
                                      a defensive one),

a density by the change of variables x ↦ s. Why: a mixture over all D coordinates needs a component per mode,
and D/2 independent copies of a 2D set with m modes have m^(D/2) of them (8gaussians at D = 16: 8⁸ ≈ 1.7·10⁷),
so a K-component mixture leaves almost all of them uncovered and NCE's classifier never sees noise there (the
density chasm). A product of per-pair mixtures covers every combination of the pairs' modes with K per pair.

Fitting is independent subspace analysis (Cardoso 1998, "Multidimensional independent component analysis";
Theis 2006), in three steps:

1. FastICA (scikit-learn) whitens the data and rotates it to maximally non-Gaussian components. Within a
   dependent pair no rotation makes the two coordinates independent, so ICA leaves each pair in some rotation of
   its own plane, but it separates the planes from each other; the components are then paired greedily by their
   mutual information (a histogram estimate on rank bins), and each pair gets its own mixture. The per-pair
   rotation left by ICA does not matter: the pair's mixture has full covariances.
2. ICA's planes are close to the true ones but not on them (up to 0.15% of a pair's energy lies in other
   planes at D = 16 from 10⁴ points), and a thin structure such as a pinwheel arm is blurred by
   that much of its neighbours' spread. So (μ, W) are refined by maximum likelihood of q itself, the mixtures
   held fixed: ``REFINE_STEPS`` full-batch Adam steps on −mean log q (the log|det W| term keeps it a density).
3. The mixtures are fitted again in the refined basis.

Nothing here knows the data's rotation: the fit sees only the points. It is the right noise exactly when the
data has independent 2D parts in some linear basis (this package's ``--dims D`` sets by construction); on data
without that structure it is a product of marginal pair mixtures, still a normalised density but a poor one.
"""

from __future__ import annotations

import math
import warnings

import torch
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

MI_BINS = 16  # equal-frequency bins per component of the mutual-information histogram
REFINE_STEPS, REFINE_LR = 300, 1e-3  # Adam on (μ, W) in step 2 (pinwheel, D = 16: 0.12 → 0.083 nats per copy)


class PairMixtureNoise(nn.Module):
    """q(x) = |det W| Π_j q_j((W(x − μ))_j): a product of P 2D Gaussian mixtures of K components each, D = 2P.

    Buffers: ``loc`` μ (D,), ``unmixing`` W (D, D), ``mixing`` W⁻¹ (D, D), ``log_det`` log |det W| (),
    ``logits`` (P, K), ``means`` (P, K, 2), ``scale_tril`` (P, K, 2, 2); pair j is s[2j : 2j + 2].
    """

    def __init__(self, loc: Tensor, unmixing: Tensor, logits: Tensor, means: Tensor, scale_tril: Tensor):
        super().__init__()
        dims = loc.shape[-1]
        pairs, k = logits.shape
        if (dims != 2 * pairs or unmixing.shape != (dims, dims) or means.shape != (pairs, k, 2)
                or scale_tril.shape != (pairs, k, 2, 2)):
            raise ValueError(f"inconsistent shapes: loc {tuple(loc.shape)}, unmixing {tuple(unmixing.shape)}, "
                             f"logits {tuple(logits.shape)}, means {tuple(means.shape)}, "
                             f"scale_tril {tuple(scale_tril.shape)} (need D = 2P)")
        if not (torch.equal(scale_tril, scale_tril.tril()) and (scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()):
            raise ValueError("scale_tril must be lower-triangular with a positive diagonal")
        sign, log_det = torch.linalg.slogdet(unmixing.double())
        if sign == 0:
            raise ValueError("the unmixing matrix is singular")
        self.register_buffer("loc", loc.float())
        self.register_buffer("unmixing", unmixing.float())
        self.register_buffer("mixing", torch.linalg.inv(unmixing.double()).float())
        self.register_buffer("log_det", log_det.float())
        self.register_buffer("logits", logits.float())
        self.register_buffer("means", means.float())
        self.register_buffer("scale_tril", scale_tril.float())

    @classmethod
    def empty(cls, components: int, dims: int) -> PairMixtureNoise:
        """Placeholder of the right shapes (K = ``components`` per pair, D = ``dims``), for ``load_state_dict``."""
        if dims < 2 or dims % 2:
            raise ValueError(f"the pair noise needs an even dimension D ≥ 2, got {dims}")
        pairs = dims // 2
        return cls(torch.zeros(dims), torch.eye(dims), torch.zeros(pairs, components),
                   torch.zeros(pairs, components, 2), torch.eye(2).repeat(pairs, components, 1, 1))

    @property
    def dims(self) -> int:
        """D, the dimension of the points."""
        return self.loc.shape[-1]

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) = log |det W| + Σ_j log q_j(s_j), s = W(x − μ): (..., D) → (...)."""
        if x.shape[-1:] != (self.dims,):
            raise ValueError(f"expected points of shape (..., {self.dims}), got {tuple(x.shape)}")
        s = (x - self.loc) @ self.unmixing.T  # (..., D)
        return self.pair_log_prob(s.unflatten(-1, (-1, 2))).sum(-1) + self.log_det

    def pair_log_prob(self, s: Tensor, pair: int | None = None) -> Tensor:
        """log q_j(s_j) for every pair, s (..., P, 2) → (..., P); or pair ``pair``'s alone, s (..., 2) → (...).

        log q_j(s) = logsumexp_k [log w_jk − log|L_jk| − log 2π − ½|L_jk⁻¹(s − m_jk)|²], written out for 2×2
        lower-triangular L = [[a, 0], [b, c]] (L⁻¹ = [[1/a, 0], [−b/(ac), 1/c]]): about twice as fast as
        ``torch.distributions``' general mixture, which matters in every NCE step at large D.
        """
        index = slice(None) if pair is None else pair
        tril, means = self.scale_tril[index], self.means[index]  # ([P,] K, 2, 2), ([P,] K, 2)
        a, b, c = tril[..., 0, 0], tril[..., 1, 0], tril[..., 1, 1]  # ([P,] K)
        log_weight = self.logits[index].log_softmax(-1) - a.log() - c.log() - math.log(2 * math.pi)
        d = s.unsqueeze(-2) - means  # (..., [P,] K, 2)
        z0 = d[..., 0] / a
        z1 = (d[..., 1] - b * z0) / c
        return (log_weight - 0.5 * (z0 * z0 + z1 * z1)).logsumexp(-1)

    def sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Tensor:
        """Draw (*shape, D) points on the buffers' device: per pair a component k by its weight and
        s_j = m_jk + L_jk·z, then x = μ + W⁻¹s. The random numbers come from the CPU ``generator``."""
        shape = torch.Size(shape)
        n, (pairs, k) = shape.numel(), self.logits.shape
        u = torch.rand(pairs, n, generator=generator).to(self.loc.device)  # (P, n)
        z = torch.randn(pairs, n, 2, 1, generator=generator).to(self.loc.device)  # (P, n, 2, 1)
        cdf = self.logits.softmax(-1).cumsum(-1)  # (P, K)
        component = torch.searchsorted(cdf, u, right=True).clamp(max=k - 1)  # (P, n)
        row = torch.arange(pairs, device=self.loc.device)[:, None]  # (P, 1)
        s = self.means[row, component] + (self.scale_tril[row, component] @ z).squeeze(-1)  # (P, n, 2)
        x = self.loc + s.transpose(0, 1).reshape(n, self.dims) @ self.mixing.T  # (n, D)
        return x.reshape(*shape, self.dims)


def mutual_information(s: Tensor, bins: int = MI_BINS) -> Tensor:
    """Histogram estimate of the mutual information between every two columns of ``s`` (N, D): (D, D), nats.

    Each column is cut into ``bins`` equal-frequency bins by rank, so the marginals are uniform and
    I(i, j) = Σ_ab p_ab log(p_ab · bins²). The estimate is biased up by about (bins − 1)²/(2N) alike for every
    pair, which leaves the ranking that pairing needs intact. The diagonal is set to −inf.
    """
    n, dims = s.shape
    codes = (s.argsort(0).argsort(0) * bins // n)  # (N, D) ranks → bins 0..bins−1
    information = torch.full((dims, dims), float("-inf"), dtype=torch.float64)
    for i in range(dims):
        for j in range(i + 1, dims):
            p = torch.bincount(codes[:, i] * bins + codes[:, j], minlength=bins * bins).double() / n
            p = p[p > 0]
            information[i, j] = information[j, i] = (p * (p * bins * bins).log()).sum()
    return information


def pair_components(s: Tensor) -> list[tuple[int, int]]:
    """Pair the columns of ``s`` (N, D), D even, greedily: the most dependent two first, then the most dependent
    two of the rest, … (mutual information, ``mutual_information``). Returns D/2 pairs of column indices."""
    information = mutual_information(s)
    order = information.flatten().argsort(descending=True).tolist()
    dims, used, pairs = s.shape[1], set(), []
    for flat in order:
        i, j = divmod(flat, dims)
        if i < j and i not in used and j not in used:
            pairs.append((i, j))
            used.update((i, j))
    return pairs


def refine_basis(noise: PairMixtureNoise, data: Tensor, steps: int = REFINE_STEPS,
                 lr: float = REFINE_LR) -> tuple[Tensor, Tensor]:
    """(μ, W) after ``steps`` full-batch Adam steps on −mean log q(data) over μ and W alone, q's mixtures held fixed:
    maximum likelihood of the basis. ``data``: (N, D). Returns μ (D,) and W (D, D), float32 on the CPU."""
    loc = nn.Parameter(noise.loc.detach().clone())
    unmixing = nn.Parameter(noise.unmixing.detach().clone())
    optimizer = torch.optim.Adam([loc, unmixing], lr=lr)
    points = data.float().to(noise.loc.device)
    for _ in range(steps):
        s = ((points - loc) @ unmixing.T).unflatten(-1, (-1, 2))  # (N, P, 2)
        loss = -(noise.pair_log_prob(s).sum(-1).mean() + torch.linalg.slogdet(unmixing)[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loc.detach().cpu(), unmixing.detach().cpu()


def fit_pair_mixture(data: Tensor, components: int = 8, widen: float = 1.5, seed: int = 0,
                     refine_steps: int = REFINE_STEPS) -> PairMixtureNoise:
    """Fit a ``PairMixtureNoise`` to ``data`` (N, D), D even (module docstring): FastICA's unmixing (seeded by
    ``seed``), its components paired by mutual information, on each pair ``fitted_mixture(pair, components, widen,
    seed)`` (K = components + 1 with the defensive one); then, unless ``refine_steps`` is 0, the basis refined by
    maximum likelihood (``refine_basis``) and the mixtures fitted again in it. BLAS runs on torch's number of
    threads."""
    if data.dim() != 2 or data.shape[1] < 2 or data.shape[1] % 2 or len(data) < 2:
        raise ValueError(f"data must have shape (N, D) with N ≥ 2 and D even, got {tuple(data.shape)}")
    points = data.double().cpu()
    ica = FastICA(points.shape[1], whiten="unit-variance", max_iter=1000, random_state=seed)
    with threadpool_limits(torch.get_num_threads()), warnings.catch_warnings():
        # Within a dependent pair ICA has no unique answer and may stop at max_iter; only the planes matter.
        warnings.simplefilter("ignore", ConvergenceWarning)
        ica.fit(points.numpy())
    loc, unmixing = torch.from_numpy(ica.mean_), torch.from_numpy(ica.components_)  # (D,), (D, D)
    order = [c for pair in pair_components((points - loc) @ unmixing.T) for c in pair]
    noise = _pair_mixtures(points, loc, unmixing[order], components, widen, seed)
    if refine_steps:
        noise = _pair_mixtures(points, *refine_basis(noise, points, refine_steps), components, widen, seed)
    return noise


def _pair_mixtures(points: Tensor, loc: Tensor, unmixing: Tensor, components: int, widen: float,
                   seed: int) -> PairMixtureNoise:
    """The pair noise of basis (μ, W) with a ``fitted_mixture`` on each pair of s = W(points − μ)."""
    from ebm.energy.noise import fitted_mixture  # noise.py registers this noise by name: import at call time

    s = (points - loc.double()) @ unmixing.double().T  # (N, D)
    mixtures = [fitted_mixture(s[:, j : j + 2], components, widen, seed) for j in range(0, s.shape[1], 2)]
    return PairMixtureNoise(loc, unmixing, torch.stack([m.logits for m in mixtures]),
                            torch.stack([m.loc for m in mixtures]), torch.stack([m.scale_tril for m in mixtures]))


__all__ = ["PairMixtureNoise", "fit_pair_mixture", "mutual_information", "pair_components", "refine_basis"]
