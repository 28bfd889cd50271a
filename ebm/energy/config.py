"""The config of a 2D energy-model run: every option of ``python train.py --dataset <toy set>``.

``EnergyConfig`` is a dataclass declared with ``ebm.harness.option``: its fields are the command-line flags
(``noise_ratio`` → ``--noise-ratio``), validated on construction, saved in ``config.json`` and in checkpoints.
The estimators' own options (``cd_steps``, ``fce_rule``, …) and ``noise_ratio`` (ν, noise points per data point)
come from ``EstimatorOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebm.data.toy import TOY_DATASETS
from ebm.energy.estimators import ESTIMATOR_OPTION_FIELDS, ESTIMATORS, EstimatorOptions, estimator_class
from ebm.energy.model import ACTIVATIONS
from ebm.energy.noise import NOISE_NAMES
from ebm.harness import RunConfig, RunFolder, non_negative, option, positive

BASE_CHOICES = ("noise", "none")
ENERGY_NETS = ("mlp", "pairs")


def _even_dims(name: str, value: int) -> None:
    if value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer ≥ 2, got {value}")


def _even_resolution(name: str, value: int) -> None:
    if value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer ≥ 2, got {value}")


@dataclass
class EnergyConfig(RunConfig, EstimatorOptions):
    """Everything that defines a 2D run (saved as ``config.json`` and in the checkpoint).

    The estimators' own options (``cd_steps``, ``fce_rule``, …) and ``noise_ratio`` come from
    ``EstimatorOptions``.
    """

    option_groups = {"estimator options": ESTIMATOR_OPTION_FIELDS}

    dataset: str = option("8gaussians", "toy 2D distribution", choices=TOY_DATASETS)
    dims: int = option(2, "dimensions D (even): D/2 independent copies of the 2D set, rotated by a fixed random "
                       "orthogonal matrix; D > 2 is evaluated on samples (no grid)", check=_even_dims)
    estimator: str = option("nce", "nce, rnce (ranking NCE), ence (eNCE), cnce (conditional NCE), fce (flow "
                            "contrastive), dsm / ssm (denoising / sliced score matching), cd (contrastive divergence), "
                            "mle (grid maximum likelihood)", choices=ESTIMATORS)
    epochs: int = option(20, "epochs; each ends with an evaluation, a frame and a checkpoint", check=positive)
    samples: int = option(64_000, "fresh data points per epoch (steps per epoch = samples / batch size)",
                          check=positive)
    batch_size: int = option(256, "data points per step", check=positive)
    lr: float = option(5e-3, "Adam's peak learning rate, decayed to 0 by a cosine over all steps", check=positive)
    noise: str = option("gmm", "gaussian: the seed's N(0, 4I); fitted: the data's Gaussian; gmm: a fitted mixture "
                        "plus a broad defensive component; flow: a spline flow fitted by maximum likelihood",
                        choices=NOISE_NAMES)
    noise_components: int = option(8, "components of the gmm noise", check=positive)
    noise_widen: float = option(1.5, "factor on the fitted noise covariances", check=positive)
    energy: str = option("mlp", "mlp: one MLP on all D coordinates; pairs: a sum of D/2 MLPs g(x) = Σ_j g_j(s_j), "
                         "one per pair of the pair noise's basis s = W(x − μ) (needs --noise pairs; assumes "
                         "independent 2D parts, and its normaliser is then exact in any D)", choices=ENERGY_NETS)
    width: int = option(128, "hidden units per layer of the energy MLP", check=positive)
    depth: int = option(6, "hidden layers of the energy MLP", check=positive)
    fourier_features: int = option(64, "random Fourier features γ(x) = [x, sin 2πxB, cos 2πxB] the MLP reads (0 = "
                                   "x alone); they let it draw sharp edges (checkerboard)", check=non_negative)
    fourier_scale: float = option(0.5, "σ of the Fourier frequencies B ~ N(0, σ²) (cycles per unit length)",
                                  check=positive)
    activation: str = option("silu", "activation of the energy MLP", choices=tuple(ACTIVATIONS))
    base: str = option("noise", "noise: energy relative to the noise density (log p = log q − g − log_z); "
                       "none: a plain MLP (log p = −g − log_z)", choices=BASE_CHOICES)
    eval_points: int = option(100_000, "fresh test points for the final NLL and KL (each epoch scores up to 10k)",
                              check=positive)
    resolution: int = option(128, "grid cells per side for each epoch's evaluation and frame; the final uses 2×",
                             check=_even_resolution)
    ais_distributions: int | None = option(None, "K, intermediate distributions of the final AIS bracket on log Z "
                                           "(none: 200 for D > 2, off in 2D where the grid is exact; 0: off)",
                                           check=non_negative)
    ais_chains: int = option(256, "chains of the AIS bracket (forward, reverse, and MALA beyond 2D)", check=positive)
    frame_samples: int = option(0, "samples drawn exactly from the learned density (on the epoch's grid) for a "
                                "fourth frame panel; 0 = no panel", check=non_negative, resumable=True)
    frames: str = option("", "frame folder ('' = <run folder>/frames, 'none' = no frames)", resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if round(self.noise_ratio * self.batch_size) < 1:
            raise ValueError(f"noise_ratio × batch_size must give at least one noise point per step, got "
                             f"{self.noise_ratio} × {self.batch_size}")
        if estimator_class(self.estimator).plane_only and self.dims != 2:
            others = ", ".join(name for name, cls in ESTIMATORS.items() if not cls.plane_only)
            raise ValueError(f"estimator {self.estimator} works in 2D only (it integrates log Z on a grid); "
                             f"at dims {self.dims} use one of {others}")
        if self.energy == "pairs" and self.noise != "pairs":
            raise ValueError(f"--energy pairs reads the pair noise's basis: use --noise pairs (got {self.noise})")
        if estimator_class(self.estimator).whole_ratio and self.noise_ratio != round(self.noise_ratio):
            raise ValueError(f"{self.estimator} draws a whole number of noise points per data point; "
                             f"noise_ratio {self.noise_ratio} is not one")

    def run_name(self) -> str:
        return self.dataset if self.estimator == "nce" else f"{self.dataset}-{self.estimator}"

    def run_folder(self) -> RunFolder:
        frames = None if self.frames == "none" else (self.frames or "frames")
        return RunFolder(self.run_dir, frames)


__all__ = ["BASE_CHOICES", "ENERGY_NETS", "EnergyConfig"]
