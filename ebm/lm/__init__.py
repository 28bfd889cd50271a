"""Token-level NCE for language models: noise samplers, sampled losses, the sampled output layer.

    from ebm.lm import AliasSampler, SampledOutput
    layer = SampledOutput(in_features=H, vocab_size=V, noise=counts, loss="nce", noise_ratio=100)
    loss = layer(hidden, target)         # hidden (B, T, H), target (B, T) → scalar
    nll = layer.nll(hidden, target)      # exact −log p, chunked over V
"""

from ebm.lm.losses import (
    LOSS_NAMES,
    full_softmax_loss,
    mix_loss,
    nce_loss,
    negative_sampling_loss,
    sampled_softmax_loss,
)
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import (
    NOISE_NAMES,
    AliasSampler,
    LogUniformSampler,
    NoiseSampler,
    UniformSampler,
    make_sampler,
    unigram_probs,
)

__all__ = [
    "LOSS_NAMES",
    "NOISE_NAMES",
    "AliasSampler",
    "LogUniformSampler",
    "NoiseSampler",
    "SampledOutput",
    "UniformSampler",
    "full_softmax_loss",
    "make_sampler",
    "mix_loss",
    "nce_loss",
    "negative_sampling_loss",
    "sampled_softmax_loss",
    "unigram_probs",
]

# The language model end to end: models, exact evaluation, training (LMConfig / train_lm / load_lm).
from ebm.lm.evaluate import evaluate, evaluate_sentences, perplexity  # noqa: E402
from ebm.lm.models import RNNLM, GenericNCELM  # noqa: E402
from ebm.lm.train import LMConfig, LoadedLM, load_lm, train_lm  # noqa: E402

__all__ += ["GenericNCELM", "LMConfig", "LoadedLM", "RNNLM", "evaluate", "evaluate_sentences", "load_lm", "perplexity",
            "train_lm"]
