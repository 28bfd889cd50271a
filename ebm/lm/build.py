"""The model of a language-model config: the network and its output layer over a vocabulary.

``build_model(config, counts)`` is the one place where ``--model`` and ``--loss`` become modules; the training
task, ``load_lm`` and the benches all call it.
"""

from __future__ import annotations

import torch

from ebm.lm.adaptive import AdaptiveOutput
from ebm.lm.config import LMConfig
from ebm.lm.models import RNNLM, GenericNCELM
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import NoiseSampler, make_noise
from ebm.lm.transformer import TransformerLM


def build_model(config: LMConfig, counts: torch.Tensor, sparse: bool = True) -> torch.nn.Module:
    """The model of ``config`` over a vocabulary with training ``counts`` (V,) (the unigram noise, and the
    frequency ranks of the adaptive softmax): ``config.model`` picks the network (lstm / gru: ``RNNLM``,
    transformer: ``TransformerLM``, generic: ``GenericNCELM``), ``config.loss`` the output layer.

    ``sparse``: sparse row gradients for the embeddings (off on devices without sparse tensors, e.g. MPS).
    """
    vocab_size = counts.numel()
    noise = make_noise(config.noise, vocab_size, config.noise_power, counts=counts)
    if config.model == "generic":
        return GenericNCELM(vocab_size, noise, config.noise_ratio, config.emb_size, config.hidden_size,
                            config.num_layers, config.dropout, norm=config.norm)
    wide = config.tie_weights or config.model == "transformer"
    out_size = config.out_size or (config.emb_size if wide else config.hidden_size)
    output = build_output(config, counts, noise, out_size, sparse)
    if config.model == "transformer":
        return TransformerLM(vocab_size, output, config.emb_size, config.num_layers, config.heads, config.ffn_size,
                             config.dropout, config.positions, max(config.bptt, 1024), out_size, config.tie_weights,
                             sparse, config.dropout_embedding, config.dropout_between, config.dropout_output,
                             config.locked_dropout)
    return RNNLM(vocab_size, output, config.emb_size, config.hidden_size, config.num_layers, config.dropout,
                 config.model, out_size, config.tie_weights, sparse=sparse, dropout_embedding=config.dropout_embedding,
                 dropout_between=config.dropout_between, dropout_output=config.dropout_output,
                 locked_dropout=config.locked_dropout)


def build_output(
    config: LMConfig, counts: torch.Tensor, noise: NoiseSampler, in_features: int, sparse: bool = True
) -> torch.nn.Module:
    """The output layer of ``config.loss`` on ``in_features``-dimensional features: ``AdaptiveOutput`` for
    "adaptive" (cutoffs from the frequency ranks of ``counts``), else ``SampledOutput`` with ``noise``."""
    if config.loss == "adaptive":
        return AdaptiveOutput(in_features, counts.numel(), counts, config.adaptive_cutoffs, config.adaptive_div_value)
    return SampledOutput(in_features=in_features, vocab_size=counts.numel(), noise=noise, loss=config.loss,
                         noise_ratio=config.noise_ratio, norm=config.norm, noise_sharing=config.noise_sharing,
                         sparse=sparse, selfnorm_weight=config.selfnorm_weight,
                         selfnorm_positions=config.selfnorm_positions)


__all__ = ["build_model", "build_output"]
