"""Data-parallel training of the language models across processes (torchrun), with sparse embedding rows.

Launch: ``torchrun --nproc-per-node N train.py --dataset ...`` (one node), or on every node
``torchrun --nnodes M --node-rank i --master-addr HOST --master-port PORT --nproc-per-node N train.py ...``
(or torchrun's ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id JOB``). torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; ``DistributedContext.from_env`` reads them and, without
them, gives a single-process context, so the training loop has one code path:

    context = DistributedContext.from_env(config.device)            # gloo on CPU, NCCL on CUDA
    check_global_batch(config.batch_size, context.world_size)       # before any work
    model = build_model(config, counts).to(context.device)
    parallel = DistributedLM(model, context)                         # rank 0's parameters on every rank
    noise = torch.Generator().manual_seed(config.seed)               # the SAME seed on every rank
    for input, target in batches:                                    # every rank reads the same global batch
        input, target = (shard_rows(x, context.rank, context.world_size) for x in (input, target))
        loss, state = parallel.loss(input, target, state, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()                                              # DDP averages the dense gradients
        parallel.sync_sparse_gradients()                             # then the sparse rows
        ... weight decay, clipping, optimizer.step() exactly as in one process
    assert_identical(model, context, [noise])
    context.close()

**The global batch.** ``--batch-size`` B is the global batch: every rank builds the same batches (same data
order, same seeds) and keeps rows ``[r·B/W, (r+1)·B/W)`` of each (``shard_rows``), so each rank's recurrent
state always follows the same rows. B must be divisible by the world size W.

**Dense gradients** (recurrent layers, projections, a learned norm) are averaged by
``DistributedDataParallel``: bucketed all-reduces overlapped with the backward pass. DDP hooks the loss into
its reducer only through ``forward``, so ``DistributedLM`` wraps the model in a module whose ``forward`` is
``model.loss`` (``LossForward``) and hands that to DDP.

**Sparse gradients** (the input embedding with ``sparse=True``; the output embedding and bias under a sampled
loss) are kept out of DDP with ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``: NCCL
has no sparse all-reduce (pytorch/pytorch#22400) and DDP with sparse gradients and unused parameters fails
(#80496). ``sync_sparse_gradients`` averages them instead by gathering rows: each rank coalesces its gradient
to (rows (n_r,), values (n_r, …)), all ranks all-gather the sizes n_r, pad to max n_r, all-gather rows and
values, cut the padding, and coalesce locally:

    g = (1/W) Σ_r Σ_{i: rows_r[i] = v} values_r[i]   for every row v touched on some rank,

the mean gradient (DDP's convention), on every rank, holding only the union of touched rows. Each rank sends
max_r n_r · (8 + 4·H) bytes per parameter instead of V·H·4: a step touches its targets and the k noise words,
a few thousand rows, against V of 10⁵–10⁶ (bench/bench_sparse_sync.py gives the figures). The same calls
work on gloo and NCCL (all_gather of dense tensors).

**One noise draw for all ranks.** Every rank holds a CPU ``torch.Generator`` seeded with the same seed and
uses it only for the noise, so every rank draws exactly what a single process holding the whole global batch
would draw, and keeps its own part: with noise shared by the batch (``noise_sharing="batch"``), the same k
words on every rank; with a draw per sequence (or per token), the draws of the whole global batch, of which
each rank keeps its rows' (``SampledOutput.noise_shard``). Every token is then contrasted with the noise it
would meet in one process, so each token's loss is the same function of its context, target and noise, and
with equal shards the mean of the ranks' mean losses is the mean over the global batch:
(1/W) Σ_r (1/n) Σ_{t ∈ shard r} ℓ_t = (1/(W n)) Σ_t ℓ_t. With shared noise the rows a step touches are its
targets plus k noise words, not k per rank. The generator's state is the same on every rank, so rank 0's
checkpoint of it resumes every rank.

**Losses over masked tokens.** ``model.loss`` averages over the rank's own unmasked tokens. When shards hold
different numbers of tokens (padded sentences), multiply each rank's loss by ``global_mean_weight``,
n_r·W / Σ_r n_r, before ``backward``: DDP's average then is the mean over all tokens of the global batch.

**Decisions must be collective.** Anything that ends or branches the loop (a divergence check, a time
budget) must give the same answer on every rank, or the ranks that go on wait for the others in their next
collective: use ``context.mean`` (the global running loss) and ``context.any`` (any rank out of time).
Only rank 0 (``context.is_main``) writes files.

**When a rank fails.** torchrun's agent watches its workers; when one exits with an error it stops the
others on that node (no restarts unless ``--max-restarts``) and prints the failing rank's error (with its
traceback when the entry point is wrapped in ``torch.distributed.elastic.multiprocessing.errors.record``).
Ranks on other nodes, or processes started another way, are left in a collective: on gloo the closed
connection makes that collective raise at once, and otherwise every collective gives up after the
``timeout`` given to ``DistributedContext.from_env``. The collectives of this module re-raise such errors
naming the rank and the likely cause; ``DistributedContext`` used as a context manager shuts the process
group down on the way out, also after an error, which closes the failing rank's connections.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ebm.utils import get_device

DEFAULT_TIMEOUT = timedelta(minutes=10)  # how long a collective waits for the other ranks
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_T = TypeVar("_T")


@dataclass
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: this process's rank in [0, world_size).
        world_size: W, the number of processes.
        local_rank: the rank on this node (chooses the GPU).
        device: the device this rank trains on (``cuda:<local_rank>`` on GPUs).
        backend: "gloo" or "nccl", or None when no process group was started (single process).
        timeout: how long a collective waits for the other ranks before it raises.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    timeout: timedelta = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, device: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT) -> DistributedContext:
        """The context described by torchrun's environment variables, with its process group started.

        Without RANK and WORLD_SIZE (a plain ``python train.py``): one process on ``get_device(device)``.
        Under torchrun: "auto" and "cuda" mean ``cuda:<LOCAL_RANK>`` with NCCL, "cpu" (or "auto" without a
        GPU) means gloo; MPS has no distributed backend and is an error.
        """
        environ = os.environ
        if "RANK" not in environ and "WORLD_SIZE" not in environ:
            return cls(device=get_device(device), timeout=timeout)
        missing = [name for name in _TORCHRUN_VARIABLES if name not in environ]
        if missing:
            raise ValueError(f"incomplete torchrun environment: {', '.join(missing)} not set "
                             f"(launch with torchrun, which sets {', '.join(_TORCHRUN_VARIABLES)})")
        rank, world_size, local_rank = (int(environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank}, WORLD_SIZE={world_size}")
        kind = device.split(":")[0]
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        if kind == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device 'cuda' was requested but CUDA is not available; use --device cpu")
            train_device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(train_device)
        elif kind == "cpu":
            train_device, backend = torch.device("cpu"), "gloo"
        else:
            raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not {device!r}")
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=timeout)
        return cls(rank, world_size, local_rank, train_device, backend, timeout)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when a process group runs (launched by torchrun), even with one process."""
        return self.backend is not None

    def run(self, what: str, collective: Callable[[], _T]) -> _T:
        """``collective()``, with a failure re-raised as a RuntimeError naming this rank and the likely cause."""
        try:
            return collective()
        except RuntimeError as error:
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: {what} failed; another rank has probably exited "
                f"(see its error above) or stopped answering for the {self.timeout} timeout: {error}"
            ) from error

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op in one process)."""
        if self.world_size > 1:
            self.run("barrier", dist.barrier)

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over ranks (the same tensor on every rank), e.g. the global running loss."""
        if self.world_size == 1:
            return value
        total = value.detach().clone()
        self.run("mean over ranks", lambda: dist.all_reduce(total))
        return total / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank (stop together: time budget, divergence)."""
        if self.world_size == 1:
            return flag
        votes = torch.tensor([int(flag)], device=self.device)
        self.run("vote over ranks", lambda: dist.all_reduce(votes, op=dist.ReduceOp.MAX))
        return bool(votes.item())

    def close(self) -> None:
        """Shut the process group down (its connections close; peers still waiting get an error)."""
        if self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()
        self.backend = None

    def __enter__(self) -> DistributedContext:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is None:
            self.close()
            return
        # After a failure the group is left for the process's exit to tear down: destroying it while a failed
        # collective's gloo thread still releases tensors can deadlock (seen in CI: ~ProcessGroupGloo joins a
        # run-loop thread that waits for the GIL the destructor holds). The sockets close when the process ends,
        # so peers still get their error.
        self.backend = None


def check_global_batch(batch_size: int, world_size: int) -> None:
    """ValueError unless the global batch of ``batch_size`` rows splits evenly over ``world_size`` ranks."""
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if batch_size < 1 or batch_size % world_size:
        raise ValueError(f"the global batch size {batch_size} must be a positive multiple of the world size "
                         f"{world_size} (each rank reads batch_size / world_size rows); choose e.g. "
                         f"{max(world_size, batch_size // world_size * world_size)}")


def shard_rows(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """This rank's rows of a global batch: (B, …) → (B/W, …), rows [rank·B/W, (rank+1)·B/W)."""
    check_global_batch(batch.shape[0], world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    rows = batch.shape[0] // world_size
    return batch[rank * rows : (rank + 1) * rows]


def global_mean_weight(local_tokens: int, context: DistributedContext) -> float:
    """n_r·W / Σ_r n_r: multiplying each rank's mean loss by it makes DDP's average the global token mean.

    (1/W) Σ_r (n_r W / N) · (1/n_r) Σ_{t ∈ r} ℓ_t = (1/N) Σ_t ℓ_t with N = Σ_r n_r; 1 when shards are equal.
    Collective: every rank must call it. 0 when no rank has a token (every loss is then 0 anyway).
    """
    if context.world_size == 1:
        return 1.0
    total = torch.tensor([local_tokens], dtype=torch.int64, device=context.device)
    context.run("token count", lambda: dist.all_reduce(total))
    return local_tokens * context.world_size / int(total.item()) if int(total.item()) else 0.0


def _gather(context: DistributedContext, what: str, tensor: Tensor) -> list[Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    context.run(what, lambda: dist.all_gather(parts, tensor.contiguous()))
    return parts


def _local_rows(param: nn.Parameter) -> tuple[Tensor, Tensor] | None:
    """This rank's gradient of ``param`` as (rows (n,), values (n, …)), coalesced; None when it is dense."""
    grad = param.grad
    if grad is None:
        return param.new_empty(0, dtype=torch.int64), param.new_empty((0, *param.shape[1:]))
    if not grad.is_sparse:
        return None
    if grad.sparse_dim() != 1:
        raise ValueError(f"sparse gradients must index rows (sparse_dim 1), got sparse_dim {grad.sparse_dim()}")
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()


def sync_sparse_gradients(params: Iterable[nn.Parameter], context: DistributedContext) -> int:
    """Replace each parameter's gradient by its mean over ranks, sending only the rows this rank touched.

    Sparse gradients (rows of a (V, …) parameter): all-gather the sizes, then the padded (rows, values), and
    coalesce: g_v = (1/W) Σ_r Σ_{i: rows_r[i] = v} values_r[i] over the union of touched rows (module
    docstring). A missing gradient counts as no rows; a parameter no rank touched keeps ``grad = None``.
    When some rank holds a dense gradient (a tied embedding under the full softmax), every rank
    all-reduces it densely instead. Afterwards every rank holds the same gradients.

    Collective: every rank must call it with the same parameters in the same order.
    Returns the bytes of this rank's send buffers (sizes, padded rows and values, or dense gradients).
    """
    params = list(params)
    if context.world_size == 1 or not params:
        return 0
    local = [_local_rows(p) for p in params]
    sizes = torch.tensor([-1 if rows is None else rows[0].numel() for rows in local], device=params[0].device)
    all_sizes = torch.stack(_gather(context, "sparse gradient sizes", sizes)).tolist()  # [rank][param]
    sent = sizes.numel() * sizes.element_size()
    for i, (param, rows_values) in enumerate(zip(params, local, strict=True)):
        counts = [rank_sizes[i] for rank_sizes in all_sizes]
        if min(counts) < 0:
            sent += _all_reduce_dense(param, context)
        elif max(counts) > 0:
            sent += _gather_rows(param, *rows_values, counts, context)
        else:
            param.grad = None
    return sent


def _gather_rows(param: nn.Parameter, rows: Tensor, values: Tensor, counts: list[int],
                 context: DistributedContext) -> int:
    width = max(counts)
    padded_rows = torch.zeros(width, dtype=torch.int64, device=param.device)  # (max n_r,)
    padded_values = values.new_zeros((width, *values.shape[1:]))  # (max n_r, …)
    padded_rows[: rows.numel()] = rows
    padded_values[: rows.numel()] = values
    all_rows = _gather(context, "sparse gradient rows", padded_rows)
    all_values = _gather(context, "sparse gradient values", padded_values)
    rows = torch.cat([part[:n] for part, n in zip(all_rows, counts, strict=True)])  # (Σ n_r,)
    values = torch.cat([part[:n] for part, n in zip(all_values, counts, strict=True)])  # (Σ n_r, …)
    total = torch.sparse_coo_tensor(rows.unsqueeze(0), values, param.shape, check_invariants=False).coalesce()
    param.grad = torch.sparse_coo_tensor(total.indices(), total.values() / context.world_size, param.shape,
                                         check_invariants=False, is_coalesced=True)
    return padded_rows.numel() * padded_rows.element_size() + padded_values.numel() * padded_values.element_size()


def _all_reduce_dense(param: nn.Parameter, context: DistributedContext) -> int:
    grad = param.grad
    grad = torch.zeros_like(param) if grad is None else grad.to_dense() if grad.is_sparse else grad
    context.run("dense gradient all-reduce", lambda: dist.all_reduce(grad))
    param.grad = grad / context.world_size
    return grad.numel() * grad.element_size()


class LossForward(nn.Module):
    """``forward(*args, **kwargs) = model.loss(*args, **kwargs)``: the loss as a forward pass, for DDP.

    DDP prepares its reducer (which gradients to expect) in ``forward``; the language models compute their
    training loss in ``loss``, so DDP wraps this module, not the model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.loss(*args, **kwargs)


def row_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters synchronised by rows: ``model.sparse_parameters()`` and sparse ``nn.Embedding`` weights."""
    params = list(model.sparse_parameters()) if hasattr(model, "sparse_parameters") else []
    params += [m.weight for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse]
    return list({id(p): p for p in params if p.requires_grad}.values())


class DistributedLM:
    """A language model trained on this rank's shard: dense gradients through DDP, sparse rows by gathering.

    ``loss(...)`` runs ``model.loss(...)`` (through DDP when there are several ranks and dense parameters);
    after ``backward`` every rank holds the mean dense gradients, and ``sync_sparse_gradients()`` averages
    the sparse rows. On construction every rank takes rank 0's parameters and buffers. ``model`` stays the
    plain module: evaluate it and save its ``state_dict`` as in one process.

    Args:
        model: a model with ``loss(input, target, state, mask, ...)`` (RNNLM, GenericNCELM), on context.device.
        context: the ``DistributedContext``.
        rows: the parameters to synchronise by rows (default ``row_parameters(model)``).
    """

    def __init__(self, model: nn.Module, context: DistributedContext, rows: Iterable[nn.Parameter] | None = None):
        self.model = model
        self.context = context
        self.rows = row_parameters(model) if rows is None else list(rows)
        loss_module = LossForward(model)
        row_ids = {id(p) for p in self.rows}
        dense = [p for p in model.parameters() if p.requires_grad and id(p) not in row_ids]
        if context.world_size > 1:
            self._broadcast_from_main([*self.rows, *model.buffers()])
            if dense:
                ignored = [f"{module_name}.{name}" for module_name, module in loss_module.named_modules()
                           for name, p in module.named_parameters(recurse=False) if id(p) in row_ids]
                ignored += [name for name, _ in loss_module.named_buffers()]  # built alike on every rank
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(loss_module, ignored)
                device_ids = [context.device.index] if context.device.type == "cuda" else None
                loss_module = context.run("DDP set-up", lambda: DistributedDataParallel(loss_module, device_ids))
        self._loss = loss_module

    def _broadcast_from_main(self, tensors: list[Tensor]) -> None:
        for tensor in tensors:
            self.context.run("broadcast from rank 0", lambda t=tensor: dist.broadcast(t.data, src=0))

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        """``model.loss(*args, **kwargs)`` on this rank's shard, e.g. (loss, state) for the RNNLM."""
        return self._loss(*args, **kwargs)

    def sync_sparse_gradients(self) -> int:
        """Average the sparse rows over ranks (after ``backward``); returns this rank's bytes sent."""
        return sync_sparse_gradients(self.rows, self.context)


def _digest(tensor: Tensor) -> str:
    data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)  # the raw bytes
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


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
    everyone: list[Any] = [None] * context.world_size
    context.run("parameter comparison", lambda: dist.all_gather_object(everyone, mine))
    differ = [name for name in mine if any(theirs.get(name) != mine[name] for theirs in everyone)]
    if differ:
        raise RuntimeError(f"ranks hold different values of {', '.join(differ)} (rank {context.rank} of "
                           f"{context.world_size}); the synchronisation of gradients or noise is broken")





def gather_state(state: Tensor | tuple[Tensor, ...] | None, context: DistributedContext) -> Any:
    """A recurrent state of this rank's rows, (layers, B/W, H) each, joined over ranks into (layers, B, H).

    Collective (every rank must call it); identity in one process. Checkpoints hold the whole batch's state, so
    a run stopped mid-epoch resumes on any number of processes (``shard_state`` cuts it again).
    """
    if state is None or context.world_size == 1:
        return state
    parts = state if isinstance(state, tuple) else (state,)
    joined = tuple(torch.cat(_gather(context, "recurrent state", part), dim=1) for part in parts)
    return joined if isinstance(state, tuple) else joined[0]


def shard_state(state: Tensor | tuple[Tensor, ...] | None, context: DistributedContext) -> Any:
    """This rank's rows (dimension 1) of a whole-batch recurrent state: (layers, B, H) → (layers, B/W, H)."""
    if state is None or context.world_size == 1:
        return state
    parts = state if isinstance(state, tuple) else (state,)
    cut = tuple(shard_rows(part.transpose(0, 1), context.rank, context.world_size).transpose(0, 1).contiguous()
                for part in parts)
    return cut if isinstance(state, tuple) else cut[0]


__all__ = [
    "DEFAULT_TIMEOUT",
    "DistributedContext",
    "DistributedLM",
    "LossForward",
    "assert_identical",
    "check_global_batch",
    "gather_state",
    "global_mean_weight",
    "row_parameters",
    "shard_rows",
    "shard_state",
    "sync_sparse_gradients",
]
