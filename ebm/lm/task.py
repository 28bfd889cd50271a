"""The language model as a task of the harness's loop (``ebm.harness.trainer.fit``): what differs from 2D.

Each epoch: truncated-BPTT training on the concatenated text (state carried between chunks, as PyTorch's
word_language_model does) or on whole sentences (state reset for each); then the exact validation perplexity
(full softmax, chunked over V) and, for sampled losses, the self-normalised scores' log Z(context) − norm. The
learning rate follows ``schedule``: constant until ``hold`` of the run (of its steps, or of its time budget),
then a cosine (or linear) decay, or, with "plateau", a factor ``lr_decay`` whenever the validation perplexity
does not improve. At the end: the optional norm calibration on validation text, then the exact test
perplexity — the only time the test split is read.

Under torchrun every rank trains on its rows of each global batch (``ebm.lm.distributed``); only rank 0
writes and prints, and all ranks end with identical parameters. Noise words are drawn from a CPU generator,
so a seed gives the same noise on any device. On Apple MPS the embedding and output rows use dense gradients
(MPS supports sparse tensors only in part).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ebm.data.corpus import Corpus, Split, batchify, bptt_chunks, load_corpus, num_chunks, sentence_batches
from ebm.data.download import CORPORA, corpus_folder, how_to_get, missing_files
from ebm.data.synthetic import synthetic_corpus
from ebm.harness import Position, RunFolder
from ebm.harness.context import DistributedContext
from ebm.harness.schedule import plateau_lr, scheduled_lr, set_lr
from ebm.lm.build import build_model
from ebm.lm.config import LMConfig
from ebm.lm.distributed import (
    DistributedLM,
    assert_identical,
    check_global_batch,
    gather_state,
    shard_state,
    step_seed,
)
from ebm.lm.evaluate import evaluate, evaluate_sentences
from ebm.lm.optim import add_weight_decay_, clip_grad_norm_, make_optimizer

Evaluator = Callable[[torch.nn.Module, Split], dict[str, float]]


def load_lm_corpus(config: LMConfig) -> Corpus:
    """The corpus named by ``config.dataset``: synthetic, a named corpus under data_root, or a folder."""
    name = config.dataset
    if name == "synthetic":
        n = config.synthetic_tokens
        return synthetic_corpus((n, max(n // 10, 1000), max(n // 10, 1000)), seed=config.synthetic_seed,
                                vocab_size=config.synthetic_vocab)
    if name in CORPORA:
        folder = corpus_folder(name, config.data_root)
        if missing_files(folder):
            raise FileNotFoundError(how_to_get(name, config.data_root))
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        from ebm.data.toy import TOY_DATASETS

        raise ValueError(f"unknown dataset {name!r}: not a toy 2D dataset ({', '.join(TOY_DATASETS)}), "
                         f"not a corpus (synthetic, {', '.join(CORPORA)}) and not a folder")
    return load_corpus(folder, min_freq=config.min_freq, max_size=config.max_size)


def evaluator(config: LMConfig, corpus: Corpus, device: torch.device) -> Evaluator:
    """split → exact metrics, read the way the model trains (concat stream or whole sentences)."""
    if config.batch_mode == "sentence":
        return lambda model, split: evaluate_sentences(model, split, config.eval_batch_size, corpus.vocab.eos_index,
                                                       device)

    def concat(model: torch.nn.Module, split: Split) -> dict[str, float]:
        rows = min(config.eval_batch_size, len(split) // 2)  # a split shorter than 2·eval_batch_size uses fewer rows
        return evaluate(model, batchify(split.ids, rows), config.bptt, device)

    return concat


def steps_per_epoch(config: LMConfig, corpus: Corpus) -> int:
    """Optimiser steps in one epoch (bptt chunks of the batchified stream, or batches of sentences)."""
    if config.batch_mode == "concat":
        return num_chunks(len(corpus.train) // config.batch_size, config.bptt)
    return -(-corpus.train.num_sentences // config.batch_size)


def describe_scores(prefix: str, result: dict[str, float], floor: float | None) -> str:
    """``valid ppl 123.45 (floor …)  self-normalised …  log Z − norm …`` for a split's exact metrics."""
    text = f"{prefix} ppl {result['ppl']:.2f}"
    if floor is not None:
        text += f" (floor exp(H) {floor:.2f})"
    if "ppl_selfnorm" in result:
        text += (f"  self-normalised {result['ppl_selfnorm']:.2f}  log Z − norm "
                 f"{result['log_z_gap_mean']:+.3f} ± {result['log_z_gap_std']:.3f}")
    return text


