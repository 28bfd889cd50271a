"""Noise distributions over a vocabulary of V token indices, for sampled output layers.

Every sampler is an ``nn.Module`` whose tables are buffers (so ``.to(device)`` and ``state_dict`` carry them)
with one interface:

    sample(shape, generator=None) -> LongTensor of `shape`, values in [0, V), on the sampler's device
    log_prob(index)               -> log q(index), same shape as `index`
    log_probs()                   -> (V,) log q of every token

Randomness and precision (the project's device convention): every draw takes its random numbers on the CPU,
from ``generator`` (a CPU ``torch.Generator``) or from torch's global CPU generator when None, and only the
resulting indices (and the alias method's coins, float32) move to the sampler's device. So a seed gives the
same draws on every device, and checkpoints hold CPU generator states only. float64 is used on the CPU only
(building tables, checking probabilities); tables live on the device as float32 / int64, and the log-uniform
log q is computed there in float32, so nothing here needs float64 on the device (Apple MPS has none).

Samplers:
    AliasSampler        any categorical distribution; O(V) vectorised build, O(1) per draw (Walker's alias
                        method; Vose 1991). ``AliasSampler.from_counts`` gives the unigram, optionally
                        raised to a power α (word2vec uses 0.75; Mikolov et al. 2013).
    LogUniformSampler   Zipf-like noise over frequency ranks, P(k) = (log(k+2) − log(k+1)) / log(V+1),
                        the distribution of TensorFlow's log_uniform_candidate_sampler; drawn exactly by
                        inverting its CDF, no table.
    UniformSampler      q = 1/V.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

Shape = int | tuple[int, ...] | torch.Size


def _as_shape(shape: Shape) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


class NoiseSampler(nn.Module, ABC):
    """Base class: a distribution q over token indices 0..V−1."""

    vocab_size: int

    @abstractmethod
    def sample(self, shape: Shape, generator: torch.Generator | None = None) -> Tensor:
        """Independent draws of `shape` (LongTensor on the sampler's device), random numbers from the CPU
        `generator` (torch's global CPU generator when None)."""

    def log_prob(self, index: Tensor, check: bool = True) -> Tensor:
        """log q(index), same shape as `index`; `check=False` skips the range check (a device sync)."""
        if check:
            self._check_index(index)
        return self._log_prob(index)

    @abstractmethod
    def _log_prob(self, index: Tensor) -> Tensor:
        """log q(index) without checks."""

    @abstractmethod
    def log_probs(self) -> Tensor:
        """(V,) log q of every token."""

    def _check_index(self, index: Tensor) -> None:
        if index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"index must be an integer tensor, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.vocab_size):
            raise IndexError(f"index out of range [0, {self.vocab_size}): min {int(index.min())}, "
                             f"max {int(index.max())}")

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}"


def _cpu_float64(x: Tensor) -> Tensor:
    """A float64 copy of `x` on the CPU (moved first, so no float64 tensor is ever made on its device)."""
    return x.detach().cpu().double()


def _check_probs(probs: Tensor, name: str) -> None:
    if not isinstance(probs, Tensor) or probs.dim() != 1 or probs.numel() == 0:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"{name} must be a non-empty 1-D tensor of length V, got {shape}")
    if not torch.is_floating_point(probs) and probs.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be a real tensor, got {probs.dtype}")
    p = _cpu_float64(probs)
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (p < 0).any():
        raise ValueError(f"{name} contains negative values (min {p.min().item():g})")
    if not p.sum() > 0:
        raise ValueError(f"{name} sums to zero: no token can be drawn")


def unigram_probs(counts: Tensor, power: float = 1.0, zero_count: float = 0.5) -> Tensor:
    """Unigram noise from token counts: q(w) ∝ c'(w)^α, in float64 on the CPU.

    Zero counts are floored to ``zero_count`` × the smallest positive count (half a count for integer counts),
    so that every token, including one never seen in training, has log q > −∞.

    Args:
        counts: (V,) non-negative counts, any scale.
        power: α ≥ 0; 1 is the unigram, 0.75 word2vec's flattened unigram, 0 the uniform.
        zero_count: the floor for zero counts, relative to the smallest positive count, in (0, 1].

    Returns:
        (V,) probabilities summing to 1 (float64, CPU).
    """
    _check_probs(counts, "counts")
    if not power >= 0:
        raise ValueError(f"power must be non-negative, got {power}")
    if not 0 < zero_count <= 1:
        raise ValueError(f"zero_count must be in (0, 1], got {zero_count}")
    c = _cpu_float64(counts)
    floor = zero_count * c[c > 0].min()
    weights = torch.where(c > 0, c, floor).pow(power)
    return weights / weights.sum()


