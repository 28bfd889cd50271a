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

**Dense sums during the backward pass, rows at the end.** ``GradientSync`` averages two kinds of gradient two ways:

    g = (1/W) Σ_r g_r (dense),     g_v = (1/W) Σ_r Σ_{i: rows_r[i] = v} values_r[i] (sparse, touched rows only),

DDP's mean, holding only the union of touched rows. The dense gradients (recurrent layers, projections, a
learned norm, a tied matrix under the full softmax) are cut into buckets of about 1 MiB in the order the backward
pass finishes them (the last recurrent layer first) and each bucket's all-reduce starts, without waiting, as
soon as it is complete: on the last micro-batch a hook on each parameter counts it in, so the last layer's sum
travels while the first layer's backward runs. Buckets start in one fixed order on every rank (a bucket waits for
the ones before it), so the ranks' collectives always match. After the backward pass the coalesced rows of the
input and output embeddings (rows int64 (n,), values (n, …)) are packed into one byte buffer behind a header of
codes for every parameter (−3 dense, in the all-reduce; −2 no gradient; −1 dense, carried here; n ≥ 0 sparse
rows) and one all-gather of a fixed size C carries them while the last dense sums finish. C is the largest
buffer seen so far plus 1/8: a step whose buffer outgrows it (every rank sees every header) gathers once more at
the new size. A parameter that no rank gave a gradient (a learned norm under the full softmax) keeps
``grad = None`` on every rank, as in one process. Per rank and step that is 2(W − 1)/W of the dense bytes for
the all-reduces and C·(W − 1) for the all-gather: at W = 2 the rows cost a few thousand instead of V
(bench/bench_sparse_sync.py). On gloo an all-reduce costs half the CPU of an all-gather of the same bytes and
needs no sum afterwards, which is why the dense part left the all-gather (bench/bench_scaling.py).

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
_REDUCED, _NONE, _DENSE = -3, -2, -1  # header codes (n ≥ 0: sparse with n rows; −3: in the all-reduce)
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


