"""Optional TensorBoard curves beside ``metrics.jsonl`` (``--tensorboard``; ``pip install tensorboard``).

The loop hands ``ScalarWriter`` the same numbers it logs: the running step statistics at every check
(``train/loss``, ``train/accuracy``, …) and each epoch's metrics (``epoch/kl``, ``epoch/valid_ppl``, …), with the
optimiser step as the x axis. Event files go to ``<run folder>/tensorboard``; ``tensorboard --logdir runs``
shows every run. Without a folder (the option off, or a rank other than 0) the writer does nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

TENSORBOARD = "tensorboard"


def tensorboard_available() -> bool:
    """Whether torch's TensorBoard writer can be imported (the ``tensorboard`` package is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


class ScalarWriter:
    """Scalars to TensorBoard event files in ``folder / "tensorboard"``, or nothing when ``folder`` is None."""

    def __init__(self, folder: str | os.PathLike | None):
        self._writer = None
        if folder is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(folder) / TENSORBOARD))

    def add(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """One point per finite number in ``values`` at ``step`` (tags ``prefix/name``)."""
        if self._writer is None:
            return
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


__all__ = ["TENSORBOARD", "ScalarWriter", "tensorboard_available"]
