"""Word-level recurrent language models.

``RNNLM``: embedding → dropout → LSTM or GRU (``num_layers``, dropout between layers) → dropout → optional
linear projection to the output embedding size → an output layer (``SampledOutput``: full softmax, NCE, sampled
softmax, negative sampling, mix; or ``ebm.lm.adaptive.AdaptiveOutput``: the adaptive softmax). The output layer
owns the loss; the network only produces features. With ``tie_weights`` the input embedding *is* the output
embedding (``SampledOutput`` only). ``FeatureLM`` holds what every such network shares (``loss``, ``scores``,
``sparse_parameters``); ``ebm.lm.transformer.TransformerLM`` is the other one.

An output layer offers ``forward(features, target, reduction, generator)`` (the training loss),
``nll_and_gap(features, target)`` (exact NLL and log Z − norm or None) and ``sparse_parameters()``.

``GenericNCELM``: the "full NCE" model of the seed (its IndexGRU), where a word is scored by feeding it
through the recurrent cell on top of the context: s(w | h) = u·GRUCell(e_w, h) + b. p(w | h) ∝ exp(s) is a
generic unnormalised model that only NCE can train (there is no softmax layer to speed up).

Both models share one interface used by the training loop and evaluation:

    loss(input, target, state, mask, generator) -> (scalar loss, state)     input, target, mask: (B, T)
    scores(input, target, state)                -> (nll (B, T), log Z − norm (B, T) or None, state)

``scores`` gives the exact negative log-likelihood −log p(target | context) (normalised over the whole
vocabulary) and, for models trained to self-normalise, the gap log Z(context) − norm, so that the
self-normalised log-probability is s(w) − norm = −nll + (log Z − norm). ``generator`` is the CPU
``torch.Generator`` the noise is drawn from (torch's global CPU generator when None).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebm.lm.output import register_norm
from ebm.lm.samplers import NoiseSampler
from ebm.nce import nce_logit, nce_token_loss

CELLS = ("lstm", "gru")
State = Tensor | tuple[Tensor, Tensor] | None


def detach_state(state: State) -> State:
    """Cut the graph between bptt chunks (truncated back-propagation through time)."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _masked_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


