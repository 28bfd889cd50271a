"""Command line of the language model (reached through ``python train.py --dataset CORPUS``).

    python train.py --dataset synthetic                                   # the embedded language, a few minutes
    python train.py --dataset wikitext-2 --loss nce --noise-ratio 100     # after python -m ebm.data.download
    python train.py --dataset path/to/corpus --loss full --time-budget 390

Every field of ``LMConfig`` is an option (``--noise-ratio`` for ``noise_ratio``), checked before any work.
Exit status: 0 done, 2 bad input, 1 the run failed (a missing corpus, an unreadable checkpoint, divergence).
"""

from __future__ import annotations

import sys
from typing import Any

from ebm.harness import run_cli
from ebm.lm.train import LMConfig, train_lm

DESCRIPTION = "Train a word-level language model with NCE or another sampled loss, evaluated exactly."


def _done(result: dict[str, Any]) -> str:
    line = f"test ppl {result['test_ppl']:.2f}"
    if result.get("test_ppl_selfnorm") is not None:
        line += f"  (self-normalised {result['test_ppl_selfnorm']:.2f})"
    if result["floor_ppl"] is not None:
        line += f"  floor exp(H) {result['floor_ppl']:.2f}"
    return line + ("  (stopped by the time budget)" if result["partial"] else "")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, print the test perplexity; returns the exit status."""
    return run_cli(LMConfig, train_lm, argv, "train.py", DESCRIPTION, _done)


if __name__ == "__main__":
    sys.exit(main())
