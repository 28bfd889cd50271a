"""One command line for both settings.

    python train.py --dataset pinwheel                       # a toy 2D dataset: the energy model
    python train.py --dataset synthetic --loss nce           # a corpus: the NCE language model

A toy dataset name (or no --dataset: 8gaussians) trains the 2D energy model (``ebm.energy.cli``); anything else
is a corpus name or folder and trains the language model (``ebm.lm.cli``). ``--help`` after a dataset shows
that side's options. An option of the other side is refused with a message saying which side it belongs to.
"""

from __future__ import annotations

import sys

import ebm

# Before anything else of ebm is imported: another project's package named ebm (ebmkit installs one) may come first
# on sys.path; this project's carries the marker __distribution__ (ebm/__init__.py).
if getattr(ebm, "__distribution__", None) != "nce-ebm":
    sys.exit(f"train.py: error: another package named ebm is imported from {getattr(ebm, '__file__', None) or ebm} "
             f"(ebmkit installs one), not this project's (nce-ebm): use a separate environment, see README")

from ebm.data.download import CORPORA
from ebm.data.toy import TOY_DATASETS
from ebm.energy.config import EnergyConfig
from ebm.harness import RUN_FIELDS, build_parser
from ebm.lm.config import LMConfig

USAGE = """usage: python train.py --dataset NAME [options]

  toy 2D datasets (energy model):  {toy}
  corpora (language model):        synthetic, {corpora}, or a folder with train/valid/test.txt

  python train.py --dataset pinwheel --help     options of the energy model
  python train.py --dataset synthetic --help    options of the language model
"""


def _dataset_of(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--dataset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--dataset="):
            return arg.split("=", 1)[1]
    return None


def _flags(config_cls: type) -> set[str]:
    return set(build_parser(config_cls, "train.py", "", RUN_FIELDS)._option_string_actions)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dataset = _dataset_of(argv)
    if dataset is None and any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(toy=", ".join(TOY_DATASETS), corpora=", ".join(CORPORA)))
        return 0
    energy = dataset is None or dataset in TOY_DATASETS
    own, other = (EnergyConfig, LMConfig) if energy else (LMConfig, EnergyConfig)
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    foreign = sorted(given - _flags(own) & _flags(other))
    if foreign:
        names = ", ".join(foreign)
        if dataset is None:
            hint = (f"they are language-model options: choose a corpus with --dataset "
                    f"(synthetic, {', '.join(CORPORA)} or a folder)")
        elif energy:
            hint = f"they are language-model options, and --dataset {dataset} trains the 2D energy model"
        else:
            hint = f"they are options of the 2D energy model, and --dataset {dataset} trains a language model"
        print(f"train.py: error: {names}: {hint}", file=sys.stderr)
        return 2
    if energy:
        from ebm.energy.cli import main as energy_main

        return energy_main(argv)
    from ebm.lm.cli import main as lm_main

    return lm_main(argv)


if __name__ == "__main__":
    # record: under torchrun, the summary of a failed run shows the failing rank's traceback
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
