"""The end-of-run assessment of an energy model in any dimension: exact where it can be, bracketed beyond.

    D = 2   the grid normalises the model exactly (``ebm.energy.evaluate.density_metrics``): normaliser error,
            test NLL and KL(data ‖ model); optionally also the AIS bracket (reverse chains start from exact grid
            samples), so a user sees the bracket contain the exact value.
    D > 2   no grid: KL(data ‖ model) = E_data[log p_data − log p̃] + log Z on the test points with log Z (a) the
            learned ``log_z`` and (b) the AIS bracket (``ebm.energy.evaluate_samples.sample_metrics``); forward AIS
            starts from the noise without its defensive component (``ebm.energy.noise.ais_start``; a stochastic
            lower bound), reverse AIS from MALA samples of the model (an
            upper bound when the chains have mixed: their split R-hat is reported beside it), or from exact
            samples for a pair energy.

The bracket is reported on log Z of p̃ = exp(log_prob + log_z) — the quantity the learned ``log_z`` estimates —
as ``log_z_lower`` / ``log_z_upper``, with ``log_z_error`` the learned value's distance outside it (0 inside).

A pair energy (``ebm.energy.pair_energy``) is normalised exactly in any D, on one grid per pair: beyond the plane
it also gets ``log_normaliser`` (log ∫ exp(log_prob), 0 when the learned log_z is exact), ``normaliser_error`` and
``kl_exact`` = kl + log_normaliser, the KL(data ‖ model) that trusts neither the learned log Z nor AIS.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ebm.energy.ais import ais_bracket
from ebm.energy.evaluate import Grid, density_metrics
from ebm.energy.evaluate_samples import log_z_error, sample_metrics
from ebm.energy.model import EnergyMLP
from ebm.energy.pair_energy import PairSumNet, pair_log_normaliser, pair_sample
from ebm.energy.sampling import grid_sample, mala

AIS_SEED_OFFSET = 5_000_011  # the assessment's own generator: seed + this, so it never touches training's
MALA_WARMUP, MALA_STEPS, MALA_STEP_SIZE = 300, 200, 0.05


def ais_distributions(requested: int | None, dims: int) -> int:
    """K for the AIS bracket: as requested, or by default 200 beyond the plane and none in it (the grid is exact)."""
    if requested is not None:
        return requested
    return 0 if dims == 2 else 200


def model_samples(model: EnergyMLP, noise: nn.Module, n: int, grid: Grid | None,
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """n samples (n, D) of the model on its device: exact on ``grid`` in 2D and on per-pair grids for a pair energy
    (covering 10⁴ noise draws), else MALA chains from the noise with their diagnostics (acceptance, the largest
    split R-hat over dimensions)."""
    device = model.log_z.device
    if grid is not None:
        return grid_sample(model.log_prob, grid, n, generator, device).to(device), {}
    if isinstance(model.net, PairSumNet):
        return pair_sample(model, n, generator, noise.sample((10_000,), generator)), {}
    chains = mala(model.log_prob, noise.sample((n,), generator), MALA_STEPS, MALA_STEP_SIZE, generator,
                  warmup=MALA_WARMUP)
    return chains.samples[-1], {"mala_accept": float(chains.accept_rate), "mala_rhat": float(chains.rhat.max())}


def bracket_metrics(model: EnergyMLP, noise: nn.Module, distributions: int, chains: int, grid: Grid | None,
                    generator: torch.Generator, start: nn.Module | None = None) -> dict[str, Any]:
    """The AIS bracket on log Z of p̃ (forward from ``start``, by default ``noise``; reverse from model samples,
    MALA's started from ``noise``) and its diagnostics."""
    samples, diagnostics = model_samples(model, noise, chains, grid, generator)
    bracket = ais_bracket(model.log_prob, noise if start is None else start, chains, distributions, generator,
                          model_samples=samples)
    log_z = model.log_z.item()  # ais brackets log ∫ exp(log_prob) = log Z − log_z
    lower, upper = bracket.lower + log_z, bracket.upper + log_z
    return {"log_z_lower": lower, "log_z_upper": upper, "log_z_error": log_z_error(log_z, lower, upper),
            "ais_lower_stderr": bracket.lower_stderr, "ais_upper_stderr": bracket.upper_stderr,
            "ais_ess": bracket.ess, "ais_distributions": bracket.n_distributions, **diagnostics}


@torch.no_grad()
def assess(model: EnergyMLP, noise: nn.Module, test: torch.Tensor, test_log_p: torch.Tensor, grid: Grid | None,
           distributions: int, chains: int, seed: int, start: nn.Module | None = None) -> dict[str, Any]:
    """The final metrics of a trained model on ``test`` (N, D) with exact log-densities ``test_log_p`` (N,).

    ``grid``: the 2D grid to normalise on (None beyond the plane); ``distributions``: K of the AIS bracket (0:
    none); ``chains``: its forward chains (and reverse chains, and MALA chains beyond 2D); ``start``: where the
    forward AIS chains start (``ebm.energy.noise.ais_start``; default ``noise``).
    """
    model.eval()
    device = model.log_z.device
    generator = torch.Generator().manual_seed(seed + AIS_SEED_OFFSET)
    bracket = bracket_metrics(model, noise, distributions, chains, grid, generator, start) if distributions else {}
    if grid is not None:
        return {**density_metrics(model.log_prob, grid, test, test_log_p, device), **bracket}
    interval = (bracket["log_z_lower"], bracket["log_z_upper"]) if bracket else None
    metrics = {**sample_metrics(model.log_prob, test, test_log_p, model.log_z.item(), interval, device), **bracket}
    return {**metrics, **exact_pair_metrics(model, test, metrics["kl"])}


def exact_pair_metrics(model: EnergyMLP, test: torch.Tensor, kl: float) -> dict[str, Any]:
    """For a pair energy (``PairSumNet``), its exact normaliser on per-pair grids covering ``test`` (N, D) and
    ``kl_exact`` = ``kl`` (the KL with the learned log Z) + log_normaliser; for any other model nothing."""
    if not isinstance(model.net, PairSumNet):
        return {}
    exact = pair_log_normaliser(model, test)
    return {**exact, "kl_exact": kl + exact["log_normaliser"]}


__all__ = ["ais_distributions", "assess", "bracket_metrics", "exact_pair_metrics", "model_samples"]
