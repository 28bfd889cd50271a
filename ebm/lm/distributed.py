"""Data-parallel training of the language models across processes (torchrun): the same run at any world size.

Launch: ``torchrun --nproc-per-node N train.py --dataset ...`` (one node), or on every node
``torchrun --nnodes M --node-rank i --master-addr HOST --master-port PORT --nproc-per-node N train.py ...``.
``ebm.harness.context.DistributedContext.from_env`` reads torchrun's variables (or gives one process), and
the loop has one code path:

    context = DistributedContext.from_env(config.device)            # gloo on CPU, NCCL on CUDA, or one process
    check_global_batch(config.batch_size, context.world_size, micro_batches)   # before any work
    parallel = DistributedLM(model.to(context.device), context)       # rank 0's parameters on every rank
    noise = torch.Generator().manual_seed(config.seed)                # the SAME seed on every rank
    for step, (input, target, mask) in enumerate(batches):            # every rank reads the same global batch
        optimizer.zero_grad(set_to_none=True)
        loss, state = parallel.forward_backward(input, target, state, mask, noise=noise,
                                                dropout_seed=step_seed(config.seed, step), micro_batches=M)
        ... weight decay, clipping, optimizer.step() exactly as in one process
    assert_identical(model, context, [noise])

**The global batch.** ``--batch-size`` B is the global batch: every rank builds the same batches and keeps rows
``[r·B/W, (r+1)·B/W)`` (``shard_rows``), cut into M micro-batches when accumulating; B must be divisible by W·M
(sentence batches are padded with masked rows instead). Shard s of S = W·M is micro-batch j of rank r, s = r·M + j.

**The same random numbers as one process.** Everything random is drawn for the whole global batch from a
generator seeded alike on every rank, and each shard keeps its rows:
- noise words (``SampledOutput.noise_shard``): the draws of all R real rows; the noise generator is rewound
  before each micro-batch, so it advances exactly as one process's;
- dropout masks (``RNNLM.shard_dropout``): a generator on the training device reseeded with
  ``step_seed(seed, step)`` before each micro-batch, masks of shape (R, …) of which the shard keeps its rows
  (between the recurrent layers too: ``RNNLM`` runs them one by one in training to own that mask);
- the self-normalisation penalty's token sample: a permutation of the global batch's R·T tokens.
Every token then meets the noise and masks it meets in one process; with per-token weights n_s·W/N (n_s the
shard's tokens, N the global batch's) the mean over ranks of Σ_j weight·loss is the global token mean:
(1/W) Σ_s (n_s W / N)(1/n_s) Σ_{t ∈ s} ℓ_t = (1/N) Σ_t ℓ_t.

**One collective per step.** After the last micro-batch's backward, ``sync_gradients`` packs every gradient
into one byte buffer: a header of codes (−2 no gradient, −1 dense, n ≥ 0 sparse rows), the dense gradients
(recurrent layers, projections, a learned norm, a tied matrix under the full softmax) and the coalesced sparse
rows (rows int64 (n,), values (n, …)) of the input and output embeddings. One all-gather of a fixed size C
carries the buffers; every rank then reduces them alike:

    g = (1/W) Σ_r g_r (dense),     g_v = (1/W) Σ_r Σ_{i: rows_r[i] = v} values_r[i] (sparse, touched rows only),

DDP's mean, holding only the union of touched rows. C is the largest buffer seen so far plus 1/8: a step whose
buffer outgrows it (every rank sees every header) gathers once more at the new size. A parameter that no rank
gave a gradient (a learned norm under the full softmax) keeps ``grad = None`` on every rank, as in one process.
A ring all-gather sends C·(W − 1) bytes per rank; a dense all-reduce of the same gradients 2(W − 1)/W·V·H·4:
at W = 2 the dense part costs the same and the rows a few thousand instead of V (bench/bench_sparse_sync.py).

**Decisions must be collective.** Anything that ends or branches the loop uses ``context.any``/``context.mean``,
and values decided from one rank's evaluation (a plateau lr cut, a calibrated norm) come from
``context.broadcast_object``. Only rank 0 (``context.is_main``) writes files.

**When a rank fails.** torchrun stops the other ranks on its node; ranks elsewhere raise from their next
collective (at once on gloo, else after the context's timeout) with a message naming the rank
(``DistributedContext.run``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ebm.harness.context import DistributedContext

_ALIGN = 8  # bytes: every packed tensor starts on a multiple of int64's size
_NONE, _DENSE = -2, -1  # header codes (n ≥ 0: sparse with n rows)
State = Tensor | tuple[Tensor, ...] | None


def check_global_batch(batch_size: int, world_size: int, micro_batches: int = 1) -> None:
    """ValueError unless the global batch of ``batch_size`` rows splits evenly over ``world_size`` ranks and each
    rank's rows into ``micro_batches`` micro-batches."""
    if world_size < 1 or micro_batches < 1:
        raise ValueError(f"world_size and micro_batches must be positive, got {world_size} and {micro_batches}")
    shards = world_size * micro_batches
    if batch_size < 1 or batch_size % shards:
        raise ValueError(f"the global batch size {batch_size} must be a positive multiple of the world size "
                         f"{world_size}" + (f" times the micro-batches {micro_batches}" if micro_batches > 1 else "")
                         + f" (each rank reads batch_size / world_size rows); choose e.g. "
                         f"{max(shards, batch_size // shards * shards)}")


