"""A small normalising flow as an NCE noise in 2D: fitted to the data by maximum likelihood, then frozen.

    x = loc + scale ⊙ T⁻¹(z),   z ~ N(0, I),
    log q(x) = log N(T(u); 0, I) + log |det ∂T/∂u| − Σ log scale,   u = (x − loc) / scale,

with T a neural spline flow (Durkan et al. 2019, "Neural Spline Flows"; zuko's ``NSF``: autoregressive
monotonic rational-quadratic splines, which in 2D are coupling layers). The per-axis affine standardisation
(``loc``, ``scale``: the data's mean and standard deviation) puts the data inside the splines' domain
[−5, 5], outside which zuko's splines are the identity.

``FlowNoise`` follows the noise interface of ``ebm.energy.noise``: ``log_prob(x)``: (..., 2) → (...),
``sample(shape, generator)`` → (*shape, 2), with z drawn on the CPU from the CPU generator and moved to the
module's device; ``state_dict`` carries everything, and ``FlowNoise.empty(**hyper_parameters)`` rebuilds the
architecture so that a checkpoint loads without refitting. ``rsample_and_log_prob`` keeps the gradients, for
flow contrastive estimation (``ebm.energy.estimators``), which trains the flow further.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import zuko
from torch import Tensor, nn


@dataclass(frozen=True)
class FlowArchitecture:
    """The hyper-parameters that fix a ``FlowNoise``'s parameter shapes (what ``empty`` needs)."""

    transforms: int = 3  # spline transforms
    hidden: int = 64  # units per hidden layer of each transform's conditioner
    layers: int = 2  # hidden layers of each conditioner
    bins: int = 24  # spline bins (rings: KL(data ‖ flow) 0.55 nats with 8 bins, 0.14 with 24, at 1000 steps)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"flow {name} must be a positive integer, got {value!r}")


class FlowNoise(nn.Module):
    """A 2D neural spline flow behind a per-axis affine standardisation.

    Buffers ``loc`` (2,) and ``scale`` (2,); parameters in ``flow`` (zuko's NSF).
    """

    def __init__(self, loc: Tensor, scale: Tensor, architecture: FlowArchitecture = FlowArchitecture()):
        super().__init__()
        if loc.shape != (2,) or scale.shape != (2,) or not (scale > 0).all():
            raise ValueError(f"loc and scale must have shape (2,) and scale be positive, got {loc}, {scale}")
        self.architecture = architecture
        self.flow = zuko.flows.NSF(
            2,
            transforms=architecture.transforms,
            hidden_features=(architecture.hidden,) * architecture.layers,
            bins=architecture.bins,
        )
        self.register_buffer("loc", loc.float())
        self.register_buffer("scale", scale.float())

    @classmethod
    def empty(cls, architecture: FlowArchitecture = FlowArchitecture()) -> FlowNoise:
        """An unfitted flow of the right shapes, frozen, to be filled by ``load_state_dict``."""
        return cls(torch.zeros(2), torch.ones(2), architecture).requires_grad_(False)

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x): (..., 2) → (...)."""
        if x.shape[-1:] != (2,):
            raise ValueError(f"expected points of shape (..., 2), got {tuple(x.shape)}")
        u = (x - self.loc) / self.scale  # (..., 2)
        return self.flow().log_prob(u) - self.scale.log().sum()

    def _draw_base(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None) -> Tensor:
        """z ~ N(0, I): (*shape, 2), drawn on the CPU from ``generator`` and moved to the module's device."""
        return torch.randn(*shape, 2, generator=generator).to(self.loc.device)

    def rsample_and_log_prob(
        self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised points x = loc + scale ⊙ T⁻¹(z) (*shape, 2) and their log q (*shape), with gradients."""
        z = self._draw_base(shape, generator)
        distribution = self.flow()
        u, ladj = distribution.transform.inv.call_and_ladj(z)  # ladj = log |det ∂T⁻¹/∂z|, (*shape,)
        log_q = distribution.base.log_prob(z) - ladj - self.scale.log().sum()
        return self.loc + self.scale * u, log_q

    @torch.no_grad()
    def sample(self, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None) -> Tensor:
        """Draw (*shape, 2) points on the module's device (no gradients)."""
        u = self.flow().transform.inv(self._draw_base(shape, generator))
        return self.loc + self.scale * u


def fit_flow_noise(
    data: Tensor,
    steps: int = 1000,
    seed: int = 0,
    batch_size: int = 256,
    lr: float = 3e-3,
    architecture: FlowArchitecture = FlowArchitecture(),
) -> FlowNoise:
    """Fit a ``FlowNoise`` to ``data`` (N, 2) by maximum likelihood and return it frozen, on the CPU.

    Adam on the mean negative log-likelihood of minibatches drawn with replacement, its learning rate decayed
    by a cosine from ``lr`` to 0; the initial weights and the minibatches follow ``seed`` only (torch's global
    generator is left as it was). The defaults take 11–15 s of CPU time on one core (a loaded machine) and reach
    KL(data ‖ flow) ≈ 0.03 (8gaussians), 0.04 (pinwheel), 0.10 (checkerboard), 0.07 (2spirals), 0.14 (rings).
    """
    if data.dim() != 2 or data.shape[1] != 2 or len(data) < 2:
        raise ValueError(f"data must have shape (N, 2) with N ≥ 2, got {tuple(data.shape)}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    data = data.detach().float().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = FlowNoise(data.mean(0), data.std(0), architecture)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(noise.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (batch_size,), generator=generator)]  # (batch_size, 2)
        loss = -noise.log_prob(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return noise.requires_grad_(False)


__all__ = ["FlowArchitecture", "FlowNoise", "fit_flow_noise"]
