"""Command line of the language model (reached through ``python train.py --dataset CORPUS``).

    python train.py --dataset synthetic                                   # the embedded language, a few minutes
    python train.py --dataset wikitext-2 --loss nce --noise-ratio 100     # after python -m ebm.data.download
    python train.py --dataset path/to/corpus --loss full --time-budget 390

Every field of ``LMConfig`` is an option (``--noise-ratio`` for ``noise_ratio``); bad values are rejected
before any work, with exit status 2. A missing corpus exits with 1 and says how to get it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from ebm.lm.losses import LOSS_NAMES
from ebm.lm.optim import OPTIMIZERS
from ebm.lm.samplers import NOISE_NAMES
from ebm.lm.train import BATCH_MODES, MODELS, LMConfig, train_lm

HELP = {
    "dataset": "synthetic, ptb, wikitext-2 (under --data-root) or a folder with train/valid/test.txt",
    "data_root": "folder of the named corpora",
    "min_freq": "training words seen fewer times become <unk>",
    "max_size": "largest vocabulary, <unk> and <eos> included",
    "synthetic_vocab": "words of the synthetic language",
    "synthetic_tokens": "training tokens of the synthetic language (valid/test: a tenth each)",
    "synthetic_seed": "seed of the synthetic language and its samples",
    "batch_mode": "concat: bptt chunks of the concatenated text; sentence: padded sentences with a mask",
    "batch_size": "sequences per batch",
    "bptt": "tokens per chunk (sentence mode: longest sentence kept, 0 = no cut)",
    "eval_batch_size": "rows of the evaluation streams",
    "model": "recurrent cell; generic = the seed's full-NCE GRU scorer (loss nce only)",
    "emb_size": "input embedding size",
    "hidden_size": "recurrent state size",
    "num_layers": "recurrent layers",
    "dropout": "dropout on embeddings, between layers and on the output features",
    "out_size": "output embedding size (a projection is added when it differs from --hidden-size)",
    "tie_weights": "share the input and output embeddings",
    "loss": "training loss (evaluation is always the exact softmax)",
    "noise_ratio": "k, noise samples per batch",
    "noise": "noise distribution",
    "noise_power": "unigram noise ∝ count^power",
    "norm": "log-normaliser of the self-normalised scores: auto (= log V), learn, or a number",
    "optimizer": "adam (Adam + SparseAdam for embedding rows) or sgd",
    "lr": "learning rate",
    "lr_decay": "learning-rate factor when the validation perplexity does not improve",
    "weight_decay": "L2 penalty (on touched rows only for sparse gradients)",
    "clip": "gradient-norm clip (0 = off)",
    "epochs": "epochs",
    "time_budget": "seconds of training (evaluation excluded), for equal wall-clock comparisons",
    "seed": "random seed",
    "device": "auto, cpu, cuda or mps",
    "threads": "torch CPU threads (default: torch's choice; 1 is often fastest on a shared CPU)",
    "out_dir": "run folder (metrics.jsonl, checkpoint.pt)",
    "resume": "continue from out_dir/checkpoint.pt",
    "log_interval": "steps between progress updates",
    "progress": "progress bar and per-epoch lines",
}
CHOICES = {"batch_mode": BATCH_MODES, "model": MODELS, "loss": LOSS_NAMES, "noise": NOISE_NAMES,
           "optimizer": OPTIMIZERS}
OPTIONAL_TYPES = {"max_size": int, "out_size": int, "time_budget": float, "threads": int}


def _norm(text: str) -> str | float:
    if text in ("auto", "learn"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, learn or a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """One option per ``LMConfig`` field, with its default."""
    parser = argparse.ArgumentParser(prog="python train.py", description="Train an NCE language model.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in fields(LMConfig):
        default = field.default if field.default is not MISSING else None
        flags = ["--" + field.name.replace("_", "-")]
        if field.name == "out_dir":
            flags.append("--out")  # the same name as the energy model's run folder option
        if isinstance(default, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=HELP[field.name])
            continue
        kind = _norm if field.name == "norm" else OPTIONAL_TYPES.get(field.name, type(default))
        parser.add_argument(*flags, type=kind, default=default, choices=CHOICES.get(field.name),
                            help=HELP[field.name])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, print the test perplexity; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return int(exit_.code or 0)
    try:
        config = LMConfig(**vars(args))
        result = train_lm(config)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result["status"] != "done":
        print(f"error: training {result['status']} in epoch {result['epochs']}; see {result['out_dir']}",
              file=sys.stderr)
        return 1
    line = f"test ppl {result['test_ppl']:.2f}"
    if result.get("test_ppl_selfnorm") is not None:
        line += f"  (self-normalised {result['test_ppl_selfnorm']:.2f})"
    if result["floor_ppl"] is not None:
        line += f"  floor exp(H) {result['floor_ppl']:.2f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
