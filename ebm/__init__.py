"""Noise Contrastive Estimation for 2D energy-based models and token-level language models.

Subpackages:
    ebm.nce     the estimator shared by both settings (logit and logistic loss)
    ebm.data    toy 2D samplers, text corpora, the synthetic Zipfian language
    ebm.energy  2D energy networks, noise distributions (fitted mixtures, flows), the estimator arena (NCE,
                ranking NCE, eNCE, conditional NCE, FCE, score matching, CD, grid MLE), exact grid evaluation
    ebm.lm      token noise samplers, sampled losses, the sampled output layer, LMs, data-parallel training
    ebm.harness one way of running both: configs and command lines, run folders, the one training loop (``fit``),
                processes (torchrun), progress, divergence, TensorBoard curves
    ebm.utils   device choice, seeding, atomic checkpoints, metrics logging

The distribution is ``nce-ebm`` (``pip install -e .``); the import package is ``ebm``. Another project's package
may also be named ``ebm`` (ebmkit installs one): ``__distribution__`` tells this one apart, and ``train.py`` and the
notebooks refuse to run when ``import ebm`` finds a package without it (see README, "ebm and ebmkit").
"""

__version__ = "0.1.0"
__distribution__ = "nce-ebm"  # the marker train.py and the notebooks check: `import ebm` found this project
