"""Training a word-level language model with any loss of ``ebm.lm``, evaluated exactly.

    from ebm.lm.train import LMConfig, train_lm, load_lm
    result = train_lm(LMConfig(dataset="synthetic", loss="nce", noise_ratio=100, epochs=3))
    lm = load_lm("runs/synthetic-nce")       # model (eval mode), vocabulary, config

Each epoch: truncated-BPTT training (or whole sentences), then the exact validation perplexity (full softmax,
chunked over V) and, for sampled losses, the self-normalised perplexity and the mean / spread of
log Z(context) − norm; one line goes to ``metrics.jsonl`` and the run is checkpointed atomically. The learning
rate follows ``schedule``: constant until ``hold`` of the run (of its steps, or of its time budget), then a
cosine (or linear) decay, or, with "plateau", a factor ``lr_decay`` whenever the validation perplexity does not
improve. At the end the exact
test perplexity is the last metrics line (``"final": true``). The run folder, resume rule, divergence rule,
time budget and progress bars are the shared harness's (``ebm.harness``); a time-budget stop checkpoints
mid-epoch (recurrent state included) and ``resume`` continues exactly from there.

Sentence mode (``batch_mode="sentence"``) trains on whole sentences with the state reset for each, and is
evaluated the same way (``evaluate_sentences``); concat mode reads the stream with the state carried over, as
PyTorch's word_language_model does, in training and evaluation alike.

Noise words are drawn from a CPU generator, so a seed gives the same noise on any device. On Apple MPS the
embedding and output rows use dense gradients (MPS supports sparse tensors only in part).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ebm.data.corpus import Corpus, Split, Vocabulary, batchify, bptt_chunks, load_corpus, num_chunks, sentence_batches
from ebm.data.download import CORPORA, corpus_folder, how_to_get, missing_files
from ebm.data.synthetic import synthetic_corpus
from ebm.harness import (
    DivergenceGuard,
    Position,
    RunFolder,
    StepStats,
    TrainingClock,
    checkpoint_path,
    from_dict,
    progress_bar,
    say,
    set_threads,
)
from ebm.lm.build import build_model
from ebm.lm.config import LMConfig
from ebm.lm.distributed import (
    DistributedContext,
    DistributedLM,
    assert_identical,
    check_global_batch,
    gather_state,
    global_mean_weight,
    shard_rows,
    shard_state,
)
from ebm.lm.evaluate import evaluate, evaluate_sentences
from ebm.lm.models import detach_state
from ebm.lm.optim import (
    add_weight_decay_,
    clip_grad_norm_,
    make_optimizer,
    plateau_lr,
    scheduled_lr,
    set_lr,
)
from ebm.lm.output import SampledOutput
from ebm.utils import get_device, get_rng_state, load_checkpoint, seed_everything, set_rng_state


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


def _train_batches(config: LMConfig, corpus: Corpus, generator: torch.Generator):
    """(iterator of (input, target, mask or None), number of batches) for one training epoch."""
    if config.batch_mode == "concat":
        data = batchify(corpus.train.ids, config.batch_size)
        return ((x, y, None) for x, y in bptt_chunks(data, config.bptt)), _steps_per_epoch(config, corpus)
    batches = sentence_batches(corpus.train, config.batch_size, corpus.vocab.eos_index, generator,
                               max_length=config.bptt or None)
    return batches, _steps_per_epoch(config, corpus)


def _evaluator(config: LMConfig, corpus: Corpus, device: torch.device):
    """split → exact metrics, read the way the model trains (concat stream or whole sentences)."""
    if config.batch_mode == "sentence":
        return lambda model, split: evaluate_sentences(model, split, config.eval_batch_size, corpus.vocab.eos_index,
                                                       device)

    def concat(model: torch.nn.Module, split: Split) -> dict[str, float]:
        rows = min(config.eval_batch_size, len(split) // 2)  # a split shorter than 2·eval_batch_size uses fewer rows
        return evaluate(model, batchify(split.ids, rows), config.bptt, device)

    return concat


def _describe(prefix: str, result: dict[str, float], floor: float | None) -> str:
    text = f"{prefix} ppl {result['ppl']:.2f}"
    if floor is not None:
        text += f" (floor exp(H) {floor:.2f})"
    if "ppl_selfnorm" in result:
        text += (f"  self-normalised {result['ppl_selfnorm']:.2f}  log Z − norm "
                 f"{result['log_z_gap_mean']:+.3f} ± {result['log_z_gap_std']:.3f}")
    return text


def train_lm(config: LMConfig) -> dict[str, Any]:
    """Train (or, with ``config.resume``, continue), evaluate exactly and test; returns the final metrics.

    Under torchrun (``torchrun --nproc-per-node N train.py ...``) every rank trains on its rows of each global
    batch (``ebm.lm.distributed``); only rank 0 writes and prints, and all ranks end with identical parameters.

    Returns a dict with ``epochs`` (completed), ``partial`` (stopped by the time budget mid-epoch),
    ``test_ppl`` (and ``test_ppl_selfnorm`` plus log Z statistics for sampled losses), ``valid_ppl`` of the
    last epoch, ``floor_ppl`` = exp(H) for the synthetic language (else None), ``train_seconds`` (training
    only), ``elapsed`` (wall-clock seconds, evaluation included), ``tokens_per_s``, ``steps`` and the run
    folder ``out``.

    Raises:
        FileNotFoundError: a named corpus that is not downloaded, or a missing split file.
        CheckpointError: resuming without a readable checkpoint (nothing is written).
        ValueError: an unavailable device, a corpus too small, a batch that does not split over the ranks, or
            resuming with other settings.
        TrainingDiverged: a non-finite or exploding loss; names the epoch and steps, keeps the last good checkpoint.
    """
    with DistributedContext.from_env(config.device, timedelta(seconds=config.dist_timeout)) as context:
        return _train(config, context)


def _train(config: LMConfig, context: DistributedContext) -> dict[str, Any]:
    device, main = context.device, context.is_main
    check_global_batch(config.batch_size, context.world_size)
    set_threads(config.threads)
    run = RunFolder(config.run_dir, frames=None)
    state = run.load_for_resume(config) if config.resume else None
    seed_everything(config.seed)
    corpus = load_lm_corpus(config)
    floor = math.exp(corpus.entropy_rate) if corpus.entropy_rate is not None else None
    model = build_model(config, corpus.vocab.counts, sparse=device.type != "mps").to(device)
    if config.compile:
        # Dynamo leaves nn.LSTM/GRU to eager unless its experimental RNN tracing is on (it unrolls the time
        # steps: minutes of compilation, measured in the README). In place, so the state dict keeps its names.
        torch._dynamo.config.allow_rnn = True
        model.compile()
    optimizer = make_optimizer(model, config.optimizer, config.lr, model.sparse_parameters())
    score = _evaluator(config, corpus, device)
    order_gen = torch.Generator().manual_seed(config.seed)  # sentence order: the same on every rank
    noise_gen = torch.Generator().manual_seed(config.seed + 1)  # noise words: the same on every rank
    position, guard, clock = Position(), DivergenceGuard(), TrainingClock(config.time_budget)
    wall = TrainingClock(None)  # wall-clock seconds of the run, evaluation included (never paused)
    lr, best, sums, hidden, valid = config.lr, math.inf, {"tokens": 0, "seconds": 0.0}, None, {}  # lr: the peak
    stats, tokens_total = StepStats(), 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], order_gen, noise_gen)
        position, guard = Position(**state["position"]), DivergenceGuard(**state["guard"])
        clock.spent, lr, best, valid = state["train_seconds"], state["lr"], state["best_valid_ppl"], state["valid"]
        wall.spent, tokens_total = state["elapsed"], state["tokens"]
        if position.epoch_step:
            sums, stats = state["sums"], StepStats(state["stats"])
            hidden = shard_state(_to_device(state["hidden"], device), context)
    parallel = DistributedLM(model, context)  # rank 0's parameters on every rank
    steps_per_epoch = _steps_per_epoch(config, corpus)

    def progress() -> float:
        """How far the run is, for the schedule: the share of the time budget, or of all the steps. Several ranks
        agree on a time share by averaging their clocks (a collective: called at the checks only)."""
        if config.time_budget is None:
            return position.step / (config.epochs * steps_per_epoch)
        seconds = clock.seconds if context.world_size == 1 else context.mean(torch.tensor(clock.seconds)).item()
        return seconds / config.time_budget

    def update_lr() -> None:
        set_lr(optimizer, scheduled_lr(lr, progress(), config.schedule, config.warmup, config.hold, config.lr_final))

    update_lr()
    wall.run()
    context.barrier()  # every rank has read the checkpoint before rank 0 writes
    logger = run.start(config, position.epoch if state is not None else None) if main else None
    report = say if main else (lambda _: None)
    report(f"{corpus.name}: V = {len(corpus.vocab)}, {len(corpus.train):,} training tokens; {config.model} with "
        f"{config.loss} loss on {device}" + (f" × {context.world_size} processes" if context.world_size > 1 else "")
        + (f"; best possible ppl exp(H) = {floor:.2f}" if floor else ""))
    if any(corpus.replaced.values()):
        report(f"warning: undecodable UTF-8 bytes replaced: {corpus.replaced}")

    def checkpoint(epoch_start_rng: torch.Tensor) -> None:
        whole_state = gather_state(hidden, context)  # collective: the state of every rank's rows
        if main:
            run.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
                      "vocab": {"words": list(corpus.vocab.words), "counts": corpus.vocab.counts},
                      "position": position.state_dict(), "guard": guard.state_dict(), "train_seconds": clock.seconds,
                      "lr": lr, "best_valid_ppl": best, "valid": valid, "sums": sums, "stats": stats.totals,
                      "hidden": _to_cpu(whole_state),
                      "elapsed": wall.seconds, "tokens": tokens_total,
                      "epoch_rng": epoch_start_rng, "rng": get_rng_state(order_gen, noise_gen)})

    stopped = context.any(clock.out_of_time())  # a resumed run whose budget is already spent only tests
    while position.epoch < config.epochs and not stopped:
        epoch = position.epoch + 1
        if position.epoch_step:  # resuming mid-epoch: the epoch's batches again, from where it stopped
            order_gen.set_state(state["epoch_rng"])
        epoch_start_rng = order_gen.get_state()
        batches, total = _train_batches(config, corpus, order_gen)
        model.train()
        clock.run()
        seconds_before = clock.seconds - sums["seconds"]
        bar = progress_bar(itertools.islice(batches, position.epoch_step, None), total, f"epoch {epoch}",
                           config.progress and main, initial=position.epoch_step)
        for i, (input, target, mask) in enumerate(bar, start=position.epoch_step):
            torch.manual_seed(_dropout_seed(config.seed, context.rank, position.step))
            if config.time_budget is None or context.world_size == 1:
                update_lr()  # ranks agree on a share of steps; on a share of time only at the checks (below)
            step = functools.partial(train_step, parallel, optimizer, config, input, target, mask, hidden, noise_gen,
                                     context)
            # several ranks: a failed all-reduce (a rank died) is re-raised naming this rank and the likely cause
            loss, hidden = context.run("training step", step) if context.world_size > 1 else step()
            stats.add({"loss": loss})
            position.step, position.epoch_step = position.step + 1, i + 1
            tokens = int(mask.sum()) if mask is not None else target.numel()  # the global batch's tokens
            sums["tokens"], tokens_total = sums["tokens"] + tokens, tokens_total + tokens
            at_check = stats.pending_steps == config.log_interval or i + 1 == total
            # one process reads its clock every step; several ranks vote at the checks only (a collective)
            stopped = clock.out_of_time() if context.world_size == 1 else at_check and context.any(clock.out_of_time())
            if at_check or stopped:
                first = i + 2 - stats.pending_steps
                mean = stats.flush(reduce=context.mean)["loss"]  # the global running loss: the only device sync
                guard.check(mean, f"in epoch {epoch}, steps {first}–{i + 1} of {total}", run.describe_checkpoint())
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{sums['tokens'] / (clock.seconds - seconds_before):,.0f}")
                if config.time_budget is not None and context.world_size > 1:
                    update_lr()
            if stopped:
                break
        bar.close()
        clock.pause()
        sums["seconds"] = clock.seconds - seconds_before
        if stopped and position.epoch_step < total:
            checkpoint(epoch_start_rng)
            report(f"time budget of {config.time_budget:g} s reached in epoch {epoch}, step {position.epoch_step} of "
                f"{total}; --resume continues from there")
            break
        position.epoch, position.epoch_step, hidden = epoch, 0, None
        valid = score(model, corpus.valid)  # every rank evaluates (the same model and data: the same result)
        if config.schedule == "plateau":
            lr, best = plateau_lr(lr, best, valid["ppl"], config.lr_decay)
        else:
            best = min(best, valid["ppl"])
        update_lr()
        tokens_per_s, train_loss = sums["tokens"] / sums["seconds"], stats.epoch_means()["loss"]
        if main:
            logger.log(epoch=epoch, train_loss=train_loss, lr=optimizer.param_groups[0]["lr"],
                       tokens_per_s=tokens_per_s, train_seconds=clock.seconds, elapsed=wall.seconds, floor_ppl=floor,
                       **{f"valid_{k}": v for k, v in valid.items() if k != "tokens"})
        report(f"epoch {epoch}: train loss {train_loss:.4f}  {tokens_per_s:,.0f} tok/s  "
               + _describe("valid", valid, floor))
        sums, stats = {"tokens": 0, "seconds": 0.0}, StepStats()
        checkpoint(epoch_start_rng)

    assert_identical(model, context, [order_gen, noise_gen])
    if config.calibrate_norm:  # the last epoch's validation scores are still current unless training went on
        current = valid if valid and position.epoch_step == 0 else score(model, corpus.valid)
        norm_shift = _calibrate_norm(model, current)
    else:
        norm_shift = 0.0
    if norm_shift:
        report(f"norm calibrated on the validation split: shifted by {norm_shift:+.4f}")
    test = score(model, corpus.test)
    report(_describe("test", test, floor))
    result = {"epoch": position.epoch + (position.epoch_step > 0), "final": True, "partial": position.epoch_step > 0,
              **{f"test_{k}": v for k, v in test.items() if k != "tokens"}, "valid_ppl": valid.get("ppl"),
              "floor_ppl": floor, "train_seconds": clock.seconds, "steps": position.step,
              "tokens_per_s": tokens_total / clock.seconds if clock.seconds else 0.0, "elapsed": wall.seconds,
              "norm_shift": norm_shift, "world_size": context.world_size}
    if main:
        logger.log(**result)
    return {**result, "epochs": position.epoch, "out": str(run.path)}


def _steps_per_epoch(config: LMConfig, corpus: Corpus) -> int:
    """Optimiser steps in one epoch (bptt chunks of the batchified stream, or batches of sentences)."""
    if config.batch_mode == "concat":
        return num_chunks(len(corpus.train) // config.batch_size, config.bptt)
    return -(-corpus.train.num_sentences // config.batch_size)


@torch.no_grad()
def _calibrate_norm(model: torch.nn.Module, valid: dict[str, Any]) -> float:
    """Shift the self-normalisation constant by the mean of log Z(context) − norm in the validation scores
    ``valid`` of this model, so self-normalised scores centre on 0; returns the shift (0 for the full softmax,
    which has no norm)."""
    owner = getattr(model, "output", model)
    gap = valid.get("log_z_gap_mean")
    if gap is None or not isinstance(getattr(owner, "norm", None), torch.Tensor):
        return 0.0
    owner.norm.add_(gap)
    return gap


def _dropout_seed(seed: int, rank: int, step: int) -> int:
    """The seed of step ``step``'s dropout masks on ``rank``: a function of the run's position only, so a resumed
    run draws the masks the uninterrupted one would, and ranks draw different masks for their rows."""
    return (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step) % 2**63


def train_step(parallel: DistributedLM, optimizer: Any, config: LMConfig, input: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor | None, hidden: Any, generator: torch.Generator, context: DistributedContext):
    """One optimiser step on a global batch (B, T) (with its mask in sentence mode); returns (loss, new state).

    The rank keeps its rows of the batch (all of them in one process); the state is carried between bptt chunks
    in concat mode (detached: truncated back-propagation) and reset for every batch of sentences. With
    ``config.amp`` the network runs under bfloat16 autocast; the losses upcast their inputs to float32. Dense
    gradients are averaged over ranks by DDP during ``backward``, sparse rows by ``sync_sparse_gradients``;
    weight decay and clipping then act on touched rows only for sparse gradients.
    """
    device = context.device
    output = getattr(parallel.model, "output", None)
    if isinstance(output, SampledOutput):  # each rank keeps its rows' share of the global batch's noise draws
        output.noise_shard = (context.rank, context.world_size, len(input))
    if mask is not None and context.world_size > 1 and len(mask) % context.world_size:
        input, target, mask = _pad_to_ranks(input, target, mask, context.world_size)
    input, target = (shard_rows(x, context.rank, context.world_size).to(device) for x in (input, target))
    mask = shard_rows(mask, context.rank, context.world_size).to(device) if mask is not None else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else contextlib.nullcontext()
    with autocast:
        loss, hidden = parallel.loss(input, target, hidden if mask is None else None, mask, generator=generator)
    if mask is not None and context.world_size > 1:  # shards of padded sentences hold unequal token counts
        loss = loss * global_mean_weight(int(mask.sum()), context)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parallel.sync_sparse_gradients()
    params = [p for p in parallel.model.parameters() if p.requires_grad]
    add_weight_decay_(params, config.weight_decay)
    if config.clip > 0:
        clip_grad_norm_(params, config.clip)
    optimizer.step()
    return loss.detach(), detach_state(hidden)


def _pad_to_ranks(input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, world_size: int):
    """Sentence batches padded with fully masked rows to a multiple of the world size."""
    extra = -len(mask) % world_size
    pad = lambda x: torch.cat([x, x.new_zeros((extra, *x.shape[1:]))])  # noqa: E731 - masked rows: never scored
    return pad(input), pad(target), pad(mask)


def _to_cpu(state: Any) -> Any:
    if state is None:
        return None
    return [s.cpu() for s in state] if isinstance(state, tuple) else state.cpu()


def _to_device(state: Any, device: torch.device) -> Any:
    if state is None:
        return None
    return tuple(s.to(device) for s in state) if isinstance(state, list | tuple) else state.to(device)


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


__all__ = ["LMConfig", "LoadedLM", "build_model", "load_lm", "load_lm_corpus", "train_lm",
           "train_step"]