# --- gradients: a dense all-reduce beside one packed all-gather of rows -------------------------------------------
def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _local_part(param: nn.Parameter) -> tuple[int, list[Tensor]]:
    """(header code, tensors to send) for this rank's gradient of a row-synchronised ``param``."""
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
        shapes = [] if code in (_NONE, _REDUCED) else [(param.shape, param.dtype)] if code == _DENSE else [
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
    """Replaces each parameter's gradient by its mean over ranks: all-reduces of the dense gradients, started
    during the backward pass as buckets fill, and one all-gather of the rows of the ``sparse`` ones at the end
    (module docstring).

    Collective: every rank calls it with the same parameters, in the same order, and the same ``sparse`` list (the
    parameters whose gradients are sparse rows: ``model.sparse_parameters()``). A dense-listed parameter given a
    sparse gradient is densified, a sparse-listed one given a dense gradient travels densely in the all-gather:
    always correct, only slower.

    Dense parameters are cut into buckets of about ``bucket_bytes``, in the reverse of their order (the order the
    backward pass finishes them: the last recurrent layer first), one dtype per bucket. After ``arm()``, the
    backward pass that follows starts each bucket's all-reduce as soon as it and every earlier bucket are
    complete (a hook on each parameter), so the transfer overlaps the rest of the backward pass; buckets start
    in the same order on every rank, and any not yet started (a parameter with no gradient on this rank) start
    when the sync is called. ``capacity`` (bytes per rank) grows to the largest all-gather buffer seen plus 1/8,
    identically on every rank. Calling it returns the bytes this rank handed to the collectives (the dense
    gradients once, C per all-gather); in one process it leaves the gradients as they are and returns 0.
    """

    def __init__(self, params: Iterable[nn.Parameter], context: DistributedContext,
                 sparse: Iterable[nn.Parameter] = (), bucket_bytes: int = 1 << 20):
        params = list({id(p): p for p in params if p.requires_grad}.values())
        rows = {id(p) for p in sparse}
        self.dense = [p for p in params if id(p) not in rows]
        self.rows = [p for p in params if id(p) in rows]
        self.params = self.dense + self.rows  # the header's order
        self.context = context
        self.capacity = 0
        self.buckets = _buckets(self.dense, bucket_bytes)
        self._bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self._armed, self._ready, self._started, self._hooked = False, [0] * len(self.buckets), [], False

    @property
    def in_flight(self) -> int:
        """Dense buckets whose all-reduce has started and not yet been waited for (by the next call)."""
        return len(self._started)

    def arm(self) -> None:
        """The next backward pass gives the final gradients of this step: start buckets' all-reduces as they fill."""
        if self._started:
            raise RuntimeError(f"{len(self._started)} gradient all-reduces of the last armed step are still in "
                               "flight: call the sync once after each armed backward pass")
        self._armed, self._ready = self.context.world_size > 1, [0] * len(self.buckets)
        if self._armed and not self._hooked:  # hooks only on a sync that arms: a one-off sync leaves none behind
            for p in self.dense:
                p.register_post_accumulate_grad_hook(self._on_gradient)
            self._hooked = True

    def _on_gradient(self, param: nn.Parameter) -> None:
        if not self._armed:
            return
        self._ready[self._bucket_of[id(param)]] += 1
        while len(self._started) < len(self.buckets) and \
                self._ready[len(self._started)] == len(self.buckets[len(self._started)]):
            self._start(len(self._started))

    def _start(self, index: int) -> None:
        """Bucket ``index`` flattened into one buffer (zeros for a missing gradient) on the backend's device, its
        in-place sum started."""
        bucket = self.buckets[index]
        flat = torch.cat([(p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in bucket]).to(self.context.device)
        self._started.append((flat, self.context.start_all_reduce_(flat, f"gradient all-reduce (bucket {index})")))

    def __call__(self) -> int:
        if self.context.world_size == 1 or not self.params:
            return 0
        while len(self._started) < len(self.buckets):
            self._start(len(self._started))
        started, self._started, self._armed = self._started, [], False
        parts = [(_NONE if p.grad is None else _REDUCED, []) for p in self.dense] + [_local_part(p) for p in self.rows]
        sent = sum(flat.numel() * flat.element_size() for flat, _ in started)
        while True:  # the rows travel while the dense sums finish
            buffer = _pack(parts, self.capacity, self.params[0].device)  # all_gather runs it on the backend's
            gathered = self.context.all_gather(buffer, "gradient all-gather")  # (W, C) uint8
            sent += buffer.numel()
            totals = [int(gathered[r, len(self.params) * 8 : (len(self.params) + 1) * 8].view(torch.int64))
                      for r in range(self.context.world_size)]
            if max(totals) <= buffer.numel():
                break
            self.capacity = _padded(max(totals) + max(totals) // 8)  # every rank sees every total: all agree
        ranks = [_unpack(gathered[r], self.params) for r in range(self.context.world_size)]
        given = {id(p): any(parts_r[i][0] != _NONE for parts_r in ranks) for i, p in enumerate(self.dense)}
        for bucket, (flat, wait) in zip(self.buckets, started, strict=True):
            wait()
            flat = flat.to(bucket[0].device).div_(self.context.world_size)  # summed on the backend's device
            offset = 0
            for p in bucket:  # views of the summed buffer; None where no rank had a gradient, as in one process
                p.grad = flat[offset : offset + p.numel()].view_as(p) if given[id(p)] else None
                offset += p.numel()
        for i, param in enumerate(self.rows, start=len(self.dense)):
            param.grad = _mean_gradient(param, [parts_r[i] for parts_r in ranks], self.context.world_size)
        return sent


def _buckets(params: list[nn.Parameter], bucket_bytes: int) -> list[list[nn.Parameter]]:
    """``params`` in reverse order cut into runs of one dtype, each closed once it holds ≥ ``bucket_bytes``."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in reversed(params):
        if not buckets or size >= bucket_bytes or p.dtype != buckets[-1][0].dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel() * p.element_size()
    return buckets


def sync_gradients(params: Iterable[nn.Parameter], context: DistributedContext,
                   sparse: Iterable[nn.Parameter] = ()) -> int:
    """One-off ``GradientSync(params, context, sparse)()``: every gradient replaced by its mean over ranks; bytes
    handed to the collectives."""
    return GradientSync(params, context, sparse)()


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
        self.sync_gradients = GradientSync(model.parameters(), context, getattr(model, "sparse_parameters", list)())
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
            if j == micro_batches - 1:
                self.sync_gradients.arm()  # this backward's gradients are final: dense buckets sync as they fill
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