class BatchDropout(nn.Module):
    """Dropout x · m / (1 − p), m ~ Bernoulli(1 − p): one mask per token (B, T, D), or with ``locked`` one per
    sequence shared over time (B, 1, D) (Gal & Ghahramani 2016's variational dropout). Identity in evaluation
    mode or at p = 0.

    ``shard = (generator, i, S, R)`` (set by ``RNNLM.shard_dropout``): the input is shard i of S equal shards of a
    global batch of R real rows (None: S × the input's rows); the masks of all R rows are drawn from ``generator``
    and the shard keeps its rows (rows that only pad the batch reuse masks), so any split of the batch meets one
    process's masks. ``shard = None``: the masks of the input's rows from torch's global generator.
    """

    def __init__(self, p: float, locked: bool = False):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p, self.locked = p, locked
        self.shard: tuple[torch.Generator, int, int, int | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        rows = x.shape[0]
        shape = (rows, 1, *x.shape[2:]) if self.locked else tuple(x.shape)
        if self.shard is None:
            return x * torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - self.p) / (1 - self.p)
        generator, index, shards, real_rows = self.shard
        real_rows = real_rows or rows * shards
        every = torch.empty((real_rows, *shape[1:]), device=generator.device)  # (R, …)
        every.bernoulli_(1 - self.p, generator=generator)
        if real_rows < rows * shards:  # padding rows: any mask will do
            every = every.repeat(-(-rows * shards // real_rows), *([1] * (every.dim() - 1)))
        mask = every[index * rows : (index + 1) * rows].to(device=x.device, dtype=x.dtype)  # (B/S, …)
        return x * mask / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, locked={self.locked}"


class LockedDropout(BatchDropout):
    """``BatchDropout(p, locked=True)``: one mask per sequence, x (B, T, D) · m (B, 1, D) / (1 − p)."""

    def __init__(self, p: float):
        super().__init__(p, locked=True)


class FeatureLM(nn.Module):
    """A network from (B, T) tokens to (B, T, D) features, ``forward(input, state) → (features, state)``, with an
    input ``embedding`` (``nn.Embedding``) and an ``output`` layer that owns the loss. Subclasses define
    ``forward``; this class gives them the interface the training loop and evaluation call."""

    @staticmethod
    def dropout_rates(dropout: float, embedding: float | None, between: float | None,
                      output: float | None) -> tuple[float, float, float]:
        """The (embedding, between, output) dropout rates, each ``dropout`` where None; all in [0, 1)."""
        rates = {"dropout": dropout, "dropout_embedding": embedding, "dropout_between": between,
                 "dropout_output": output}
        rates = {name: dropout if rate is None else rate for name, rate in rates.items()}
        for name, rate in rates.items():
            if not 0 <= rate < 1:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        return rates["dropout_embedding"], rates["dropout_between"], rates["dropout_output"]

    def attach_output(self, features: int, out_size: int, output: nn.Module, tie_weights: bool) -> None:
        """A projection from ``features`` to ``out_size`` when they differ, the output layer, and the input
        embedding tied to the output's weight (or initialised U(−0.1, 0.1))."""
        if tie_weights and out_size != self.embedding.embedding_dim:
            raise ValueError(f"tie_weights needs out_size == emb_size, got {out_size} and "
                             f"{self.embedding.embedding_dim}")
        self.proj = nn.Linear(features, out_size) if out_size != features else nn.Identity()
        self.output = output
        if tie_weights:
            self.tie_embedding()
        else:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def shard_dropout(self, generator: torch.Generator | None, index: int = 0, shards: int = 1,
                      real_rows: int | None = None) -> None:
        """Draw the next training passes' dropout masks from ``generator`` for a global batch of ``real_rows``
        (None: shards × the input's rows), of which the input is shard ``index`` of ``shards`` (every
        ``BatchDropout`` of the network). None: torch's global generator, the input's rows only."""
        for module in self.modules():
            if isinstance(module, BatchDropout):
                module.shard = None if generator is None else (generator, index, shards, real_rows)

    def tie_embedding(self) -> None:
        """The input embedding becomes the output layer's (V, E) ``weight`` (one parameter)."""
        if not isinstance(getattr(self.output, "weight", None), nn.Parameter):
            raise ValueError(f"tie_weights needs an output layer with one (V, E) weight (SampledOutput); "
                             f"{type(self.output).__name__} has none (the adaptive softmax's head and tails "
                             f"are their own matrices): use --no-tie-weights")
        self.embedding.weight = self.output.weight

    def loss(
        self,
        input: Tensor,
        target: Tensor,
        state: State = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, State]:
        """The output layer's training loss, averaged over (unmasked) tokens; noise drawn from `generator`."""
        features, state = self(input, state)
        if mask is None:
            return self.output(features, target, generator=generator), state
        return _masked_mean(self.output(features, target, reduction="none", generator=generator), mask), state

    @torch.no_grad()
    def scores(self, input: Tensor, target: Tensor, state: State = None):
        """Exact per-token NLL (B, T) and, for sampled losses, the gap log Z(context) − norm (B, T), else None."""
        features, state = self(input, state)
        nll, gap = self.output.nll_and_gap(features, target)  # chunked over V
        return nll, gap, state

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are sparse under the current loss (for SparseAdam)."""
        params = [self.embedding.weight] if self.embedding.sparse else []
        output_rows = self.output.sparse_parameters()
        tied = self.embedding.weight is getattr(self.output, "weight", None)
        if tied and not any(p is self.embedding.weight for p in output_rows):
            params = []  # tied to a dense output gradient (the full softmax): the sum is dense
        return list({id(p): p for p in params + output_rows}.values())


class RNNLM(FeatureLM):
    """An LSTM/GRU language model on top of an output layer (``SampledOutput`` or ``AdaptiveOutput``).

    Args:
        vocab_size: V.
        output: the output layer, e.g. ``SampledOutput(in_features=out_size, vocab_size=V, ...)``; it must
            take (B, T, out_size) features.
        emb_size: E, input embedding size.
        hidden_size: H, recurrent state size.
        num_layers: stacked recurrent layers.
        dropout: dropout on the embeddings, between layers and on the features (each overridable below).
        dropout_embedding, dropout_between, dropout_output: the rate at each of those three places (None:
            ``dropout``). Dropout is active in training mode only; ``eval()`` turns it off.
        locked_dropout: one dropout mask per sequence for the embeddings and the features, shared by all its
            time steps (variational dropout, Gal & Ghahramani 2016; Merity et al. 2018), instead of a fresh mask
            per token. Between layers a mask per token, as nn.LSTM's own; in training the layers then run one
            by one (the parameters and the state dict stay nn.LSTM's) so ``shard_dropout`` governs that mask too.
        cell: "lstm" or "gru".
        out_size: size of the features given to ``output``; a linear projection H → out_size is added when
            it differs from H (None: H, or E when tying).
        tie_weights: share the input embedding with the output layer's ``weight`` (needs out_size = E and a
            ``SampledOutput``; a ValueError for the adaptive softmax).
        sparse: sparse gradients for the input embedding (only touched rows are updated).
    """

    def __init__(
        self,
        vocab_size: int,
        output: nn.Module,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.2,
        cell: str = "lstm",
        out_size: int | None = None,
        tie_weights: bool = False,
        sparse: bool = True,
        dropout_embedding: float | None = None,
        dropout_between: float | None = None,
        dropout_output: float | None = None,
        locked_dropout: bool = False,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
        if min(vocab_size, emb_size, hidden_size, num_layers) <= 0:
            raise ValueError("vocab_size, emb_size, hidden_size and num_layers must be positive")
        embedding, between, out = self.dropout_rates(dropout, dropout_embedding, dropout_between, dropout_output)
        self.embedding = nn.Embedding(vocab_size, emb_size, sparse=sparse)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(emb_size, hidden_size, num_layers, batch_first=True)
        self.drop_embedding = BatchDropout(embedding, locked_dropout)
        self.drop_between = BatchDropout(between if num_layers > 1 else 0.0)
        self.drop_output = BatchDropout(out, locked_dropout)
        self.attach_output(hidden_size, out_size or (emb_size if tie_weights else hidden_size), output, tie_weights)

    def forward(self, input: Tensor, state: State = None) -> tuple[Tensor, State]:
        """(B, T) indices → features (B, T, out_size) and the new recurrent state."""
        embedded = self.drop_embedding(self.embedding(input))  # (B, T, E)
        if self.training and self.drop_between.p > 0:
            hidden, state = self._layer_by_layer(embedded, state)
        else:
            hidden, state = self.rnn(embedded, state)  # (B, T, H)
        return self.proj(self.drop_output(hidden)), state

    def _layer_by_layer(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """nn.LSTM/GRU's stack with ``drop_between`` on each layer's output but the last: (B, T, E) → (B, T, H)."""
        rnn, lstm = self.rnn, isinstance(self.rnn, nn.LSTM)
        if state is None:
            zeros = x.new_zeros(rnn.num_layers, x.shape[0], rnn.hidden_size)
            state = (zeros, zeros) if lstm else zeros
        weights, finals = rnn._flat_weights, []  # 4 per layer: w_ih, w_hh, b_ih, b_hh
        for layer in range(rnn.num_layers):
            w, at = weights[4 * layer : 4 * layer + 4], slice(layer, layer + 1)
            # torch.lstm/gru(input, state, weights, has_biases, layers, dropout, train, bidirectional, batch_first)
            if lstm:
                x, h, c = torch.lstm(x, (state[0][at], state[1][at]), w, True, 1, 0.0, True, False, True)
                finals.append((h, c))
            else:
                x, h = torch.gru(x, state[at], w, True, 1, 0.0, True, False, True)
                finals.append((h,))
            if layer + 1 < rnn.num_layers:
                x = self.drop_between(x)
        joined = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))  # (layers, B, H) each
        return x, joined if lstm else joined[0]


class GenericNCELM(nn.Module):
    """The seed's "full NCE" language model (IndexGRU), with a factorised cell so noise is cheap to score.

    A GRU reads the context (B, T) → h_t (B, T, H). A word w is scored by one more GRU step on top of h_t,
    h' = GRUCell(e_w, h_t), and a linear scorer: s(w | h_t) = u·h' + b. Because the GRU's input and hidden
    projections are separate matrices, W_i e_w (M, 3H) is computed once for the M scored words and
    W_h h_t (N, 3H) once per position; each (position, word) pair then costs O(H) elementwise work.

    Training is NCE with k noise words shared by the batch (ebm.nce):
    G = s(w | h) − norm − log(k q(w)), loss = −log σ(G_target) − Σ_j log σ(−G_noise_j).
    ``norm`` is "auto" (log V), a number, or "learn" (a scalar parameter initialised at log V), as in
    ``SampledOutput``.

    Limits (why the seed could not compute perplexity with it): there is no output matrix, so exact
    normalisation needs s(w | h) for all V words at every position — O(N · V · H) elementwise work (chunked
    here over V, so memory stays bounded). That is fine for V of a few thousand (the synthetic language) but
    minutes per evaluation at V ≈ 14k on a CPU. Accidental hits (a noise word equal to a target) are kept.
    """

    def __init__(
        self,
        vocab_size: int,
        noise: NoiseSampler,
        noise_ratio: int = 20,
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 1,
        dropout: float = 0.2,
        norm: str | float = "auto",
        chunk_size: int = 128,
    ):
        super().__init__()
        if noise_ratio <= 0:
            raise ValueError(f"noise_ratio must be positive, got {noise_ratio}")
        if noise.vocab_size != vocab_size:
            raise ValueError(f"noise covers {noise.vocab_size} tokens but vocab_size is {vocab_size}")
        self.noise = noise
        self.noise_ratio = noise_ratio
        register_norm(self, norm, vocab_size)
        self.vocab_size = vocab_size
        self.chunk_size = chunk_size
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.rnn = nn.GRU(emb_size, hidden_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0)
        self.drop = nn.Dropout(dropout)
        self.cell = nn.GRUCell(emb_size, hidden_size)
        self.scorer = nn.Linear(hidden_size, 1)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)

    def forward(self, input: Tensor, state: State = None) -> tuple[Tensor, State]:
        """(B, T) → contexts h (B, T, H) and the new state."""
        hidden, state = self.rnn(self.drop(self.embedding(input)), state)
        return self.drop(hidden), state

    def score(self, context: Tensor, words: Tensor) -> Tensor:
        """s(w | h) for every pair: context (N, H), words (M,) → (N, M)."""
        gi = nn.functional.linear(self.embedding(words), self.cell.weight_ih, self.cell.bias_ih)  # (M, 3H)
        gh = nn.functional.linear(context, self.cell.weight_hh, self.cell.bias_hh)  # (N, 3H)
        i_r, i_z, i_n = gi.unsqueeze(0).chunk(3, dim=-1)  # (1, M, H) each
        h_r, h_z, h_n = gh.unsqueeze(1).chunk(3, dim=-1)  # (N, 1, H) each
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        new = (1 - z) * torch.tanh(i_n + r * h_n) + z * context.unsqueeze(1)  # (N, M, H)
        return self.scorer(new).squeeze(-1)  # (N, M)

    def target_score(self, context: Tensor, target: Tensor) -> Tensor:
        """s(w_n | h_n) for paired rows: context (N, H), target (N,) → (N,)."""
        return self.scorer(self.cell(self.embedding(target), context)).squeeze(-1)

    def loss(
        self,
        input: Tensor,
        target: Tensor,
        state: State = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, State]:
        """NCE loss averaged over (unmasked) tokens, k noise words drawn from `generator` for the batch."""
        context, state = self(input, state)
        flat, tgt = context.reshape(-1, context.size(-1)), target.reshape(-1)  # (N, H), (N,)
        noise = self.noise.sample((self.noise_ratio,), generator=generator)  # (k,) shared by the batch
        logit_target = nce_logit(self.target_score(flat, tgt) - self.norm, self.noise.log_prob(tgt), self.noise_ratio)
        logit_noise = nce_logit(self.score(flat, noise) - self.norm, self.noise.log_prob(noise), self.noise_ratio)
        per_token = nce_token_loss(logit_target, logit_noise).view_as(target)  # (B, T)
        return _masked_mean(per_token, mask), state

    def sparse_parameters(self) -> list[nn.Parameter]:
        """None: the generic model's embedding is scored densely through the cell."""
        return []

    def log_normaliser(self, context: Tensor) -> Tensor:
        """log Σ_w exp s(w | h), (N, H) → (N,), chunked over the vocabulary."""
        words = torch.arange(self.vocab_size, device=context.device)
        parts = [self.score(context, chunk).logsumexp(-1) for chunk in words.split(self.chunk_size)]
        return torch.stack(parts, dim=-1).logsumexp(-1)

    @torch.no_grad()
    def scores(self, input: Tensor, target: Tensor, state: State = None):
        context, state = self(input, state)
        flat = context.reshape(-1, context.size(-1))
        log_z = self.log_normaliser(flat)
        nll = (log_z - self.target_score(flat, target.reshape(-1))).view_as(target)
        return nll, (log_z - self.norm).view_as(target), state


__all__ = ["CELLS", "BatchDropout", "FeatureLM", "GenericNCELM", "LockedDropout", "RNNLM", "detach_state"]
