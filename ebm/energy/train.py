"""Training a 2D energy model, and loading a trained one.

    from ebm.energy import EnergyConfig, train_energy, load_model
    metrics = train_energy(EnergyConfig(dataset="pinwheel"))    # runs/pinwheel: frames, metrics, checkpoint
    model = load_model("runs/pinwheel")                          # log_prob(x): (N, D) → (N,), log_z included

The loop is the harness's (``ebm.harness.trainer.fit``); what is particular to the energy model is its task
(``ebm.energy.task.EnergyTask``).
"""

from __future__ import annotations

import os
from typing import Any

from ebm.energy.config import EnergyConfig
from ebm.energy.model import EnergyMLP
from ebm.energy.noise import empty_noise
from ebm.energy.task import EnergyTask, build_energy
from ebm.harness import checkpoint_path, fit, from_dict, set_threads
from ebm.harness.context import DistributedContext
from ebm.utils import get_device, load_checkpoint


def train_energy(config: EnergyConfig) -> dict[str, Any]:
    """Train (or, with ``config.resume``, continue) a run; return the final metrics.

    The final metrics are those of the last epoch with the evaluation redone on all ``eval_points`` test points
    and a grid of 2·resolution cells per side (also the last line of ``metrics.jsonl``, ``"final": true``). A
    run stopped by ``time_budget`` evaluates where it stopped (``"partial": true``) and resumes from there.

    Raises:
        CheckpointError: resuming without a readable checkpoint (nothing is written).
        ValueError: an unavailable device, torchrun, or resuming with a configuration other than the checkpoint's.
        TrainingDiverged: a non-finite or exploding loss; names the epoch and steps, keeps the last good checkpoint.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("the 2D energy model trains in one process: run it with python train.py, not torchrun")
    device = get_device(config.device)
    set_threads(config.threads)
    with DistributedContext.from_env(config.device) as context:
        return fit(EnergyTask(config, device), config, context)


def load_model(path: str | os.PathLike, device: str = "cpu") -> EnergyMLP:
    """The trained model of a run folder or checkpoint file, in eval mode on ``device`` ("auto" allowed).

    ``model.log_prob(x)`` maps float32 (N, D) to (N,), including the learned log_z.
    """
    state = load_checkpoint(checkpoint_path(path))
    config = from_dict(EnergyConfig, state["config"])
    model = build_energy(config, empty_noise(config.noise, config.noise_components, dims=config.dims))
    model.load_state_dict(state["model"])
    return model.to(get_device(device)).eval()


__all__ = ["EnergyConfig", "load_model", "train_energy"]