def build_alias_table(probs: Tensor) -> tuple[Tensor, Tensor]:
    """The alias table of a categorical distribution, built in O(V) tensor operations (no Python loop).

    Scaled weights w_i = V·p_i split the tokens into light (w < 1) and heavy (w ≥ 1) ones. Bucket i keeps
    token i with probability accept_i and otherwise yields alias_i. The table is the one the sequential sweep
    of Hübschle-Schneider & Sanders (2019, "Parallel weighted random sampling") produces: heavy tokens are
    consumed in order, and a heavy token that drops below 1 has its own bucket topped up by the next one.
    With cumulative light deficits D_i = Σ_{i'≤i} (1 − w_{l_i'}) and cumulative heavy excesses
    E_j = Σ_{j'≤j} (w_{h_j'} − 1), that sweep has a closed form:

        light l_i: accept = w_{l_i},            alias = h_j for the first j with E_j > D_{i−1}
        heavy h_j: accept = 1 − (D_{n_j} − E_j), alias = h_{j+1},   n_j = #{i : D_{i−1} < E_j}

    (the last heavy token keeps its bucket), computed with one cumulative sum and one sorted search each.

    Args:
        probs: (V,) non-negative weights, any scale (checked by the caller), on any device.

    Returns:
        accept: (V,) float32 in [0, 1]; alias: (V,) int64; both on the CPU, where the table is built in float64.
    """
    p = _cpu_float64(probs)
    vocab_size = p.numel()
    w = p * (vocab_size / p.sum())  # (V,) mean 1
    light = w < 1
    if light.all():  # rounding left no token at or above the mean: the largest one is heavy
        light[w.argmax()] = False
    light_idx = light.nonzero().squeeze(1)  # (L,)
    heavy_idx = (~light).nonzero().squeeze(1)  # (Hv,)
    deficit_end = torch.cumsum(1 - w[light_idx], 0)  # (L,) D_i
    deficit_start = torch.cat([deficit_end.new_zeros(1), deficit_end[:-1]])  # (L,) D_{i-1}
    excess_end = torch.cumsum(w[heavy_idx] - 1, 0)  # (Hv,) E_j

    # Merge ranks of the two sorted sequences; one sorted search (of the shorter one) and one histogram
    # give both, since  E_j ≤ D_{i-1}  ⇔  n_j ≤ i  (0-based i).
    if heavy_idx.numel() <= light_idx.numel():
        served = torch.searchsorted(deficit_start, excess_end)  # (Hv,) n_j
        donor = torch.bincount(served, minlength=light_idx.numel() + 1).cumsum(0)[:-1]  # (L,)
    else:
        donor = torch.searchsorted(excess_end, deficit_start, right=True)  # (L,)
        served = torch.bincount(donor, minlength=heavy_idx.numel() + 1).cumsum(0)[:-1]  # (Hv,)

    accept = w.clamp(max=1)  # (V,) light tokens' final value; heavy ones set below
    alias = torch.arange(vocab_size, device=p.device)
    alias[light_idx] = heavy_idx[donor.clamp_max(heavy_idx.numel() - 1)]
    covered = torch.cat([deficit_end.new_zeros(1), deficit_end])[served]  # (Hv,) D_{n_j}
    accept[heavy_idx[:-1]] = (1 - (covered - excess_end))[:-1]
    alias[heavy_idx[:-1]] = heavy_idx[1:]
    return accept.clamp_(0, 1).float(), alias


class AliasSampler(NoiseSampler):
    """Draws from any categorical distribution in O(1) per draw with Walker's alias method.

    A draw picks a bucket b uniformly and keeps it with probability accept_b, else returns alias_b:
    q(w) = (accept_w + Σ_{b: alias_b = w} (1 − accept_b)) / V. The table is built by ``build_alias_table``
    in O(V) vectorised operations (≈ 0.05–0.1 s at V = 10⁶ on one CPU core; a Python loop takes seconds).

    Args:
        probs: (V,) non-negative weights, any scale. Tokens with weight 0 are never drawn (log q = −∞);
            use ``from_counts`` for a floored unigram.

    Buffers (on the device of ``probs``, built on the CPU):
        accept (V,) float32, alias (V,) int64, log_q (V,) float32 = log of the normalised ``probs``.
    """

    def __init__(self, probs: Tensor) -> None:
        super().__init__()
        _check_probs(probs, "probs")
        self.vocab_size = probs.numel()
        accept, alias = build_alias_table(probs)
        p = _cpu_float64(probs)
        self.register_buffer("accept", accept.to(probs.device))
        self.register_buffer("alias", alias.to(probs.device))
        self.register_buffer("log_q", (p / p.sum()).log().float().to(probs.device))

    @classmethod
    def from_counts(cls, counts: Tensor, power: float = 1.0, zero_count: float = 0.5) -> AliasSampler:
        """Unigram noise q(w) ∝ count(w)^α with zero counts floored (see ``unigram_probs``)."""
        return cls(unigram_probs(counts, power, zero_count))

    def sample(self, shape: Shape, generator: torch.Generator | None = None) -> Tensor:
        """Draws of `shape` (LongTensor on the buffers' device); buckets and coins drawn on the CPU."""
        size = torch.Size(_as_shape(shape)).numel()
        device = self.accept.device
        bucket = torch.randint(self.vocab_size, (size,), generator=generator).to(device)  # (n,)
        coin = torch.rand(size, generator=generator).to(device)  # (n,) float32
        keep = coin < self.accept.index_select(0, bucket)
        return torch.where(keep, bucket, self.alias.index_select(0, bucket)).view(shape)

    def _log_prob(self, index: Tensor) -> Tensor:
        return self.log_q[index]

    def log_probs(self) -> Tensor:
        return self.log_q


