"""Training a word-level language model with any loss of ``ebm.lm``, and loading a trained one.

    from ebm.lm import LMConfig, train_lm, load_lm
    result = train_lm(LMConfig(dataset="synthetic", loss="nce", noise_ratio=100, epochs=3))
    lm = load_lm("runs/synthetic-nce")       # model (eval mode), vocabulary, config

The loop is the harness's (``ebm.harness.trainer.fit``); what is particular to the language model is its task
(``ebm.lm.task.LMTask``). A time-budget stop checkpoints mid-epoch (recurrent state included) and ``resume``
continues exactly from there. With ``calibrate_norm`` the saved model is the calibrated one.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, NamedTuple

import torch

from ebm.data.corpus import Vocabulary
from ebm.harness import checkpoint_path, fit, from_dict, set_threads
from ebm.harness.context import DistributedContext
from ebm.lm.build import build_model
from ebm.lm.config import LMConfig
from ebm.lm.task import LMTask
from ebm.utils import get_device, load_checkpoint


def train_lm(config: LMConfig, **seams: Any) -> dict[str, Any]:
    """Train (or, with ``config.resume``, continue), evaluate exactly and test; returns the final metrics.

    Under torchrun (``torchrun --nproc-per-node N train.py ...``) every rank trains on its rows of each global
    batch (``ebm.lm.distributed``); only rank 0 writes and prints, and all ranks end with identical parameters.
    ``seams`` (``build``, ``optimizer``) go to ``LMTask``: another model or optimiser through the same loop.

    Returns a dict with ``epochs`` (completed), ``partial`` (stopped by the time budget before the last epoch
    ended), ``test_ppl`` (and ``test_ppl_selfnorm`` plus log Z statistics for sampled losses), ``valid_ppl`` of
    the last epoch, ``floor_ppl`` = exp(H) for the synthetic language (else None), ``train_seconds`` (training
    only), ``elapsed`` (wall-clock seconds, evaluation included), ``tokens_per_s``, ``steps`` and the run
    folder ``out``.

    Raises:
        FileNotFoundError: a named corpus that is not downloaded, or a missing split file.
        CheckpointError: resuming without a readable checkpoint (nothing is written).
        ValueError: an unavailable device, a corpus too small for one batch, a batch that does not split over
            the ranks, or resuming with other settings.
        TrainingDiverged: a non-finite or exploding loss; names the epoch and steps, keeps the last good checkpoint.
    """
    set_threads(config.threads)
    with DistributedContext.from_env(config.device, timedelta(seconds=config.dist_timeout)) as context:
        return fit(LMTask(config, context, **seams), config, context)


class LoadedLM(NamedTuple):
    model: torch.nn.Module
    vocab: Vocabulary
    config: LMConfig


def load_lm(path: str | os.PathLike, device: str = "cpu") -> LoadedLM:
    """A trained model in evaluation mode on ``device`` ("auto" allowed), from a run folder or its checkpoint.

    Returns (model, vocab, config); e.g. ``model.scores(input, target)`` gives exact per-token NLLs.
    """
    target = get_device(device)
    state = load_checkpoint(checkpoint_path(path))
    config = from_dict(LMConfig, state["config"])
    vocab = Vocabulary(state["vocab"]["words"], state["vocab"]["counts"])
    model = build_model(config, vocab.counts, sparse=target.type != "mps")
    model.load_state_dict(state["model"])
    return LoadedLM(model.to(target).eval(), vocab, config)


__all__ = ["LMConfig", "LoadedLM", "load_lm", "train_lm"]
