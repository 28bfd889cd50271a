"""The model of a language-model config: the network and its output layer over a vocabulary.

``build_model(config, counts)`` is the one place where ``--model`` and ``--loss`` become modules; the training
task, ``load_lm`` and the benches all call it.
"""

from __future__ import annotations

import torch

from ebm.lm.config import LMConfig
from ebm.lm.models import RNNLM, GenericNCELM
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import make_sampler


def build_model(config: LMConfig, counts: torch.Tensor, sparse: bool = True) -> torch.nn.Module:
    """The model of ``config`` over a vocabulary with training ``counts`` (V,) (the unigram noise).

    ``sparse``: sparse row gradients for the embeddings (off on devices without sparse tensors, e.g. MPS).
    """
    vocab_size = counts.numel()
    noise = make_sampler(config.noise, vocab_size, config.noise_power, counts=counts)
    if config.model == "generic":
        return GenericNCELM(vocab_size, noise, config.noise_ratio, config.emb_size, config.hidden_size,
                            config.num_layers, config.dropout, norm=config.norm)
    out_size = config.out_size or (config.emb_size if config.tie_weights else config.hidden_size)
    output = SampledOutput(in_features=out_size, vocab_size=vocab_size, noise=noise, loss=config.loss,
                           noise_ratio=config.noise_ratio, norm=config.norm, noise_sharing=config.noise_sharing,
                           sparse=sparse, selfnorm_weight=config.selfnorm_weight,
                           selfnorm_positions=config.selfnorm_positions)
    return RNNLM(vocab_size, output, config.emb_size, config.hidden_size, config.num_layers, config.dropout,
                 config.model, out_size, config.tie_weights, sparse=sparse, dropout_embedding=config.dropout_embedding,
                 dropout_between=config.dropout_between, dropout_output=config.dropout_output,
                 locked_dropout=config.locked_dropout)


__all__ = ["build_model"]
