"""One command line for both settings.

    python train.py --dataset pinwheel                       # a toy 2D dataset: the energy model
    python train.py --dataset synthetic --loss nce           # a corpus: the NCE language model

A toy dataset name trains the 2D energy model (see ``ebm.energy.cli``); anything else is a corpus name or
folder and trains the language model (see ``ebm.lm.cli``). ``--help`` after a dataset shows that side's
options.
"""

from __future__ import annotations

import sys

from ebm.data.toy import TOY_DATASETS

USAGE = """usage: python train.py --dataset NAME [options]

  toy 2D datasets (energy model):  {toy}
  corpora (language model):        synthetic, ptb, wikitext-2, or a folder with train/valid/test.txt

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dataset = _dataset_of(argv)
    if dataset is None:
        if any(a in ("-h", "--help") for a in argv):
            print(USAGE.format(toy=", ".join(TOY_DATASETS)))
            return 0
        dataset = "8gaussians"
        argv = ["--dataset", dataset, *argv]
    if dataset in TOY_DATASETS:
        from ebm.energy.cli import main as energy_main

        return energy_main(argv)
    from ebm.lm.cli import main as lm_main

    return lm_main(argv)


if __name__ == "__main__":
    sys.exit(main())