class LMTask:
    """A word-level language model trained with a loss of ``ebm.lm.losses``, evaluated exactly.

    ``build`` and ``optimizer`` are the seams a bench uses to train another design through the same loop
    (``build(config, counts, sparse) → model``, ``optimizer(model, config) → optimiser``).
    """

    schedule_by_time = True  # under a time budget the schedule follows the share of the budget spent

    def __init__(self, config: LMConfig, context: DistributedContext,
                 build: Callable[..., torch.nn.Module] = build_model,
                 optimizer: Callable[[torch.nn.Module, LMConfig], Any] | None = None):
        self.config, self.context, self.device = config, context, context.device
        self.build = build
        self.make_optimizer = optimizer or (lambda model, c: make_optimizer(model, c.optimizer, c.lr,
                                                                            model.sparse_parameters()))
        self.progress = 0.0

    def run_folder(self) -> RunFolder:
        return RunFolder(self.config.run_dir, frames=None)

    def setup(self, state: dict[str, Any] | None, data_generator: torch.Generator) -> list[str]:
        config, context = self.config, self.context
        check_global_batch(config.batch_size, context.world_size, config.micro_batches)
        self.corpus = corpus = load_lm_corpus(config)
        self.steps = steps_per_epoch(config, corpus)
        if self.steps < 1:
            raise ValueError(f"batch_size {config.batch_size} × bptt {config.bptt} is more than the training split "
                             f"holds ({len(corpus.train):,} tokens): no step fits in an epoch; lower --batch-size")
        self.floor = math.exp(corpus.entropy_rate) if corpus.entropy_rate is not None else None
        model = self.build(config, corpus.vocab.counts, sparse=self.device.type != "mps").to(self.device)
        if config.compile:
            # Dynamo leaves nn.LSTM/GRU to eager unless its experimental RNN tracing is on (it unrolls the time
            # steps: minutes of compilation, measured in the README). In place, so the state dict keeps its names.
            torch._dynamo.config.allow_rnn = True
            model.compile()
        if config.amp:
            check_autocast(model, self.device)
        self.model, self.optimizer = model, self.make_optimizer(model, config)
        self.score = evaluator(config, corpus, self.device)
        self.lr, self.best, self.valid, self.hidden = config.lr, math.inf, {}, None  # lr: the peak
        self.epoch_tokens, self.tokens = 0, 0
        if state is not None:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.lr, self.best, self.tokens = state["lr"], state["best_valid_ppl"], state["tokens"]
            self.valid = {k[len("valid_"):]: v for k, v in state["metrics"].items() if k.startswith("valid_")}
            if state["position"]["epoch_step"]:
                self.epoch_tokens = state["epoch_tokens"]
                self.hidden = shard_state(_to_device(state["hidden"], self.device), context)
        self.parallel = DistributedLM(model, context)  # rank 0's parameters on every rank
        return self._introduction()

    def _introduction(self) -> list[str]:
        config, corpus, world = self.config, self.corpus, self.context.world_size
        lines = [f"{corpus.name}: V = {len(corpus.vocab)}, {len(corpus.train):,} training tokens; {config.model} with "
                 f"{config.loss} loss on {self.device}" + (f" × {world} processes" if world > 1 else "")
                 + (f"; best possible ppl exp(H) = {self.floor:.2f}" if self.floor else "")]
        if any(corpus.replaced.values()):
            lines.append(f"warning: undecodable UTF-8 bytes replaced: {corpus.replaced}")
        return lines

    def steps_per_epoch(self) -> int:
        return self.steps

    def batches(self, data_generator: torch.Generator) -> Iterable[tuple[torch.Tensor, torch.Tensor, Any]]:
        """(input, target, mask or None) of one epoch; sentence order drawn from ``data_generator``."""
        config, corpus = self.config, self.corpus
        if config.batch_mode == "concat":
            return ((x, y, None) for x, y in bptt_chunks(batchify(corpus.train.ids, config.batch_size), config.bptt))
        return sentence_batches(corpus.train, config.batch_size, corpus.vocab.eos_index, data_generator,
                                max_length=config.bptt or None)

    def schedule(self, progress: float) -> None:
        c, self.progress = self.config, progress
        set_lr(self.optimizer, scheduled_lr(self.lr, progress, c.schedule, c.warmup, c.hold, c.lr_final))

    def step(self, batch: tuple, noise_generator: torch.Generator, position: Position) -> dict[str, torch.Tensor]:
        """One optimiser step on a global batch (B, T) (with its mask in sentence mode).

        The rank keeps its rows (all of them in one process), in ``micro_batches`` passes; the noise and the
        dropout masks are drawn for the global batch from generators seeded by the step, not the rank, so a run is
        the same at any world size (``DistributedLM.forward_backward``). The state is carried between bptt chunks
        in concat mode (detached: truncated back-propagation) and reset for every batch of sentences. Weight decay
        and clipping act on touched rows only for sparse gradients.
        """
        input, target, mask = batch
        config = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, self.hidden = self.parallel.forward_backward(
            input, target, self.hidden if mask is None else None, mask, noise=noise_generator,
            dropout_seed=step_seed(config.seed, position.step), micro_batches=config.micro_batches, amp=config.amp)
        params = [p for p in self.model.parameters() if p.requires_grad]
        add_weight_decay_(params, config.weight_decay)
        if config.clip > 0:
            clip_grad_norm_(params, config.clip)
        self.optimizer.step()
        tokens = int(mask.sum()) if mask is not None else target.numel()  # the global batch's tokens
        self.epoch_tokens, self.tokens = self.epoch_tokens + tokens, self.tokens + tokens
        return {"loss": loss}

    def evaluate(self, epoch: int, stats: dict[str, float], seconds: float) -> dict[str, Any]:
        """The exact validation scores (every rank evaluates the same model on the same data); the plateau rule."""
        self.valid = self.score(self.model, self.corpus.valid)
        if self.config.schedule == "plateau":
            # rank 0's decision for every rank: kernels that are not deterministic could make the ranks part
            self.lr, self.best = self.context.broadcast_object(
                plateau_lr(self.lr, self.best, self.valid["ppl"], self.config.lr_decay))
            self.schedule(self.progress)
        else:
            self.best = min(self.best, self.valid["ppl"])
        metrics = {"train_loss": stats["loss"], "lr": self.optimizer.param_groups[0]["lr"],
                   "tokens_per_s": self.epoch_tokens / seconds, "floor_ppl": self.floor,
                   **{f"valid_{k}": v for k, v in self.valid.items() if k != "tokens"}}
        self.hidden, self.epoch_tokens = None, 0
        return metrics

    def describe(self, m: dict[str, Any]) -> str:
        if m.get("final"):
            test = {k[len("test_"):]: v for k, v in m.items() if k.startswith("test_")}
            return describe_scores("test", test, self.floor)
        valid = {k[len("valid_"):]: v for k, v in m.items() if k.startswith("valid_")}
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}  {m['tokens_per_s']:,.0f} tok/s  "
                + describe_scores("valid", valid, self.floor))

    def state_dict(self) -> dict[str, Any]:
        whole_state = gather_state(self.hidden, self.context)  # collective: the state of every rank's rows
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "vocab": {"words": list(self.corpus.vocab.words), "counts": self.corpus.vocab.counts},
                "lr": self.lr, "best_valid_ppl": self.best, "hidden": _to_cpu(whole_state),
                "epoch_tokens": self.epoch_tokens, "tokens": self.tokens}

    def finish(self, last: dict[str, Any], completed: bool, seconds: float) -> dict[str, Any]:
        """Calibrate the norm if asked (on validation text), then the exact test scores: the one reading of test."""
        assert_identical(self.model, self.context)
        norm_shift = 0.0
        if self.config.calibrate_norm:  # the last epoch's validation scores are current unless training went on
            valid = self.valid if self.valid and completed else self.score(self.model, self.corpus.valid)
            norm_shift = calibrate_norm(self.model, self.context.broadcast_object(valid))  # rank 0's shift
        test = self.score(self.model, self.corpus.test)
        return {**{f"test_{k}": v for k, v in test.items() if k != "tokens"}, "valid_ppl": self.valid.get("ppl"),
                "floor_ppl": self.floor, "tokens_per_s": self.tokens / seconds if seconds else 0.0,
                "norm_shift": norm_shift, "world_size": self.context.world_size}


