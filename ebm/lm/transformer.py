"""A small causal Transformer language model on top of the same output layers as ``RNNLM``.

    x₀ = dropout_e(√E · embedding(w_t) + pos_t)                          (B, T, E)
    xₗ = xₗ₋₁ + dropout_b(attn(LN(xₗ₋₁)));  xₗ = xₗ + dropout_b(MLP(LN(xₗ)))   pre-norm blocks, l = 1 … num_layers
    features = proj(dropout_o(LN(x_L)))                                   (B, T, out_size)

Attention is ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``: position t attends to positions ≤ t of
its own chunk only. Positions are sinusoidal (Vaswani et al. 2017) or learned (a table initialised with the
sinusoids). The MLP is Linear(E, ffn) → GELU → Linear(ffn, E). The embedding is tied to the output layer's
weight by default and has sparse row gradients like ``RNNLM``'s (``FeatureLM.sparse_parameters``), so every
loss of ``SampledOutput`` (NCE included) and the adaptive softmax (untied) train it.

No recurrent state: ``forward`` ignores the state it is given and returns None, so nothing is carried between
bptt chunks. In concat mode (training and ``ebm.lm.evaluate.evaluate``) each chunk of ``bptt`` tokens is read on
its own: the first token of a chunk is predicted from one token of context, the last from ``bptt``; the
perplexity is that of an average context of about bptt / 2 (a longer ``--bptt`` gives more). In sentence mode
every sentence is read whole, as for the LSTM.

Options of ``LMConfig`` that apply: ``--emb-size`` (E, the model width), ``--num-layers`` (blocks), ``--heads``,
``--ffn-size`` (default 4·E), ``--positions``, ``--dropout-embedding`` (on x₀), ``--dropout-between`` (residual
branches and attention weights), ``--dropout-output`` (on the features), ``--locked-dropout`` (x₀ and the
features), ``--out-size``, ``--tie-weights``. ``--hidden-size`` does not apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebm.lm.models import BatchDropout, FeatureLM, State

POSITIONS = ("sinusoidal", "learned")


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """PE (length, dim): PE[t, 2i] = sin(t / 10000^(2i/dim)), PE[t, 2i+1] = cos(t / 10000^(2i/dim))."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (⌈D/2⌉,)
    table = torch.zeros(length, dim + dim % 2)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table[:, :dim]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions ≤ t: (B, T, E) → (B, T, E)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the model width {dim} must be a multiple of heads = {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, E)


class Block(nn.Module):
    """Pre-norm Transformer block: x + drop(attn(LN(x))), then + drop(MLP(LN(x)))."""

    def __init__(self, dim: int, heads: int, ffn_size: int, dropout: float):
        super().__init__()
        self.norm_attn, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_size), nn.GELU(), nn.Linear(ffn_size, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class TransformerLM(FeatureLM):
    """A causal Transformer language model on top of an output layer (``SampledOutput`` or ``AdaptiveOutput``).

    Args:
        vocab_size: V.
        output: the output layer; it must take (B, T, out_size) features.
        emb_size: E, the model width (embedding and residual stream).
        num_layers: Transformer blocks.
        heads: attention heads (E must be a multiple).
        ffn_size: hidden width of each block's MLP (None: 4·E).
        dropout: the rate wherever dropout_embedding / dropout_between / dropout_output are None.
        dropout_embedding, dropout_between, dropout_output: on x₀; on the residual branches and the attention
            weights; on the final features.
        locked_dropout: one mask per sequence for x₀ and the features (as in ``RNNLM``).
        positions: "sinusoidal" or "learned" (a (max_length, E) parameter initialised with the sinusoids).
        max_length: the longest sequence learned positions cover (a ValueError beyond it; sinusoidal positions
            are computed for any length).
        out_size: size of the features given to ``output``; a projection E → out_size when it differs (None: E).
        tie_weights: share the embedding with the output layer's ``weight`` (needs out_size = E).
        sparse: sparse row gradients for the embedding.
    """

    def __init__(
        self,
        vocab_size: int,
        output: nn.Module,
        emb_size: int = 200,
        num_layers: int = 2,
        heads: int = 4,
        ffn_size: int | None = None,
        dropout: float = 0.1,
        positions: str = "sinusoidal",
        max_length: int = 1024,
        out_size: int | None = None,
        tie_weights: bool = True,
        sparse: bool = True,
        dropout_embedding: float | None = None,
        dropout_between: float | None = None,
        dropout_output: float | None = None,
        locked_dropout: bool = False,
    ):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
        if min(vocab_size, emb_size, num_layers, heads, max_length, ffn_size or 1) <= 0:
            raise ValueError("vocab_size, emb_size, num_layers, heads, ffn_size and max_length must be positive")
        rates = self.dropout_rates(dropout, dropout_embedding, dropout_between, dropout_output)
        self.emb_size, self.max_length = emb_size, max_length
        self.embedding = nn.Embedding(vocab_size, emb_size, sparse=sparse)
        table = sinusoidal_positions(max_length, emb_size)  # (L, E)
        if positions == "learned":
            self.positions = nn.Parameter(table)
        else:
            self.register_buffer("positions", table, persistent=False)
        self.drop_embedding = BatchDropout(rates[0], locked_dropout)
        self.drop_output = BatchDropout(rates[2], locked_dropout)
        self.blocks = nn.ModuleList(Block(emb_size, heads, ffn_size or 4 * emb_size, rates[1])
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(emb_size)
        self.attach_output(emb_size, out_size or emb_size, output, tie_weights)

    def forward(self, input: Tensor, state: State = None) -> tuple[Tensor, None]:
        """(B, T) indices → features (B, T, out_size) and None (no state: ``state`` is ignored)."""
        length = input.shape[1]
        positions = self.positions[:length]  # (T, E)
        if length > self.max_length:
            if isinstance(self.positions, nn.Parameter):
                raise ValueError(f"a sequence of {length} tokens is longer than the {self.max_length} learned "
                                 f"positions of this model; use sinusoidal positions or a larger max_length")
            positions = sinusoidal_positions(length, self.emb_size).to(self.positions)
        x = self.drop_embedding(self.embedding(input) * math.sqrt(self.emb_size) + positions)  # (B, T, E)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.drop_output(self.norm(x))), None


__all__ = ["POSITIONS", "Block", "CausalSelfAttention", "TransformerLM", "sinusoidal_positions"]