class LogUniformSampler(NoiseSampler):
    """Log-uniform (Zipfian) noise over frequency ranks: P(k) = (log(k+2) − log(k+1)) / log(V+1).

    Assumes token indices are sorted by decreasing frequency (index 0 the most frequent). Draws are exact:
    k = ⌊exp(u · log(V+1))⌋ − 1 with u ~ U[0, 1) (the inverse CDF, in float64 on the CPU), as in TensorFlow's
    log_uniform_candidate_sampler. log q is computed in float32 on the indices' device.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self._log_range = math.log(vocab_size + 1)
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    def sample(self, shape: Shape, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(_as_shape(shape), generator=generator, dtype=torch.float64)  # on the CPU
        rank = (torch.exp(u * self._log_range).floor().long() - 1).clamp_(0, self.vocab_size - 1)
        return rank.to(self._device_probe.device)

    def _log_prob(self, index: Tensor) -> Tensor:
        k = index.float()
        return torch.log1p(1.0 / (k + 1)).log() - math.log(self._log_range)

    def log_probs(self) -> Tensor:
        return self._log_prob(torch.arange(self.vocab_size, device=self._device_probe.device))


class UniformSampler(NoiseSampler):
    """Uniform noise q(w) = 1/V."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.register_buffer("_device_probe", torch.empty(0), persistent=False)

    def sample(self, shape: Shape, generator: torch.Generator | None = None) -> Tensor:
        draws = torch.randint(self.vocab_size, _as_shape(shape), generator=generator)  # on the CPU
        return draws.to(self._device_probe.device)

    def _log_prob(self, index: Tensor) -> Tensor:
        return torch.full(index.shape, -math.log(self.vocab_size), dtype=torch.float32, device=index.device)

    def log_probs(self) -> Tensor:
        return torch.full((self.vocab_size,), -math.log(self.vocab_size), dtype=torch.float32,
                          device=self._device_probe.device)


NOISE_NAMES = ("unigram", "log_uniform", "uniform")


def make_noise(
    noise: str | Tensor | NoiseSampler, vocab_size: int, power: float = 1.0, counts: Tensor | None = None
) -> NoiseSampler:
    """A noise sampler from a name, a counts tensor, or an existing sampler.

    Args:
        noise: a ``NoiseSampler`` (returned as is), a (V,) tensor of counts (unigram^power), or one of
            "unigram" (needs `counts`), "log_uniform", "uniform".
        vocab_size: V, checked against the sampler.
        power: α for unigram noise.
        counts: (V,) counts for noise="unigram".
    """
    if isinstance(noise, Tensor):
        counts, noise = noise, "unigram"
    if isinstance(noise, NoiseSampler):
        sampler = noise
    elif noise == "unigram":
        if counts is None:
            raise ValueError("noise='unigram' needs counts")
        sampler = AliasSampler.from_counts(counts, power)
    elif noise == "log_uniform":
        sampler = LogUniformSampler(vocab_size)
    elif noise == "uniform":
        sampler = UniformSampler(vocab_size)
    else:
        raise ValueError(f"unknown noise {noise!r}; choose a counts tensor, a NoiseSampler or one of {NOISE_NAMES}")
    if sampler.vocab_size != vocab_size:
        raise ValueError(f"noise covers {sampler.vocab_size} tokens but vocab_size is {vocab_size}")
    return sampler


__all__ = [
    "NOISE_NAMES",
    "AliasSampler",
    "LogUniformSampler",
    "NoiseSampler",
    "UniformSampler",
    "build_alias_table",
    "make_noise",
    "unigram_probs",
]