@torch.no_grad()
def check_autocast(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse ``--amp`` before any work where this device cannot run ``model`` under bfloat16 autocast (oneDNN
    on CPUs without bfloat16 support has no bfloat16 LSTM: "could not create a primitive descriptor")."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model.eval()(torch.zeros(1, 2, dtype=torch.long, device=device))
    except RuntimeError as error:
        raise ValueError(f"amp: this {device.type} cannot run the model in bfloat16 ({str(error).splitlines()[0]}); "
                         f"train without --amp") from None


@torch.no_grad()
def calibrate_norm(model: torch.nn.Module, valid: dict[str, Any]) -> float:
    """Shift the self-normalisation constant by the mean of log Z(context) − norm in the validation scores
    ``valid`` of this model, so self-normalised scores centre on 0; returns the shift (0 for the full softmax,
    which has no norm)."""
    owner = getattr(model, "output", model)
    gap = valid.get("log_z_gap_mean")
    if gap is None or not isinstance(getattr(owner, "norm", None), torch.Tensor):
        return 0.0
    owner.norm.add_(gap)
    return gap


def _to_cpu(state: Any) -> Any:
    if state is None:
        return None
    return [s.cpu() for s in state] if isinstance(state, tuple) else state.cpu()


def _to_device(state: Any, device: torch.device) -> Any:
    if state is None:
        return None
    return tuple(s.to(device) for s in state) if isinstance(state, list | tuple) else state.to(device)


__all__ = ["LMTask", "calibrate_norm", "describe_scores", "evaluator", "load_lm_corpus",
           "steps_per_epoch"]
