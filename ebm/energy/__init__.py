"""2D energy-based density estimation by NCE: model, noise, objective, exact evaluation, plots, training.

    from ebm.energy import EnergyConfig, train_energy, load_model, evaluate_density
    metrics = train_energy(EnergyConfig(dataset="pinwheel"))
    model = load_model("runs/pinwheel")            # eval mode on the CPU; model.log_prob(x): (N, 2) → (N,)
"""

from ebm.energy.evaluate import Grid, density_metrics, evaluate_density
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import GaussianMixtureNoise, make_noise
from ebm.energy.objective import energy_nce_loss
from ebm.energy.train import EnergyConfig, load_model, train_energy

__all__ = [
    "EnergyConfig",
    "EnergyMLP",
    "GaussianMixtureNoise",
    "Grid",
    "density_metrics",
    "evaluate_density",
    "load_model",
    "make_noise",
    "energy_nce_loss",
    "train_energy",
]
