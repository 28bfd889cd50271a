"""Token-level NCE for language models: noise samplers, sampled losses, output layers, models, training.

    from ebm.lm import SampledOutput, LMConfig, train_lm, load_lm
    layer = SampledOutput(in_features=H, vocab_size=V, noise=counts, loss="nce", noise_ratio=100)
    loss = layer(hidden, target)         # hidden (B, T, H), target (B, T) → scalar
    nll = layer.nll(hidden, target)      # exact −log p, chunked over V
    result = train_lm(LMConfig(dataset="synthetic"))      # the language model end to end
"""

from ebm.lm.config import LMConfig
from ebm.lm.evaluate import evaluate, evaluate_sentences, perplexity
from ebm.lm.losses import (
    LOSS_NAMES,
    full_softmax_loss,
    mix_loss,
    nce_loss,
    negative_sampling_loss,
    sampled_softmax_loss,
)
from ebm.lm.models import RNNLM, GenericNCELM
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import (
    NOISE_NAMES,
    AliasSampler,
    LogUniformSampler,
    NoiseSampler,
    UniformSampler,
    make_noise,
    unigram_probs,
)
from ebm.lm.train import LoadedLM, load_lm, train_lm

__all__ = [
    "LOSS_NAMES",
    "NOISE_NAMES",
    "AliasSampler",
    "GenericNCELM",
    "LMConfig",
    "LoadedLM",
    "LogUniformSampler",
    "NoiseSampler",
    "RNNLM",
    "SampledOutput",
    "UniformSampler",
    "evaluate",
    "evaluate_sentences",
    "full_softmax_loss",
    "load_lm",
    "make_noise",
    "mix_loss",
    "nce_loss",
    "negative_sampling_loss",
    "perplexity",
    "sampled_softmax_loss",
    "train_lm",
    "unigram_probs",
]
