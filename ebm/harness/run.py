"""The run folder: where a run's config, metrics, checkpoint and frames live, and the one resume rule.

    runs/<name>/config.json      the config of the run (written when it starts)
    runs/<name>/metrics.jsonl    one JSON line per epoch, then one line with "final": true
    runs/<name>/checkpoint.pt    written atomically at every epoch end (and at a time-budget stop)
    runs/<name>/frames/          epoch_0001.png, … (the 2D model's density frames)

A fresh run in an existing folder replaces that folder's run (its checkpoint, metrics and frames go first, so
nothing of the old run can be mistaken for the new one's). Resuming loads the checkpoint *before* anything is
written: a missing or unreadable checkpoint, or a config that differs from the checkpoint's in a field that
is not resumable, is an error and the folder is left exactly as it was. A resumed run keeps the metrics and
frames of the epochs its checkpoint completed and drops the rest.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ebm.harness.config import check_resumable
from ebm.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ebm.utils.metrics import MetricsLogger, read_metrics

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
FRAMES = "frames"
FRAME_GLOB = "epoch_*.png"


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run folder's checkpoint, or ``path`` itself when it names a file."""
    path = Path(path)
    return path / CHECKPOINT if path.is_dir() else path


class RunFolder:
    """The files of one run.

    Args:
        path: the run folder.
        frames: where frames go; None for no frames (default: ``path/frames``).
    """

    def __init__(self, path: str | os.PathLike, frames: str | os.PathLike | None = FRAMES):
        self.path = Path(path)
        self.frames = None if frames is None else self.path / frames if frames == FRAMES else Path(frames)
        self.checkpoint = self.path / CHECKPOINT
        self.metrics = self.path / METRICS

    def load_for_resume(self, config: Any) -> dict[str, Any]:
        """The checkpoint to resume from, on the CPU, after checking its config against ``config``.

        Raises:
            CheckpointError: no checkpoint, or an unreadable one (nothing is touched).
            ValueError: a field that is not resumable differs (nothing is touched).
        """
        try:
            state = load_checkpoint(self.checkpoint)
        except CheckpointError as error:
            raise CheckpointError(f"cannot resume: {error}") from None
        for key in ("config", "position"):
            if key not in state:
                raise CheckpointError(f"cannot resume: {self.checkpoint} was not written by this version of ebm "
                                      f"(it lacks {key!r})")
        check_resumable(state["config"], config)
        return state

    def start(self, config: Any, completed_epochs: int | None) -> MetricsLogger:
        """Prepare the folder for a fresh run (``completed_epochs`` None) or a resumed one; returns the logger.

        Fresh: the old checkpoint, metrics and frames go. Resumed: metrics lines and frames beyond
        ``completed_epochs`` go (a time-budget stop's "final" line included). Then config.json is written.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if self.frames is not None:
            self.frames.mkdir(parents=True, exist_ok=True)
        if completed_epochs is None:
            self.checkpoint.unlink(missing_ok=True)
            self.metrics.unlink(missing_ok=True)
            stale_frames = list(self.frames.glob(FRAME_GLOB)) if self.frames is not None else []
        else:
            self._keep_metrics_of(completed_epochs)
            stale_frames = [p for p in self.frames.glob(FRAME_GLOB) if _frame_epoch(p) > completed_epochs] \
                if self.frames is not None else []
        for frame in stale_frames:
            frame.unlink()
        (self.path / CONFIG).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        return MetricsLogger(self.metrics)

    def _keep_metrics_of(self, completed_epochs: int) -> None:
        if not self.metrics.exists():
            return
        kept = [r for r in read_metrics(self.metrics) if not r.get("final") and r.get("epoch", 0) <= completed_epochs]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def frame_path(self, epoch: int) -> Path | None:
        """Where epoch ``epoch``'s frame goes (None without frames)."""
        return None if self.frames is None else self.frames / f"epoch_{epoch:04d}.png"

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically (a crash mid-write keeps the previous one)."""
        save_checkpoint(self.checkpoint, state)

    def describe_checkpoint(self) -> str:
        """What a failed run leaves behind, for its error message."""
        if self.checkpoint.exists():
            return f"the last good checkpoint, {self.checkpoint}, is kept"
        return "no checkpoint was written (the run failed before its first epoch ended)"


def _frame_epoch(path: Path) -> int:
    try:
        return int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        return 0


__all__ = ["CHECKPOINT", "CONFIG", "FRAMES", "METRICS", "RunFolder", "checkpoint_path"]