def shard_rows(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's rows of a global batch: (B, …) → (B/W, …), rows [rank·B/W, (rank+1)·B/W)."""
    check_global_batch(batch.shape[0], world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    rows = batch.shape[0] // world_size
    return batch[rank * rows : (rank + 1) * rows]


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s dropout masks: a function of the run's position only, the same on every rank,
    so a resumed run and a run on any number of processes draw the masks of the uninterrupted one-process run."""
    return (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % 2**63


# --- gradients: one packed all-gather ----------------------------------------------------------------------------
def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _local_part(param: nn.Parameter) -> tuple[int, list[Tensor]]:
    """(header code, tensors to send) for this rank's gradient of ``param``."""
    grad = param.grad
    if grad is None:
        return _NONE, []
    if grad.dtype != param.dtype:
        raise ValueError(f"a gradient of dtype {grad.dtype} for a parameter of dtype {param.dtype}")
    if not grad.is_sparse:
        return _DENSE, [grad]
    if grad.sparse_dim() != 1:
        raise ValueError(f"sparse gradients must index rows (sparse_dim 1), got sparse_dim {grad.sparse_dim()}")
    grad = grad.coalesce()
    return grad.indices().shape[1], [grad.indices()[0], grad.values()]


def _pack(parts: list[tuple[int, list[Tensor]]], capacity: int, device: torch.device) -> Tensor:
    """This rank's buffer (capacity,) uint8: header int64 (P + 1,) = codes and total bytes, then each tensor's
    bytes from a multiple of 8, on ``device`` (the gradients'); the payload is left out when the total exceeds
    ``capacity`` (the header always fits)."""
    header = torch.tensor([code for code, _ in parts] + [0], dtype=torch.int64)
    total = header.numel() * 8 + sum(_padded(t.numel() * t.element_size()) for _, ts in parts for t in ts)
    header[-1] = total
    buffer = torch.zeros(max(capacity, header.numel() * 8), dtype=torch.uint8, device=device)
    buffer[: header.numel() * 8].copy_(header.view(torch.uint8))
    if total <= buffer.numel():
        offset = header.numel() * 8
        for _, tensors in parts:
            for t in tensors:
                buffer[offset : offset + t.numel() * t.element_size()].view(t.dtype).copy_(t.reshape(-1))
                offset += _padded(t.numel() * t.element_size())
    return buffer


def _unpack(buffer: Tensor, params: list[nn.Parameter]) -> list[tuple[int, list[Tensor]]]:
    """One rank's buffer → (code, [dense] or [rows, values] or []) per parameter (views of ``buffer``)."""
    codes = buffer[: len(params) * 8].view(torch.int64).tolist()
    offset, parts = (len(params) + 1) * 8, []
    for param, code in zip(params, codes, strict=True):
        shapes = [] if code == _NONE else [(param.shape, param.dtype)] if code == _DENSE else [
            ((code,), torch.int64), ((code, *param.shape[1:]), param.dtype)]
        tensors = []
        for shape, dtype in shapes:
            numel = torch.Size(shape).numel()
            nbytes = numel * dtype.itemsize
            tensors.append(buffer[offset : offset + nbytes].view(dtype).view(shape))
            offset += _padded(nbytes)
        parts.append((code, tensors))
    return parts


def _mean_gradient(param: nn.Parameter, ranks: list[tuple[int, list[Tensor]]], world_size: int) -> Tensor | None:
    """(1/W) Σ_r of the ranks' gradients of ``param``: dense when some rank's is dense, else sparse rows."""
    given = [(code, tensors) for code, tensors in ranks if code != _NONE]
    if all(code == 0 for code, _ in given):
        return None  # no rank touched it (an empty list too)
    if any(code == _DENSE for code, _ in given):
        total = torch.zeros_like(param)
        for code, tensors in given:
            if code == _DENSE:
                total += tensors[0]
            else:
                total.index_add_(0, tensors[0], tensors[1])
        return total / world_size
    rows = torch.cat([tensors[0] for _, tensors in given])  # (Σ n_r,)
    values = torch.cat([tensors[1] for _, tensors in given])  # (Σ n_r, …)
    total = torch.sparse_coo_tensor(rows.unsqueeze(0), values, param.shape, check_invariants=False).coalesce()
    return torch.sparse_coo_tensor(total.indices(), total.values() / world_size, param.shape,
                                   check_invariants=False, is_coalesced=True)


class GradientSync:
    """Replaces each parameter's gradient by its mean over ranks with one all-gather per step (module docstring).

    Collective: every rank calls it with the same parameters in the same order. ``capacity`` (bytes per rank)
    grows to the largest buffer seen plus 1/8, identically on every rank. Calling it returns the bytes this
    rank sent (C per all-gather); in one process it leaves the gradients as they are and returns 0.
    """

    def __init__(self, params: Iterable[nn.Parameter], context: DistributedContext):
        self.params = list({id(p): p for p in params if p.requires_grad}.values())
        self.context = context
        self.capacity = 0

    def __call__(self) -> int:
        if self.context.world_size == 1 or not self.params:
            return 0
        parts = [_local_part(p) for p in self.params]
        sent = 0
        while True:
            buffer = _pack(parts, self.capacity, self.params[0].device)
            gathered = self.context.all_gather(buffer, "gradient all-gather")  # (W, C) uint8
            sent += buffer.numel()
            totals = [int(gathered[r, len(self.params) * 8 : (len(self.params) + 1) * 8].view(torch.int64))
                      for r in range(self.context.world_size)]
            if max(totals) <= buffer.numel():
                break
            self.capacity = _padded(max(totals) + max(totals) // 8)  # every rank sees every total: all agree
        ranks = [_unpack(gathered[r], self.params) for r in range(self.context.world_size)]
        for i, param in enumerate(self.params):
            param.grad = _mean_gradient(param, [parts_r[i] for parts_r in ranks], self.context.world_size)
        return sent


def sync_gradients(params: Iterable[nn.Parameter], context: DistributedContext) -> int:
    """One-off ``GradientSync(params, context)()``: every gradient replaced by its mean over ranks; bytes sent."""
    return GradientSync(params, context)()


# --- the model on this rank's rows ---------------------------------------------------------------------------------
class DistributedLM:
    """A language model trained on this rank's rows of each global batch, gradients averaged in one all-gather.

    On construction every rank takes rank 0's parameters and buffers. ``model`` stays the plain module:
    evaluate it and save its ``state_dict`` as in one process.

    Args:
        model: a model with ``loss(input, target, state, mask, generator)`` (RNNLM, GenericNCELM), on
            context.device; an ``output`` with ``noise_shard`` and a ``shard_dropout`` method are used when present.
        context: the ``DistributedContext``.
    """

    def __init__(self, model: nn.Module, context: DistributedContext):
        self.model = model
        self.context = context
        self.sync_gradients = GradientSync(model.parameters(), context)
        self.dropout_generator = torch.Generator()  # masks drawn on the CPU, as all randomness: any device, one run
        for tensor in [*model.parameters(), *model.buffers()]:
            context.broadcast_(tensor.data)

    def forward_backward(self, input: Tensor, target: Tensor, state: State = None, mask: Tensor | None = None, *,
                         noise: torch.Generator, dropout_seed: int, micro_batches: int = 1,
                         amp: bool = False) -> tuple[Tensor, State]:
        """Gradients of the global batch's mean loss, averaged over ranks, accumulated into ``.grad``.

        input, target: (B, T) the global batch (every rank passes the same); mask (B, T) or None; state: this
        rank's rows' recurrent state (layers, B/W, H) or None. The rank keeps its rows, runs them as
        ``micro_batches`` forward/backward passes (gradient accumulation) under bfloat16 autocast with ``amp``,
        then synchronises. Returns (this rank's share of the loss, (1/W)·mean over ranks = the global mean loss;
        the new state of its rows, detached).
        """
        context, shards = self.context, self.context.world_size * micro_batches
        real_rows = len(input)
        if mask is not None and real_rows % shards:  # padded sentence batches: fully masked rows, never scored
            input, target, mask = (torch.cat([x, x.new_zeros((-real_rows % shards, *x.shape[1:]))])
                                   for x in (input, target, mask))
        check_global_batch(len(input), context.world_size, micro_batches)
        global_tokens = int(mask.sum()) if mask is not None else target.numel()
        rows = len(input) // shards
        start, total, new_state = noise.get_state(), torch.zeros((), device=context.device), []
        for j in range(micro_batches):
            shard = context.rank * micro_batches + j
            part = slice(shard * rows, (shard + 1) * rows)
            self._shard_randomness(shard, shards, real_rows, noise, start, dropout_seed)
            x, y = input[part].to(context.device), target[part].to(context.device)
            m = mask[part].to(context.device) if mask is not None else None
            h = _rows_of_state(state, j * rows, (j + 1) * rows)
            autocast = torch.autocast(context.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
            with autocast:
                loss, h = self.model.loss(x, y, h, m, generator=noise)
            tokens = int(m.sum()) if m is not None else y.numel()
            weight = tokens * context.world_size / global_tokens if global_tokens else 0.0
            (loss * weight).backward()
            total += loss.detach().float() * weight
            new_state.append(h)
        self.sync_gradients()
        return total, _join_states(new_state)

    def _shard_randomness(self, shard: int, shards: int, real_rows: int, noise: torch.Generator,
                          start: Tensor, dropout_seed: int) -> None:
        """Noise and dropout of shard ``shard`` of ``shards`` drawn for the whole global batch of ``real_rows``."""
        noise.set_state(start)  # every micro-batch draws the global batch's noise from the same position
        self.dropout_generator.manual_seed(dropout_seed)
        output = getattr(self.model, "output", None)
        if hasattr(output, "noise_shard"):
            output.noise_shard = (shard, shards, real_rows)
        if hasattr(self.model, "shard_dropout"):
            self.model.shard_dropout(self.dropout_generator, shard, shards, real_rows)


def _rows_of_state(state: State, start: int, stop: int) -> State:
    if state is None:
        return None
    return tuple(s[:, start:stop] for s in state) if isinstance(state, tuple) else state[:, start:stop]


def _join_states(states: list[State]) -> State:
    if states[0] is None:
        return None
    if isinstance(states[0], tuple):
        return tuple(torch.cat([s[i] for s in states], dim=1).detach() for i in range(len(states[0])))
    return torch.cat(states, dim=1).detach()


# --- checks and checkpoints ----------------------------------------------------------------------------------------
def _digest(tensor: Tensor) -> bytes:
    data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)  # the raw bytes
    return hashlib.sha256(data.numpy().tobytes()).digest()  # 32 bytes


def assert_identical(
    module: nn.Module, context: DistributedContext, generators: Iterable[torch.Generator] = ()
) -> None:
    """RuntimeError on every rank unless all ranks hold bit-identical parameters, buffers and generator states.

    Compares SHA-256 digests of every ``state_dict`` entry (and of each generator's state), so a 1-ulp
    difference counts. Collective; a no-op in one process.
    """
    if context.world_size == 1:
        return
    mine = {name: _digest(value) for name, value in module.state_dict().items()}
    mine.update({f"generator {i}": _digest(g.get_state()) for i, g in enumerate(generators)})
    digests = torch.frombuffer(bytearray(b"".join(mine.values())), dtype=torch.uint8).view(len(mine), 32)
    everyone = context.all_gather(digests, "parameter comparison")  # (W, entries, 32): SHA-256 per entry
    differ = [name for i, name in enumerate(mine) if not everyone[:, i].eq(digests[i]).all()]
    if differ:
        raise RuntimeError(f"ranks hold different values of {', '.join(differ)} (rank {context.rank} of "
                           f"{context.world_size}); the synchronisation of gradients or noise is broken")


def gather_state(state: State, context: DistributedContext) -> Any:
    """A recurrent state of this rank's rows, (layers, B/W, H) each, joined over ranks into (layers, B, H).

    Collective (every rank must call it); identity in one process. Checkpoints hold the whole batch's state, so
    a run stopped mid-epoch resumes on any number of processes (``shard_state`` cuts it again).
    """
    if state is None or context.world_size == 1:
        return state
    parts = state if isinstance(state, tuple) else (state,)
    joined = tuple(torch.cat(context.all_gather(part, "recurrent state").unbind(0), dim=1) for part in parts)
    return joined if isinstance(state, tuple) else joined[0]


def shard_state(state: State, context: DistributedContext) -> Any:
    """This rank's rows (dimension 1) of a whole-batch recurrent state: (layers, B, H) → (layers, B/W, H)."""
    if state is None or context.world_size == 1:
        return state
    parts = state if isinstance(state, tuple) else (state,)
    cut = tuple(shard_rows(part.transpose(0, 1), context.rank, context.world_size).transpose(0, 1).contiguous()
                for part in parts)
    return cut if isinstance(state, tuple) else cut[0]


__all__ = [
    "DistributedLM",
    "GradientSync",
    "assert_identical",
    "check_global_batch",
    "gather_state",
    "shard_rows",
    "shard_state",
    "step_seed",
    "sync_gradients",
]
