"""The run folder: where a run's config, metrics, checkpoint and frames live, and the one resume rule.

    runs/<name>/config.json      the config of the run (written when it starts)
    runs/<name>/metrics.jsonl    one JSON line per epoch, then one line with "final": true
    runs/<name>/checkpoint.pt    written atomically at every epoch end (and at a time-budget stop)
    runs/<name>/frames/          epoch_0001.png, … (the 2D model's density frames)

A fresh run in an existing folder replaces that folder's run, but only once it has something better: the old
run's files (checkpoint, metrics, config, frames) move to ``<run>/previous/`` when the new run starts, so nothing
of the old run can be mistaken for the new one's, and are deleted when the new run writes its first checkpoint.
A new run that fails before then (a typo that diverges in the first epoch, Ctrl-C) puts them back
(``abandon``); a process killed outright leaves them in ``previous/``, where the next fresh run finds them.

Resuming loads the checkpoint *before* anything is
written: a missing or unreadable checkpoint, or a config that differs from the checkpoint's in a field that
is not resumable, is an error and the folder is left exactly as it was. A resumed run keeps the metrics and
frames of the epochs its checkpoint completed and drops the rest.
"""

from __future__ import annotations

import json
import os
import shutil
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
PREVIOUS = "previous"


def frame_name(epoch: int) -> str:
    """The file name of epoch ``epoch``'s frame: ``epoch_0001.png`` (zero-padded, so names sort by epoch)."""
    return f"epoch_{epoch:04d}.png"


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
        self.previous = self.path / PREVIOUS

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

        Fresh: the old run's files move to ``previous/`` (deleted at the first checkpoint, put back by
        ``abandon``). Resumed: metrics lines and frames beyond ``completed_epochs`` go (a time-budget stop's
        "final" line included). Then config.json is written.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if completed_epochs is None:
            self._set_aside_old_run()
        else:
            self._keep_metrics_of(completed_epochs)
            stale = [p for p in self.frames.glob(FRAME_GLOB) if _frame_epoch(p) > completed_epochs] \
                if self.frames is not None and self.frames.is_dir() else []
            for frame in stale:
                frame.unlink()
        if self.frames is not None:
            self.frames.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(json.dumps(config.as_dict(), indent=2) + "\n")
        return MetricsLogger(self.metrics)

    def _old_files(self) -> list[Path]:
        frames = sorted(self.frames.glob(FRAME_GLOB)) if self.frames is not None and self.frames.is_dir() else []
        return [p for p in (self.checkpoint, self.metrics, self.path / CONFIG) if p.exists()] + frames

    def _set_aside_old_run(self) -> None:
        """Move the old run's files to ``previous/``, unless ``previous/`` holds a checkpointed run and the folder
        holds none (a fresh run died there before its first checkpoint): then the folder's leftovers just go."""
        old = self._old_files()
        if self.previous.is_dir() and (self.previous / CHECKPOINT).exists() and not self.checkpoint.exists():
            for path in old:
                path.unlink()
            return
        if old:
            shutil.rmtree(self.previous, ignore_errors=True)
        for path in old:
            target = self.previous / path.relative_to(self.path) if path.is_relative_to(self.path) \
                else self.previous / FRAMES / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)

    def abandon(self) -> None:
        """A fresh run failed before its first checkpoint: its files go and the previous run's come back."""
        if not self.previous.is_dir() or self.checkpoint.exists():
            return
        for path in self._old_files():
            path.unlink()
        for path in sorted(self.previous.rglob("*")):
            if path.is_file():
                relative = path.relative_to(self.previous)
                target = self.frames / path.name if relative.parts[0] == FRAMES and self.frames is not None \
                    else self.path / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                path.replace(target)
        shutil.rmtree(self.previous, ignore_errors=True)

    def _keep_metrics_of(self, completed_epochs: int) -> None:
        if not self.metrics.exists():
            return
        records = read_metrics(self.metrics, torn_ok=True)  # a crash mid-write may have torn the last line
        kept = [r for r in records if not r.get("final") and r.get("epoch", 0) <= completed_epochs]
        self.metrics.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def frame_path(self, epoch: int) -> Path | None:
        """Where epoch ``epoch``'s frame goes (None without frames)."""
        return None if self.frames is None else self.frames / frame_name(epoch)

    def save(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically (a crash mid-write keeps the previous one); the first checkpoint of
        a fresh run ends the old run kept in ``previous/``."""
        save_checkpoint(self.checkpoint, state)
        shutil.rmtree(self.previous, ignore_errors=True)

    def describe_checkpoint(self) -> str:
        """What a failed run leaves behind, for its error message."""
        if self.checkpoint.exists():
            return f"the last good checkpoint, {self.checkpoint}, is kept"
        kept = f"; the previous run in {self.path} is put back" if self.previous.is_dir() else ""
        return f"no checkpoint was written (the run failed before its first epoch ended){kept}"


def _frame_epoch(path: Path) -> int:
    try:
        return int(path.stem.split("_")[1])
    except (IndexError, ValueError):
        return 0


__all__ = ["CHECKPOINT", "CONFIG", "FRAMES", "METRICS", "PREVIOUS", "RunFolder", "checkpoint_path", "frame_name"]
