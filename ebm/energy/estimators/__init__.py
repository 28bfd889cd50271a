"""Estimators for a 2D energy model, chosen by name, behind one interface (``Estimator.loss``).

    nce   binary NCE against a fixed noise, ν noise points per data point          learns log Z
    rnce  ranking NCE: each data point against its own ν noise points (softmax)    log Z free
    ence  eNCE: the exponential loss of Liu et al. (2022)                          learns log Z
    cnce  conditional NCE: ν points from N(x, ε²I) around each data point          log Z free
    fce   flow contrastive estimation: the noise is a flow trained against J        learns log Z
    dsm   denoising score matching, noise level σ                                  log Z free
    ssm   sliced score matching (variance-reduced, Gaussian projections)           log Z free
    cd    contrastive divergence with persistent Langevin chains                   log Z free
    mle   maximum likelihood, log Z on a randomly shifted grid (the reference)     log Z free

Each class carries its own facts (``learns_log_z``, ``contrasts_noise``, ``uses_noise_ratio``, ``whole_ratio``)
and builds itself from the options (``build``); ``ESTIMATORS`` maps names to classes. Adding an estimator is one
class with ``name``, its facts, ``build`` and ``loss``, and one entry in ``ESTIMATORS``.

Usage in a training loop (one loop for all of them):

    estimator = make_estimator(name, options, noise=noise, fit_points=fit_points, seed=seed).to(device)
    loss, stats = estimator.loss(model, batch, generator)     # generator: a CPU torch.Generator
    if loss is not None:                                      # None: FCE updated its flow this step
        optimizer.zero_grad(set_to_none=True); loss.backward(); optimizer.step()
    checkpoint["estimator"] = estimator.state_dict()          # restore: empty_estimator(...).to(device),
                                                              # then load_state_dict
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator
from ebm.energy.estimators.contrastive import NCE, ConditionalNCE, ExponentialNCE, RankingNCE
from ebm.energy.estimators.contrastive_divergence import ContrastiveDivergence
from ebm.energy.estimators.flow_contrastive import FCE_RULES, FlowContrastiveEstimation
from ebm.energy.estimators.grid_likelihood import GridMaximumLikelihood
from ebm.energy.estimators.score_matching import DenoisingScoreMatching, SlicedScoreMatching
from ebm.harness.config import option, validate
from ebm.utils.checks import non_negative, positive, probability


def _open_unit(name: str, value: float) -> None:
    probability(name, value, open_low=True, open_high=True)


def _unit(name: str, value: float) -> None:
    probability(name, value)


@dataclass
class EstimatorOptions:
    """The estimators' options; each estimator reads only its own (and ``noise_ratio``).

    Declared with ``ebm.harness.option``, so a config that inherits them (``EnergyConfig``) validates them and
    turns them into command-line flags (``--cd-steps``, …).
    """

    noise_ratio: float = option(4.0, "ν, noise points per data point (nce, ence, fce; whole numbers for rnce, cnce)",
                                check=positive)
    cnce_epsilon: float = option(0.0, "std of cnce's Gaussian kernel; 0: Silverman's bandwidth of the data",
                                 check=non_negative)
    fce_rule: str = option("accuracy", "fce's alternation: accuracy = energy step while the classifier's accuracy "
                           "≤ --fce-threshold, else a flow step (lifeitech/fce-2d); both = both every step",
                           choices=FCE_RULES)
    fce_threshold: float = option(0.6, "accuracy above which fce updates the flow (rule accuracy)", check=_open_unit)
    fce_lr: float = option(7e-4, "Adam's learning rate for fce's flow (constant)", check=positive)
    fce_pretrain_steps: int = option(300, "maximum-likelihood steps fitting fce's flow before training",
                                     check=positive)
    dsm_sigma: float = option(0.1, "dsm's noise level σ (the model learns p_data ⊛ N(0, σ²I))", check=positive)
    ssm_projections: int = option(1, "Gaussian projections per data point for ssm", check=positive)
    cd_buffer: int = option(10_000, "persistent Langevin chains of cd", check=positive)
    cd_steps: int = option(20, "Langevin steps per training step (cd)", check=positive)
    cd_step_size: float = option(0.01, "Langevin step size η: x ← x + η∇log p + √(2η)ξ (cd)", check=positive)
    cd_reinit: float = option(0.05, "probability that a cd chain restarts from the noise at a step", check=_unit)
    mle_resolution: int = option(64, "grid cells per side for mle's log Z", check=positive)

    def __post_init__(self) -> None:
        validate(self)


ESTIMATOR_OPTION_FIELDS = tuple(f.name for f in fields(EstimatorOptions) if f.name != "noise_ratio")


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (NCE, RankingNCE, ExponentialNCE, ConditionalNCE, FlowContrastiveEstimation, DenoisingScoreMatching,
                SlicedScoreMatching, ContrastiveDivergence, GridMaximumLikelihood)
}


def estimator_class(name: str) -> type[Estimator]:
    """The class registered as ``name`` (its facts: ``learns_log_z``, ``contrasts_noise``, …)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def make_estimator(
    name: str,
    options: EstimatorOptions | None = None,
    noise: nn.Module | None = None,
    fit_points: Tensor | None = None,
    seed: int = 0,
) -> Estimator:
    """Build the estimator ``name`` (a key of ESTIMATORS), on the CPU.

    Args:
        options: the options (defaults when None).
        noise: the noise q (``sample(shape, generator)``, ``log_prob(x)``): required by nce, rnce, ence (as q)
            and cd (where chains start and restart); ignored by the others (fce brings its own flow).
        fit_points: (N, D) data the noise was fitted on: required by fce (its flow is fitted to them by
            maximum likelihood, ``fce_pretrain_steps`` steps, seed ``seed``), mle (its grid's box) and cnce
            with ``cnce_epsilon = 0`` (Silverman's bandwidth of them).
        seed: seeds fce's flow fit.
    """
    cls, options = estimator_class(name), options or EstimatorOptions()
    if fit_points is None and cls.needs_fit_points(options):
        raise ValueError(f"estimator {name!r} needs fit_points (the data its parts are fitted to)")
    return cls.build(options, noise, fit_points, seed)


def empty_estimator(name: str, options: EstimatorOptions | None = None, noise: nn.Module | None = None) -> Estimator:
    """The estimator ``name`` with placeholders for its fitted parts, to be filled by ``load_state_dict``.

    Move it to its device first, then load (FCE's optimiser state follows its parameters' device at load).
    """
    return estimator_class(name).build(options or EstimatorOptions(), noise, None, 0)


__all__ = [
    "ESTIMATORS",
    "ESTIMATOR_OPTION_FIELDS",
    "Estimator",
    "EstimatorOptions",
    "empty_estimator",
    "estimator_class",
    "make_estimator",
]
