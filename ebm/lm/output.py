"""The sampled output layer: scores only the targets and a few noise tokens in training, the whole
vocabulary (chunked) in evaluation.

For a context vector h (the network's hidden state) and token w with output embedding e_w and bias b_w:

    s(w) = h·e_w + b_w                  the score
    log p(w) = s(w) − log Z(h)          exact, Z(h) = Σ_{w'} exp s(w') over the vocabulary
    log p̃(w) = s(w) − norm              self-normalised: NCE trains log Z(h) ≈ norm (Mnih & Teh 2012)

Training touches only the rows it uses: the target and noise rows of the embedding and bias are gathered
with sparse gradients (Jean et al. 2015's point: cost independent of V), so an optimiser that supports
sparse gradients updates only those rows:

    layer = SampledOutput(in_features=H, vocab_size=V, noise=counts, loss="nce", noise_ratio=100)
    sparse_opt = torch.optim.SparseAdam(layer.sparse_parameters(), lr=1e-3)  # touched rows of weight, bias
    # layer.dense_parameters() is [norm] with norm="learn" (give it to torch.optim.Adam), else empty.
    # torch.optim.SGD(layer.parameters(), lr) also applies sparse gradients row-wise (no momentum/decay).

In a whole model, ``ebm.lm.optim.make_optimizer(model, "adam", lr, sparse=model.sparse_parameters())`` builds
both, and ``ebm.lm.optim.clip_grad_norm_`` clips sparse gradients (torch's own clip fails on them). The
"full" loss gives dense gradients, so ``sparse_parameters()`` is empty while it is selected.

The "full" loss never needs the [N × V] scores: when N·V exceeds ``loss_chunk_elements`` it is
``ebm.lm.losses.chunked_cross_entropy`` (exact, chunked over V in forward and backward), on CUDA Apple's
``cut_cross_entropy.linear_cross_entropy`` wherever that package is installed; ``full_loss_backend`` names the
one the last step used ("dense", "chunked" or "cut_cross_entropy").
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebm.lm.losses import SAMPLED_LOSSES, check_loss_name, chunked_cross_entropy, full_softmax_loss
from ebm.lm.samplers import NoiseSampler, make_noise

NOISE_SHARING = ("batch", "sequence", "token")

# Why each sampled loss is biased when accidental hits are removed (derived and measured in ebm.lm.losses).
_HIT_REMOVAL_BIAS = {
    "nce": "NCE then learns log p/(1 − p), not log p",
    "neg": "its optimum p/(k·q) becomes p/(k·q·(1 − p)), as NCE then learns log p/(1 − p), not log p",
    "mix": "its NCE half then learns log p/(1 − p), not log p, and its sampled-softmax half over-estimates "
           "frequent tokens",
    "sampled": "sampled softmax is then no longer ranking NCE and over-estimates frequent tokens for any k > 1",
}


def register_norm(module: nn.Module, norm: str | float, vocab_size: int) -> float:
    """Gives ``module`` its log-normaliser ``norm`` (the constant in log p̃ = s − norm) and returns its initial value.

    "auto" (log V) or a finite number: a float32 buffer; "learn": an ``nn.Parameter`` initialised at log V.
    """
    if norm == "learn":
        module.norm = nn.Parameter(torch.tensor(math.log(vocab_size), dtype=torch.float32))
    elif norm == "auto" or (isinstance(norm, int | float) and not isinstance(norm, bool) and math.isfinite(norm)):
        value = math.log(vocab_size) if norm == "auto" else float(norm)
        module.register_buffer("norm", torch.tensor(value, dtype=torch.float32))
    else:
        raise ValueError(f"norm must be 'auto', 'learn' or a finite number, got {norm!r}")
    return float(module.norm.detach())


@functools.cache
def cut_cross_entropy() -> Callable[..., Tensor] | None:
    """Apple's ``cut_cross_entropy.linear_cross_entropy`` (Wijmans et al. 2025) where the package is installed."""
    if importlib.util.find_spec("cut_cross_entropy") is None:
        return None
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy


