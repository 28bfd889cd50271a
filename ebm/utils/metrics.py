"""Metrics as JSON lines: one dictionary per line, appended and flushed as training goes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per call to ``path`` (``metrics.jsonl`` in a run folder).

    Non-finite floats are written as null so the file stays valid JSON for every reader.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **values: Any) -> None:
        record = {key: _finite_or_none(value) for key, value in values.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike, torn_ok: bool = False) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file, in order.

    ``torn_ok``: drop a last line that is not valid JSON (a crash mid-write tore it) instead of raising.
    """
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if not (torn_ok and i == len(lines) - 1):
                raise
    return records


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
