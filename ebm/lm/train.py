"""Training a word-level language model with any loss of ``ebm.lm``, evaluated exactly.

    from ebm.lm.train import LMConfig, train_lm, load_lm
    result = train_lm(LMConfig(dataset="synthetic", loss="nce", noise_ratio=100, epochs=3))
    lm = load_lm("runs/lm")          # model (eval mode), vocabulary, config

Each epoch: truncated-BPTT training (or whole sentences) with a tqdm bar showing tokens/s and the running
loss; then the exact validation perplexity (full softmax, chunked over V) and, for sampled losses, the
self-normalised perplexity and the mean / spread of log Z(context) − norm; the learning rate is multiplied
by ``lr_decay`` whenever the validation perplexity does not improve; one line goes to ``metrics.jsonl`` and
the run is checkpointed atomically (model, optimiser, learning rate, RNG states), so ``resume`` continues
exactly where an interrupted run stopped. At the end the exact test perplexity is the last metrics line
(``test_ppl``, and ``test_ppl_selfnorm`` for sampled losses).

``time_budget`` (seconds of training, evaluation excluded) stops training mid-epoch for equal wall-clock
comparisons between losses. A non-finite running loss stops the run (status "diverged").
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from ebm.data.corpus import Corpus, Vocabulary, batchify, bptt_chunks, load_corpus, num_chunks, sentence_batches
from ebm.data.download import CORPORA, corpus_folder, how_to_get, missing_files
from ebm.data.synthetic import synthetic_corpus
from ebm.lm.evaluate import evaluate
from ebm.lm.losses import LOSS_NAMES
from ebm.lm.models import CELLS, RNNLM, GenericNCELM, detach_state
from ebm.lm.optim import OPTIMIZERS, add_weight_decay_, clip_grad_norm_, make_optimizer, set_lr
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import NOISE_NAMES, make_sampler
from ebm.utils import (
    MetricsLogger,
    get_device,
    get_rng_state,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

MODELS = (*CELLS, "generic")
BATCH_MODES = ("concat", "sentence")
# Options that may change between a run and its resumption.
_RESUMABLE = {"epochs", "time_budget", "resume", "progress", "log_interval", "device", "threads", "out_dir"}


@dataclass
class LMConfig:
    """Everything a language-model run needs; ``validate`` runs on construction."""

    # data
    dataset: str = "synthetic"  # "synthetic", "ptb", "wikitext-2" (under data_root) or a corpus folder
    data_root: str = "datasets"  # where named corpora live
    min_freq: int = 1  # rarer training words become <unk>
    max_size: int | None = None  # at most this many vocabulary entries (<unk>, <eos> included)
    synthetic_vocab: int = 200  # V of the synthetic language (the model's vocabulary has V + 1: <unk>)
    synthetic_tokens: int = 1_000_000  # synthetic training tokens; valid and test get a tenth each
    synthetic_seed: int = 0  # the language and its samples (independent of the training seed)
    batch_mode: str = "concat"  # "concat": bptt chunks of the concatenated text; "sentence": padded sentences
    batch_size: int = 32
    bptt: int = 35  # tokens per chunk (concat mode; sentences are cut at this length in sentence mode: 0 = no cut)
    eval_batch_size: int = 10
    # model
    model: str = "lstm"  # "lstm", "gru" or "generic" (the seed's full-NCE GRU scorer; loss must be nce)
    emb_size: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    out_size: int | None = None  # output embedding size (a projection is added when ≠ hidden_size)
    tie_weights: bool = False
    # loss
    loss: str = "nce"  # full, nce, sampled, neg, mix
    noise_ratio: int = 100  # k noise samples per batch (shared noise)
    noise: str = "unigram"  # unigram (training counts ^ noise_power), log_uniform, uniform
    noise_power: float = 1.0
    norm: str | float = "auto"  # log-normaliser: "auto" = log V, "learn", or a number
    # optimisation
    optimizer: str = "adam"  # adam (dense Adam + SparseAdam) or sgd
    lr: float = 3e-3
    lr_decay: float = 0.5  # lr ← lr · lr_decay when the validation perplexity does not improve
    weight_decay: float = 0.0  # L2, on touched rows only for sparse gradients
    clip: float = 1.0  # global gradient-norm clip (0 = off)
    epochs: int = 3
    time_budget: float | None = None  # seconds of training (evaluation excluded); None = no limit
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's default; 1 is often fastest on a shared CPU)
    out_dir: str = "runs/lm"
    resume: bool = False
    log_interval: int = 50  # steps between loss checks / progress-bar updates
    progress: bool = True  # tqdm bar and per-epoch lines on stdout

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject bad values before any work is done (ValueError naming the option)."""
        positive = ["synthetic_vocab", "synthetic_tokens", "batch_size", "eval_batch_size", "emb_size",
                    "hidden_size", "num_layers", "noise_ratio", "epochs", "log_interval", "min_freq"]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.bptt, int) or self.bptt < 0 or (self.bptt == 0 and self.batch_mode == "concat"):
            raise ValueError(f"bptt must be a positive integer, got {self.bptt!r}")
        for name in ("max_size", "out_size", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        for name, value, lo, hi in (("dropout", self.dropout, 0.0, 1.0), ("lr_decay", self.lr_decay, 0.0, 1.0)):
            if not (math.isfinite(value) and lo <= value <= hi) or (name == "dropout" and value == 1.0):
                raise ValueError(f"{name} must be in [{lo}, {hi}{')' if name == 'dropout' else ']'}, got {value!r}")
        for name in ("lr",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("weight_decay", "clip", "noise_power"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {getattr(self, name)!r}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        for name, value, choices in (("batch_mode", self.batch_mode, BATCH_MODES), ("model", self.model, MODELS),
                                     ("loss", self.loss, LOSS_NAMES), ("noise", self.noise, NOISE_NAMES),
                                     ("optimizer", self.optimizer, OPTIMIZERS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.model == "generic" and self.loss != "nce":
            raise ValueError("the generic full-NCE model trains with loss 'nce' only")
        if (self.norm not in ("auto", "learn")) and (isinstance(self.norm, str) or not math.isfinite(self.norm)):
            raise ValueError(f"norm must be 'auto', 'learn' or a finite number, got {self.norm!r}")
        if self.tie_weights and (self.out_size or self.emb_size) != self.emb_size:
            raise ValueError("tie_weights needs out_size equal to emb_size")


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


def build_model(config: LMConfig, counts: torch.Tensor) -> torch.nn.Module:
    """The model described by ``config`` over a vocabulary with training ``counts`` (V,) (the unigram noise)."""
    vocab_size = counts.numel()
    noise = make_sampler(config.noise, vocab_size, config.noise_power, counts=counts)
    norm = float(config.norm) if not isinstance(config.norm, str) else config.norm
    if config.model == "generic":
        return GenericNCELM(vocab_size, noise, config.noise_ratio, config.emb_size, config.hidden_size,
                            config.num_layers, config.dropout, norm=None if norm == "auto" else norm)
    out_size = config.out_size or (config.emb_size if config.tie_weights else config.hidden_size)
    output = SampledOutput(in_features=out_size, vocab_size=vocab_size, noise=noise, loss=config.loss,
                           noise_ratio=config.noise_ratio, norm=norm)
    return RNNLM(vocab_size, output, config.emb_size, config.hidden_size, config.num_layers, config.dropout,
                 config.model, out_size, config.tie_weights)


def _train_batches(config: LMConfig, corpus: Corpus, generator: torch.Generator):
    """(iterator of (input, target, mask or None), number of batches) for one training epoch."""
    if config.batch_mode == "concat":
        data = batchify(corpus.train.ids, config.batch_size)
        return ((x, y, None) for x, y in bptt_chunks(data, config.bptt)), num_chunks(data.size(1), config.bptt)
    batches = sentence_batches(corpus.train, config.batch_size, corpus.vocab.eos_index, generator,
                               max_length=config.bptt or None)
    return batches, -(-corpus.train.num_sentences // config.batch_size)


def _train_epoch(model, optimizer, config: LMConfig, batches, total: int, device, seconds_left: float, desc: str):
    """One pass over ``batches``; returns (mean loss, tokens, seconds, diverged, out_of_time)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    state, loss_sum, loss_count, tokens, diverged, out_of_time = None, 0.0, 0, 0, False, False
    pending = torch.zeros((), device=device)
    start = time.perf_counter()
    bar = tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=not config.progress)
    for step, (input, target, mask) in enumerate(bar, start=1):
        input, target = input.to(device), target.to(device)
        mask = mask.to(device) if mask is not None else None
        loss, state = model.loss(input, target, state if mask is None else None, mask)
        state = detach_state(state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        add_weight_decay_(params, config.weight_decay)
        if config.clip > 0:
            clip_grad_norm_(params, config.clip)
        optimizer.step()
        pending += loss.detach()
        tokens += int(mask.sum()) if mask is not None else target.numel()
        elapsed = time.perf_counter() - start
        out_of_time = elapsed >= seconds_left
        if step % config.log_interval == 0 or step == total or out_of_time:
            interval_loss = float(pending) / (step - loss_count)
            if not math.isfinite(interval_loss):
                diverged = True
                break
            loss_sum += interval_loss * (step - loss_count)
            loss_count, pending = step, torch.zeros((), device=device)
            bar.set_postfix(loss=f"{interval_loss:.3f}", tok_s=f"{tokens / elapsed:,.0f}")
        if out_of_time:
            break
    bar.close()
    return loss_sum / max(loss_count, 1), tokens, time.perf_counter() - start, diverged, out_of_time


def _drop_records_after(path: Path, epoch: int) -> None:
    """Keep the metrics of epochs ≤ ``epoch`` only (resumption replays the rest, and writes a new test line)."""
    if path.exists():
        kept = [r for r in read_metrics(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
        path.unlink()
        logger = MetricsLogger(path)
        for record in kept:
            logger.log(**record)


def _describe(prefix: str, result: dict[str, float], floor: float | None) -> str:
    text = f"{prefix} ppl {result['ppl']:.2f}"
    if floor is not None:
        text += f" (floor exp(H) {floor:.2f})"
    if "ppl_selfnorm" in result:
        text += (f"  self-normalised {result['ppl_selfnorm']:.2f}  log Z − norm "
                 f"{result['log_z_gap_mean']:+.3f} ± {result['log_z_gap_std']:.3f}")
    return text


def train_lm(config: LMConfig) -> dict[str, Any]:
    """Train, evaluate exactly and test; returns the final metrics.

    Returns a dict with ``status`` ("done", "diverged"), ``epochs`` (completed), ``test_ppl`` (and
    ``test_ppl_selfnorm`` plus log Z statistics for sampled losses), ``valid_ppl`` of the last epoch,
    ``floor_ppl`` = exp(H) for the synthetic language (else None), ``train_seconds``, ``tokens_per_s``
    and the run folder ``out_dir``. Files in out_dir: ``metrics.jsonl``, ``checkpoint.pt``.
    """
    config.validate()
    wall_start = time.perf_counter()
    device = get_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    corpus = load_lm_corpus(config)
    floor = math.exp(corpus.entropy_rate) if corpus.entropy_rate is not None else None
    model = build_model(config, corpus.vocab.counts).to(device)
    optimizer = make_optimizer(model, config.optimizer, config.lr, model.sparse_parameters())
    # (a split shorter than 2 · eval_batch_size tokens is read with fewer rows)
    valid_data, test_data = (batchify(split.ids, min(config.eval_batch_size, len(split) // 2))
                             for split in (corpus.valid, corpus.test))
    generator = torch.Generator().manual_seed(config.seed)  # sentence order
    out = Path(config.out_dir)
    metrics_path, checkpoint_path = out / "metrics.jsonl", out / "checkpoint.pt"
    say = print if config.progress else (lambda *_: None)
    say(f"{corpus.name}: V = {len(corpus.vocab)}, {len(corpus.train):,} training tokens; {config.model} with "
        f"{config.loss} loss on {device}" + (f"; best possible ppl exp(H) = {floor:.2f}" if floor else ""))
    if any(corpus.replaced.values()):
        say(f"warning: undecodable UTF-8 bytes replaced: {corpus.replaced}")

    epoch, lr, best, train_seconds, elapsed_before, tokens_total = 0, config.lr, math.inf, 0.0, 0.0, 0
    if config.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=device)
        saved = {k: v for k, v in state["config"].items() if k not in _RESUMABLE}
        current = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE}
        if saved != current:
            changed = sorted(k for k in current if saved.get(k) != current[k])
            raise ValueError(f"cannot resume {checkpoint_path}: options differ from the saved run ({changed})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], generator)
        epoch, lr, best = state["epoch"], state["lr"], state["best_valid_ppl"]
        train_seconds, elapsed_before, tokens_total = state["train_seconds"], state["elapsed"], state["tokens"]
        _drop_records_after(metrics_path, epoch)
        say(f"resumed from {checkpoint_path} after epoch {epoch}")
    else:
        metrics_path.unlink(missing_ok=True)
    set_lr(optimizer, lr)
    logger = MetricsLogger(metrics_path)
    budget = config.time_budget if config.time_budget is not None else math.inf
    status, valid = "done", {}

    while epoch < config.epochs and train_seconds < budget:
        epoch += 1
        batches, total = _train_batches(config, corpus, generator)
        train_loss, tokens, seconds, diverged, out_of_time = _train_epoch(
            model, optimizer, config, batches, total, device, budget - train_seconds, f"epoch {epoch}")
        train_seconds += seconds
        tokens_total += tokens
        if diverged:
            status = "diverged"
            logger.log(epoch=epoch, status=status, lr=lr, elapsed=elapsed_before + time.perf_counter() - wall_start)
            say(f"epoch {epoch}: the training loss is not finite (lr {lr:g}); stopping")
            break
        valid = evaluate(model, valid_data, config.bptt or 35, device)
        if valid["ppl"] < best:
            best = valid["ppl"]
        else:
            lr *= config.lr_decay
            set_lr(optimizer, lr)
        elapsed = elapsed_before + time.perf_counter() - wall_start
        logger.log(epoch=epoch, train_loss=train_loss, lr=lr, tokens_per_s=tokens / seconds,
                   train_seconds=train_seconds, elapsed=elapsed, partial=out_of_time, floor_ppl=floor,
                   **{f"valid_{k}": v for k, v in valid.items() if k != "tokens"})
        say(f"epoch {epoch}: train loss {train_loss:.4f}  {tokens / seconds:,.0f} tok/s  "
            + _describe("valid", valid, floor))
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": asdict(config),
            "vocab": {"words": list(corpus.vocab.words), "counts": corpus.vocab.counts},
            "epoch": epoch, "lr": lr, "best_valid_ppl": best, "train_seconds": train_seconds, "elapsed": elapsed,
            "tokens": tokens_total, "rng": get_rng_state(generator),
        })

    result: dict[str, Any] = {"status": status, "epochs": epoch, "floor_ppl": floor, "train_seconds": train_seconds,
                              "tokens_per_s": tokens_total / train_seconds if train_seconds else 0.0,
                              "valid_ppl": valid.get("ppl"), "out_dir": str(out)}
    if status == "done":
        test = evaluate(model, test_data, config.bptt or 35, device)
        record = {f"test_{k}": v for k, v in test.items() if k != "tokens"}
        logger.log(**record, elapsed=elapsed_before + time.perf_counter() - wall_start)
        say(_describe("test", test, floor))
        result.update(record)
    return result


class LoadedLM(NamedTuple):
    model: torch.nn.Module
    vocab: Vocabulary
    config: LMConfig


def load_lm(path: str | os.PathLike, device: str = "cpu") -> LoadedLM:
    """A trained model in evaluation mode from a run folder or its ``checkpoint.pt``, in one call.

    Returns (model, vocab, config); e.g. ``model.scores(input, target)`` gives exact per-token NLLs.
    """
    path = Path(path)
    state = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path, map_location=device)
    known = {f.name for f in fields(LMConfig)}
    config = LMConfig(**{k: v for k, v in state["config"].items() if k in known})
    vocab = Vocabulary(state["vocab"]["words"], state["vocab"]["counts"])
    model = build_model(config, vocab.counts)
    model.load_state_dict(state["model"])
    return LoadedLM(model.to(get_device(device)).eval(), vocab, config)


__all__ = ["BATCH_MODES", "MODELS", "LMConfig", "LoadedLM", "build_model", "load_lm", "load_lm_corpus", "train_lm"]
