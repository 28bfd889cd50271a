"""Small helpers shared by both settings: device choice, seeding, atomic checkpoints, metrics."""

from ebm.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ebm.utils.device import get_device
from ebm.utils.metrics import MetricsLogger, read_metrics
from ebm.utils.seeding import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "CheckpointError",
    "MetricsLogger",
    "get_device",
    "get_rng_state",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]
