"""Noise Contrastive Estimation for 2D energy-based models and token-level language models.

Subpackages:
    ebm.nce     the estimator shared by both settings (logit and logistic loss)
    ebm.data    toy 2D samplers, text corpora, the synthetic Zipfian language
    ebm.energy  2D energy networks, noise distributions, exact grid evaluation, plots, training
    ebm.lm      token noise samplers, sampled losses, the sampled output layer, LMs, training
    ebm.utils   device choice, seeding, atomic checkpoints, metrics logging
"""

__version__ = "0.1.0"
