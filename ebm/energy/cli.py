"""Command line of the 2D energy model: ``python train.py --dataset pinwheel [options]``.

Every field of ``EnergyConfig`` is an option (``--noise-ratio`` for ``noise_ratio``), checked before any
work starts; the run itself is ``train_energy``. Exit status: 0 done, 2 bad input, 1 the run failed
(``ebm.harness.cli``).
"""

from __future__ import annotations

import sys
from typing import Any

from ebm.energy.train import EnergyConfig, train_energy
from ebm.harness import run_cli

DESCRIPTION = "Train a 2D energy model by noise-contrastive estimation (or another estimator: --estimator)."


def _done(metrics: dict[str, Any]) -> str:
    kl = f", KL {metrics['kl']:.4f}" if "kl" in metrics else ""
    stopped = " (stopped by the time budget)" if metrics["partial"] else ""
    return (f"done{stopped}: normaliser error {metrics['normaliser_error']:.4f}, "
            f"test NLL {metrics['test_nll']:.4f}{kl}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, print the final metrics; returns the exit status."""
    return run_cli(EnergyConfig, train_energy, argv, "train.py", DESCRIPTION, _done)


if __name__ == "__main__":
    sys.exit(main())
