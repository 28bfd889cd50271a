"""Noise Contrastive Estimation for 2D energy-based models and token-level language models.

Subpackages:
    ebm.nce     the estimator shared by both settings (logit and logistic loss)
    ebm.data    toy 2D samplers, text corpora, the synthetic Zipfian language
    ebm.energy  2D energy networks, noise distributions (fitted mixtures, flows), the estimator arena (NCE,
                ranking NCE, eNCE, conditional NCE, FCE, score matching, CD, grid MLE), exact grid evaluation
    ebm.lm      token noise samplers, sampled losses, the sampled output layer, LMs, data-parallel training
    ebm.harness one way of running both: configs and command lines, run folders, resume, progress, divergence
    ebm.utils   device choice, seeding, atomic checkpoints, metrics logging
"""

__version__ = "0.1.0"
