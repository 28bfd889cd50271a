"""The config of a language-model run: every option of ``python train.py --dataset <corpus>``.

``LMConfig`` is a dataclass declared with ``ebm.harness.option``: its fields are the command-line flags
(``noise_ratio`` → ``--noise-ratio``), validated on construction, saved in ``config.json`` and in checkpoints.
``noise_ratio`` is k, the noise words per draw (an integer), the LM's name for NCE's ν.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ebm.data.download import CORPORA
from ebm.harness import RunConfig, fraction, non_negative, option, positive, unit_interval
from ebm.harness.schedule import SCHEDULES
from ebm.lm.adaptive import parse_cutoffs
from ebm.lm.losses import MODEL_LOSS_NAMES
from ebm.lm.models import CELLS
from ebm.lm.optim import OPTIMIZERS
from ebm.lm.output import NOISE_SHARING
from ebm.lm.samplers import NOISE_NAMES
from ebm.lm.transformer import POSITIONS

MODELS = (*CELLS, "generic", "transformer")
BATCH_MODES = ("concat", "sentence")


def _parse_norm(text: str) -> str | float:
    return text if text in ("auto", "learn") else float(text)


def _check_cutoffs(name: str, value: str) -> None:
    if value != "auto":
        parse_cutoffs(value)


def _check_norm(name: str, value: str | float) -> None:
    if value not in ("auto", "learn") and (isinstance(value, str) or not math.isfinite(value)):
        raise ValueError(f"{name} must be 'auto', 'learn' or a finite number, got {value!r}")


@dataclass
class LMConfig(RunConfig):
    """Everything a language-model run needs; validated on construction."""

    dataset: str = option("synthetic", f"synthetic, {', '.join(CORPORA)} (under --data-root; python -m "
                          "ebm.data.download NAME fetches them) or a folder with train/valid/test.txt")
    data_root: str = option("datasets", "folder of the named corpora")
    min_freq: int = option(1, "training words seen fewer times become <unk>", check=positive)
    max_size: int | None = option(None, "largest vocabulary, <unk> and <eos> included", check=positive)
    synthetic_vocab: int = option(200, "words of the synthetic language (the model's vocabulary adds <unk>)",
                                  check=positive)
    synthetic_tokens: int = option(1_000_000, "training tokens of the synthetic language (valid/test: a tenth each)",
                                   check=positive)
    synthetic_seed: int = option(0, "seed of the synthetic language and its samples")
    batch_mode: str = option("concat", "concat: bptt chunks of the concatenated text; sentence: padded sentences, "
                             "state reset per sentence", choices=BATCH_MODES)
    batch_size: int = option(20, "sequences per batch (the global batch under torchrun)", check=positive)
    bptt: int = option(35, "tokens per chunk (sentence mode: longest sentence kept, 0 = no cut)", check=non_negative)
    micro_batches: int = option(1, "passes each rank splits its rows of a batch into (gradient accumulation: the same "
                                "step with less memory)", check=positive)
    eval_batch_size: int = option(10, "rows of the evaluation streams (sentences per batch in sentence mode)",
                                  check=positive)
    model: str = option("lstm", "recurrent cell; generic = the seed's full-NCE GRU scorer (loss nce only); "
                        "transformer = a causal Transformer (no state between bptt chunks)", choices=MODELS)
    emb_size: int = option(200, "input embedding size", check=positive)
    hidden_size: int = option(200, "recurrent state size", check=positive)
    num_layers: int = option(2, "recurrent layers (Transformer blocks)", check=positive)
    heads: int = option(4, "transformer: attention heads (--emb-size must be a multiple)", check=positive)
    ffn_size: int | None = option(None, "transformer: hidden width of each block's MLP (none: 4 x --emb-size)",
                                  check=positive)
    positions: str = option("sinusoidal", "transformer: position encoding", choices=POSITIONS)
    dropout: float = option(0.0, "dropout rate wherever --dropout-embedding/-between/-output are not given",
                            check=fraction)
    dropout_embedding: float | None = option(0.4, "dropout on the input embeddings (none: --dropout)",
                                             check=fraction)
    dropout_between: float | None = option(0.3, "dropout between recurrent layers (none: --dropout)", check=fraction)
    dropout_output: float | None = option(0.4, "dropout on the output features (none: --dropout)", check=fraction)
    locked_dropout: bool = option(True, "one dropout mask per sequence for embeddings and outputs (variational)")
    out_size: int | None = option(None, "output embedding size (a projection is added when it differs from "
                                  "--hidden-size)", check=positive)
    tie_weights: bool = option(True, "share the input and output embeddings")
    loss: str = option("nce", "training loss (evaluation is always exact); adaptive = PyTorch's adaptive softmax "
                       "(needs --no-tie-weights)", choices=MODEL_LOSS_NAMES)
    adaptive_cutoffs: str = option("auto", "adaptive softmax cluster boundaries in frequency ranks: auto (V/16, V/4) "
                                   "or comma-separated integers", check=_check_cutoffs)
    adaptive_div_value: float = option(4.0, "adaptive softmax: cluster i projects to H / div^i dimensions",
                                       check=positive)
    noise_ratio: int = option(100, "k, noise words per draw", check=positive)
    noise_sharing: str = option("sequence", "who shares a draw of k noise words: batch, sequence (lower variance "
                                "for 1.1x the step), token (slow)", choices=NOISE_SHARING)
    noise: str = option("unigram", "noise distribution", choices=NOISE_NAMES)
    noise_power: float = option(1.0, "unigram noise ∝ count^power", check=non_negative)
    norm: str | float = option("auto", "log-normaliser of the self-normalised scores: auto (= log V), learn, "
                               "or a number", parse=_parse_norm, check=_check_norm)
    optimizer: str = option("adam", "adam (Adam + SparseAdam for embedding rows) or sgd", choices=OPTIMIZERS)
    selfnorm_weight: float = option(0.0, "α of the self-normalisation penalty α·(log Z − norm)² on a sample of "
                                    "tokens (sampled losses)", check=non_negative)
    selfnorm_positions: int = option(16, "tokens per step whose exact log Z the penalty uses", check=positive)
    calibrate_norm: bool = option(False, "after training, shift the norm to the mean log Z of the validation "
                                  "contexts (self-normalised scores then centre on 0)")
    lr: float = option(4e-3, "peak learning rate", check=positive)
    schedule: str = option("cosine", "cosine / linear: constant until --hold, then decay to --lr-final·lr; "
                           "plateau: lr·--lr-decay whenever the validation perplexity does not improve",
                           choices=SCHEDULES)
    warmup: float = option(0.0, "fraction of the run (steps, or of --time-budget) of linear warm-up", check=fraction)
    hold: float = option(0.5, "fraction of the run at the peak learning rate before the decay", check=fraction)
    lr_final: float = option(0.0, "the last learning rate as a fraction of --lr (cosine, linear)",
                             check=unit_interval)
    lr_decay: float = option(0.5, "plateau schedule: learning-rate factor when the validation perplexity does "
                             "not improve", check=unit_interval)
    weight_decay: float = option(0.0, "L2 penalty (on touched rows only for sparse gradients)", check=non_negative)
    clip: float = option(1.0, "global gradient-norm clip (0 = off)", check=non_negative)
    epochs: int = option(3, "epochs (the learning-rate schedule spans them, so a resumed run keeps them)",
                         check=positive)
    amp: bool = option(False, "bfloat16 autocast for the network (CUDA, CPU); the NCE and log-normaliser arithmetic "
                       "and the exact evaluation stay float32")
    compile: bool = option(False, "torch.compile the recurrent network (experimental; minutes of compilation, "
                           "see the README for when it pays)", resumable=True)
    dist_timeout: float = option(600.0, "seconds a distributed collective waits for the other ranks (torchrun)",
                                 check=positive, resumable=True)
    log_interval: int = option(50, "steps between divergence checks and progress-bar updates", check=positive,
                               resumable=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bptt == 0 and self.batch_mode == "concat":
            raise ValueError("bptt must be a positive integer in concat mode (0 means no cut in sentence mode only)")
        if self.model == "generic" and self.loss != "nce":
            raise ValueError("the generic full-NCE model trains with loss 'nce' only")
        if self.tie_weights and (self.out_size or self.emb_size) != self.emb_size:
            raise ValueError("tie_weights needs out_size equal to emb_size")
        if self.loss == "adaptive" and self.tie_weights:
            raise ValueError("the adaptive softmax has its own head and tail matrices, none of them the input "
                             "embedding: use it with --no-tie-weights (tie_weights=False)")
        if self.model == "transformer" and self.emb_size % self.heads:
            raise ValueError(f"the transformer's width --emb-size {self.emb_size} must be a multiple of --heads "
                             f"{self.heads}")

    def run_name(self) -> str:
        return f"{Path(self.dataset).name}-{self.loss}"


__all__ = ["BATCH_MODES", "MODELS", "LMConfig"]