class _GatherRows(torch.autograd.Function):
    """weight[index] whose gradient with respect to `weight` is a sparse COO tensor (only the used rows)."""

    @staticmethod
    def forward(ctx, weight: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.weight_shape = weight.shape
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        sparse = torch.sparse_coo_tensor(index.unsqueeze(0), grad, ctx.weight_shape, check_invariants=False)
        return sparse, None


def gather_rows(weight: Tensor, index: Tensor, sparse: bool = True) -> Tensor:
    """Rows weight[index] ((n,) index → (n, …)); with `sparse` the gradient of `weight` is sparse."""
    if sparse and torch.is_grad_enabled() and weight.requires_grad:
        return _GatherRows.apply(weight, index)
    return weight.index_select(0, index)


class SampledOutput(nn.Module):
    """Output embedding + bias over a vocabulary of V tokens, trained with a sampled (or the full) loss.

    Args:
        in_features: H, the size of the context vectors.
        vocab_size: V.
        noise: (V,) unigram counts (noise ∝ count^noise_power, zero counts floored), a ``NoiseSampler``, or
            "uniform" / "log_uniform".
        loss: one of "full", "nce", "sampled", "neg", "mix" (see ``ebm.lm.losses``); switchable later by
            assigning ``layer.loss``.
        noise_ratio: k, noise samples per token (drawn once per batch or per sequence, see `noise_sharing`).
        norm: the log-normaliser in log p̃ = s − norm: "auto" (log V), a float, or "learn" (a learned scalar
            initialised at log V).
        noise_power: α for counts.
        noise_sharing: who shares a draw of k noise tokens. "batch" (default): every token of the batch, scored
            with one (N, H) × (H, k) product. "sequence": each sequence (row b of a (B, T, H) input; each token
            of a flat (N, H) input) draws its own k, scored with a batched (B, T, H) × (B, H, k) product: the
            same arithmetic as "batch" and B·k rows instead of k, so the noise gradient of every output row
            averages over B times more draws. "token": k draws per token (N·k rows gathered: slow). All three
            give the same expected loss and gradient; they differ in variance and cost.
        remove_accidental_hits: drop noise samples equal to the target (TensorFlow's option). Off by default:
            removal biases every sampled loss (NCE then learns log p/(1 − p), not log p; sampled softmax
            over-estimates frequent tokens; see ``ebm.lm.losses``), so a UserWarning says so whenever it is
            on with a sampled loss, at construction and each time ``loss`` is set.
        sparse: sparse gradients for `weight` and `bias` in the sampled losses (the "full" loss is always dense).
        selfnorm_weight: α of the self-normalisation penalty added to a sampled loss (0: none; Devlin et al. 2014
            penalise (log Z)² over all contexts, Andreas & Klein 2015 show a sample of contexts suffices): the
            exact log Z(h) of `selfnorm_positions` tokens drawn at random, and each drawn token's loss gains
            α · (N/m) · (log Z(h) − norm)², so the mean loss gains α · mean (log Z − norm)² in expectation.
            The output rows enter it detached: its gradient reaches the network (through h) and a learned norm,
            the rows' gradients stay sparse. Cost O(m · V · H) per step.
        selfnorm_positions: m, the tokens per batch whose exact log Z the penalty uses (all when N ≤ m).
        eval_chunk_elements: evaluation computes at most this many scores at once (tokens × vocabulary chunk).
        loss_chunk_elements: the "full" loss builds the dense [N × V] scores when N·V is at most this (2^25
            float32 scores = 128 MiB), and beyond it the exact chunked loss with chunks of this many scores (its
            backward recomputes each chunk: one more N·V·H product). On CUDA with ``cut_cross_entropy``
            installed, that package's exact kernel instead. ``full_loss_backend`` names the last one used.

    Parameters: weight (V, H), bias (V,) initialised to log q + norm (the model starts at the noise
    distribution), and norm when learned. Buffers: norm when constant, and the sampler's tables.

    Shapes: hidden (..., H) with target (...) — e.g. [B, T, H] with [B, T], or [N, H] with [N].
    """

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        noise: Tensor | NoiseSampler | str = "uniform",
        loss: str = "nce",
        noise_ratio: int = 100,
        norm: str | float = "auto",
        noise_power: float = 1.0,
        noise_sharing: str = "batch",
        remove_accidental_hits: bool = False,
        sparse: bool = True,
        eval_chunk_elements: int = 2**22,
        selfnorm_weight: float = 0.0,
        selfnorm_positions: int = 16,
        loss_chunk_elements: int = 2**25,
    ) -> None:
        super().__init__()
        if in_features < 1 or vocab_size < 1:
            raise ValueError(f"in_features and vocab_size must be positive, got {in_features}, {vocab_size}")
        if int(noise_ratio) != noise_ratio or noise_ratio < 1:
            raise ValueError(f"noise_ratio (k) must be a positive integer, got {noise_ratio}")
        if eval_chunk_elements < 1 or loss_chunk_elements < 1:
            raise ValueError(f"eval_chunk_elements and loss_chunk_elements must be positive, got "
                             f"{eval_chunk_elements} and {loss_chunk_elements}")
        if not (math.isfinite(selfnorm_weight) and selfnorm_weight >= 0) or selfnorm_positions < 1:
            raise ValueError(f"selfnorm_weight must be finite and ≥ 0 and selfnorm_positions positive, got "
                             f"{selfnorm_weight} and {selfnorm_positions}")
        self.in_features = in_features
        self.vocab_size = vocab_size
        self.noise_ratio = int(noise_ratio)
        if noise_sharing not in NOISE_SHARING:
            raise ValueError(f"unknown noise_sharing {noise_sharing!r}; choose one of {', '.join(NOISE_SHARING)}")
        self.noise_sharing = noise_sharing
        self.noise_shard: tuple[int, int, int | None] = (0, 1, None)  # set by data-parallel training: _draw_noise
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.sparse = sparse
        self.eval_chunk_elements = eval_chunk_elements
        self.loss_chunk_elements = loss_chunk_elements
        self.full_loss_backend: str | None = None  # "dense", "chunked" or "cut_cross_entropy": the last full step's
        self.selfnorm_weight = float(selfnorm_weight)
        self.selfnorm_positions = int(selfnorm_positions)
        self._loss = check_loss_name(loss)
        self._warn_if_hit_removal_biases(stacklevel=3)  # the caller's line
        self.noise = make_noise(noise, vocab_size, noise_power)
        log_q = self.noise.log_probs().detach().float().cpu()
        if not torch.isfinite(log_q).all():
            raise ValueError("the noise gives probability 0 to some tokens; build it with AliasSampler.from_counts "
                             "(which floors zero counts) or pass the counts")

        init_norm = register_norm(self, norm, vocab_size)
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(vocab_size, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(log_q + init_norm)

    # --- configuration -------------------------------------------------------------------------------
    @property
    def loss(self) -> str:
        """The training loss name; assign another of LOSS_NAMES to switch (e.g. evaluate with "full")."""
        return self._loss

    @loss.setter
    def loss(self, name: str) -> None:
        self._loss = check_loss_name(name)
        self._warn_if_hit_removal_biases(stacklevel=4)  # past nn.Module.__setattr__, the assigning line

    def _warn_if_hit_removal_biases(self, stacklevel: int) -> None:
        if self.remove_accidental_hits and self._loss != "full":
            warnings.warn(f"remove_accidental_hits biases the {self._loss!r} loss: {_HIT_REMOVAL_BIAS[self._loss]} "
                          f"(see ebm.lm.losses)", stacklevel=stacklevel)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters whose gradients are sparse under the current loss: [weight, bias] for a sampled loss
        with ``sparse=True``, else [] (the "full" loss touches every row: dense gradients)."""
        return [self.weight, self.bias] if self.sparse and self._loss != "full" else []

    def dense_parameters(self) -> list[nn.Parameter]:
        """The other parameters (the learned norm, if any)."""
        sparse_ids = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse_ids]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, vocab_size={self.vocab_size}, loss={self._loss!r}, "
                f"noise_ratio={self.noise_ratio}, noise_sharing={self.noise_sharing!r}, sparse={self.sparse}"
                + (f", selfnorm_weight={self.selfnorm_weight}" if self.selfnorm_weight else ""))

    # --- checks --------------------------------------------------------------------------------------
    def _flatten(self, hidden: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if hidden.dim() < 1 or hidden.shape[-1] != self.in_features:
            raise ValueError(f"hidden must end in in_features={self.in_features}, got shape {tuple(hidden.shape)}")
        h = hidden.reshape(-1, self.in_features)  # (N, H)
        if target is None:
            return h, None
        if target.shape != hidden.shape[:-1]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match hidden {tuple(hidden.shape)}")
        if target.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"target must be an integer tensor, got {target.dtype}")
        t = target.reshape(-1).long()  # (N,)
        # Checked on the CPU only: on an accelerator the check would synchronise the device every step.
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
            raise IndexError(f"target index out of range [0, {self.vocab_size}): "
                             f"min {int(t.min())}, max {int(t.max())}")
        return h, t

    # --- training ------------------------------------------------------------------------------------
    def forward(
        self, hidden: Tensor, target: Tensor, reduction: str = "mean", generator: torch.Generator | None = None
    ) -> Tensor:
        """The current loss of `target` given `hidden`.

        Args:
            hidden: (..., H) context vectors.  target: (...) token indices.
            reduction: "mean" (scalar over tokens), "sum", or "none" (per token, target's shape).
            generator: the CPU ``torch.Generator`` the noise is drawn from (torch's global one when None).
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        h, t = self._flatten(hidden, target)
        if self._loss == "full":
            losses = self._full_loss(h, t)  # (N,)
        else:
            groups = {"batch": 1, "sequence": hidden.shape[0] if hidden.dim() > 2 else t.numel(),
                      "token": t.numel()}[self.noise_sharing]
            rows = hidden.shape[0] if hidden.dim() > 2 else t.numel()
            losses = self._sampled_loss(h, t, groups, rows, generator)
            if self.selfnorm_weight > 0:
                losses = losses + self._selfnorm_penalty(h, rows, generator)
        if reduction == "none":
            return losses.reshape(target.shape)
        return losses.sum() if reduction == "sum" else losses.mean()

    def _full_loss(self, h: Tensor, t: Tensor) -> Tensor:
        """Exact −log softmax(h Wᵀ + b)[t] (N,), by the backend that fits (see ``loss_chunk_elements``)."""
        chunk = max(1, self.loss_chunk_elements // max(1, h.shape[0]))
        if h.device.type == "cuda" and cut_cross_entropy() is not None:
            self.full_loss_backend = "cut_cross_entropy"
            return cut_cross_entropy()(h, self.weight, t, bias=self.bias, reduction="none").float()
        if chunk >= self.vocab_size:
            self.full_loss_backend = "dense"
            return full_softmax_loss(F.linear(h, self.weight, self.bias), t)  # (N, V) scores
        self.full_loss_backend = "chunked"
        return chunked_cross_entropy(h, self.weight, self.bias, t, chunk)

    def _draw_noise(self, groups: int, rows: int, generator: torch.Generator | None) -> Tensor:
        """k noise tokens for each of ``groups`` groups (of ``rows`` sequences here): (G, k).

        In data-parallel training every rank draws from an identically seeded generator and holds shard i of W
        equal shards of a global batch of R real sequences (``noise_shard = (i, W, R)``; R None: W·rows). It
        draws the noise of the whole global batch, as one process would, and keeps its own groups; rows that
        only pad the batch to a multiple of W (masked, never scored) reuse draws. With "batch" sharing every rank
        keeps the one shared draw (a shard of one sequence still draws the global batch's).
        """
        index, shards, global_rows = self.noise_shard
        if self.noise_sharing == "batch" or shards == 1:
            return self.noise.sample((groups, self.noise_ratio), generator=generator)
        per_row = groups // rows
        total = (global_rows if global_rows is not None else rows * shards) * per_row
        every = self.noise.sample((total, self.noise_ratio), generator=generator)  # (R·per_row, k)
        needed = groups * shards
        if total < needed:  # padding rows: any draw will do
            every = every.repeat(-(-needed // total), 1)[:needed]
        return every[index * groups : (index + 1) * groups]

    def _sampled_loss(self, h: Tensor, t: Tensor, groups: int, rows: int, generator: torch.Generator | None) -> Tensor:
        """Per-token losses (N,) with k noise tokens drawn for each of `groups` equal runs of consecutive tokens."""
        n, k = t.numel(), self.noise_ratio
        noise = self._draw_noise(groups, rows, generator)  # (G, k)
        score_target = (h * gather_rows(self.weight, t, self.sparse)).sum(-1) + gather_rows(self.bias, t, self.sparse)
        emb_noise = gather_rows(self.weight, noise.reshape(-1), self.sparse)  # (G·k, H)
        bias_noise = gather_rows(self.bias, noise.reshape(-1), self.sparse)  # (G·k,)
        if groups == 1:
            score_noise = torch.addmm(bias_noise, h, emb_noise.t())  # (N, k): one dense product for the batch
            noise, log_q_noise = noise.squeeze(0), self.noise.log_prob(noise.squeeze(0), check=False)  # (k,)
            hits_noise = noise.unsqueeze(0)  # (1, k)
        else:
            per_group = n // groups
            h_groups = h.reshape(groups, per_group, self.in_features)  # (G, N/G, H)
            emb_noise = emb_noise.reshape(groups, k, self.in_features)  # (G, k, H)
            score_noise = torch.baddbmm(bias_noise.reshape(groups, 1, k), h_groups, emb_noise.transpose(1, 2))
            score_noise = score_noise.reshape(n, k)  # (N, k)
            log_q_noise = self.noise.log_prob(noise, check=False).repeat_interleave(per_group, dim=0)  # (N, k)
            hits_noise = noise.repeat_interleave(per_group, dim=0) if self.remove_accidental_hits else None
        hits = hits_noise == t.unsqueeze(1) if self.remove_accidental_hits else None  # (N, k)
        norm = self.norm.float()
        return SAMPLED_LOSSES[self._loss](
            score_target.float() - norm,
            score_noise.float() - norm,
            self.noise.log_prob(t, check=False),
            log_q_noise,
            hits,
        )

    def _selfnorm_penalty(self, h: Tensor, rows: int, generator: torch.Generator | None) -> Tensor:
        """(N,) α · (N/m) · (log Z(h_n) − norm)² at m random tokens n (all when N ≤ m), 0 elsewhere; rows detached.

        N counts the tokens of the whole global batch (``noise_shard``: shard i of W of R real rows of N/rows
        tokens each): the m tokens are drawn among them, as one process would, and this shard keeps its own.
        """
        n, (index, shards, global_rows) = h.shape[0], self.noise_shard
        n_global = (global_rows if global_rows is not None else rows * shards) * (n // rows)
        m = min(self.selfnorm_positions, n_global)
        chosen = torch.arange(n_global) if m == n_global else torch.randperm(n_global, generator=generator)[:m]
        chosen = chosen[(chosen >= index * n) & (chosen < (index + 1) * n)] - index * n  # this shard's tokens
        chosen = chosen.to(h.device)
        log_z = self._log_z(h[chosen], self.weight.detach(), self.bias.detach())  # (m,)
        gap_sq = (log_z - self.norm.float()).pow(2)
        return h.new_zeros(n, dtype=gap_sq.dtype).index_add(0, chosen, self.selfnorm_weight * (n_global / m) * gap_sq)

    # --- evaluation ----------------------------------------------------------------------------------
    def score(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Unnormalised scores s(target) = h·e_target + b_target: (..., H), (...) → (...)."""
        h, t = self._flatten(hidden, target)
        score = (h * self.weight[t]).sum(-1) + self.bias[t]  # (N,)
        return score.float().reshape(target.shape)

    def self_normalized_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """log p̃(target) = s(target) − norm, no sum over the vocabulary: (...)."""
        return self.score(hidden, target) - self.norm.float()

    def log_normaliser(self, hidden: Tensor) -> Tensor:
        """log Z(h) = logsumexp_w s(w) over the whole vocabulary: (..., H) → (...).

        Computed over chunks of the vocabulary with a running logaddexp, so at most
        ``eval_chunk_elements`` scores exist at a time (never a [tokens × V] tensor).
        """
        h, _ = self._flatten(hidden)
        return self._log_z(h, self.weight, self.bias).reshape(hidden.shape[:-1])

    def _log_z(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """logsumexp_w (h·weight_w + bias_w), (N, H) → (N,) float32, over chunks of at most eval_chunk_elements."""
        chunk = max(1, self.eval_chunk_elements // max(1, h.shape[0]))
        log_z = h.new_full((h.shape[0],), -math.inf, dtype=torch.float32)  # (N,)
        for start in range(0, self.vocab_size, chunk):
            scores = F.linear(h, weight[start : start + chunk], bias[start : start + chunk])  # (N, C)
            log_z = torch.logaddexp(log_z, torch.logsumexp(scores.float(), dim=-1))
        return log_z

    def nll_and_gap(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, Tensor | None]:
        """Exact −log p(target) (...) and, for a sampled loss, the gap log Z(h) − norm (...) (None for "full")."""
        log_z = self.log_normaliser(hidden)
        gap = log_z - self.norm.float() if self._loss != "full" else None
        return log_z - self.score(hidden, target), gap

    def nll(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Exact per-token negative log-likelihood −log p(target) = log Z(h) − s(target): (...)."""
        return self.log_normaliser(hidden) - self.score(hidden, target)


__all__ = ["NOISE_SHARING", "SampledOutput", "cut_cross_entropy", "gather_rows", "register_norm"]
