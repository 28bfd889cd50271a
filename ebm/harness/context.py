"""Where a training process stands: one process, or one rank of a torchrun job, behind one interface.

The training loop always asks the context and never branches on the world size; in one process every
collective is the identity (``mean``, ``any``, ``broadcast_object``) or a no-op (``barrier``):

    with DistributedContext.from_env(config.device) as context:      # gloo on CPU, NCCL on CUDA, or one process
        ...
        stop = context.any(clock.out_of_time())                        # every rank stops at the same step
        mean_loss = context.mean(loss_sum)                             # the global running loss
        lr = context.broadcast_object(lr)                              # rank 0's decision on every rank
        if context.is_main: save(...)

**Collectives run on the backend's device.** NCCL serves only CUDA tensors and gloo CPU (and CUDA) tensors:
every collective here moves its tensors to ``context.device`` (the rank's GPU under NCCL, the CPU under gloo)
and hands results back on the caller's device, so a CPU scalar such as a clock reading can be averaged on
either backend.

**Failures say whose they are.** ``run(what, fn)`` re-raises a failed collective as a RuntimeError naming the rank
and what failed; when the error looks like a lost peer (a closed or reset connection, a timeout, an aborted
communicator) it says that another rank has probably exited, otherwise that the collective itself failed on this
rank (a wrong device, dtype or size is this rank's bug, not a dead peer).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ebm.utils import get_device

DEFAULT_TIMEOUT = timedelta(minutes=10)  # how long a collective waits for the other ranks
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# what gloo, NCCL and the TCP store say when a peer has gone (exited, killed, or silent past the timeout)
_LOST_PEER = re.compile(r"connection (closed|reset|refused)|broken pipe|timed? ?out|timeout|abort|"
                        r"peer|socket|nccl communicator|heartbeat", re.IGNORECASE)
_T = TypeVar("_T")


def lost_peer(error: BaseException) -> bool:
    """True when a failed collective's ``error`` looks like another rank exited or stopped answering."""
    return isinstance(error, dist.DistNetworkError | dist.DistStoreError) or bool(_LOST_PEER.search(str(error)))


@dataclass
class DistributedContext:
    """This process's place in a (possibly single-process) run.

    Attributes:
        rank: this process's rank in [0, world_size).
        world_size: W, the number of processes.
        local_rank: the rank on this node (chooses the GPU).
        device: the device this rank trains on and every collective runs on (``cuda:<local_rank>`` under NCCL).
        backend: "gloo" or "nccl", or None when no process group was started (one process).
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

    def run(self, what: str, collective: Callable[[], _T]) -> _T:
        """``collective()``; a failure re-raised as a RuntimeError naming this rank, what failed and why (in one
        process the error goes up as it is: there is no other rank to blame)."""
        try:
            return collective()
        except RuntimeError as error:
            if self.world_size == 1:
                raise
            where = f"rank {self.rank} of {self.world_size}: {what} failed"
            if lost_peer(error):
                raise RuntimeError(f"{where}; another rank has probably exited (see its error above) or stopped "
                                   f"answering for the {self.timeout} timeout: {error}") from error
            raise RuntimeError(f"{where} on this rank ({self.backend} on {self.device}): {error}") from error

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op in one process)."""
        if self.world_size > 1:
            self.run("barrier", lambda: dist.barrier(device_ids=[self.device.index])
                     if self.device.type == "cuda" else dist.barrier())

    def all_reduce(self, value: Tensor, what: str = "all-reduce", op: Any = None) -> Tensor:
        """The sum (or ``op``) of ``value`` over ranks, computed on ``self.device``; returned on value's device."""
        if self.world_size == 1:
            return value
        total = value.detach().to(self.device, copy=True)
        self.run(what, lambda: dist.all_reduce(total, op=dist.ReduceOp.SUM if op is None else op))
        return total.to(value.device)

    def start_all_reduce_(self, tensor: Tensor, what: str = "all-reduce") -> Callable[[], None]:
        """Start summing ``tensor`` (on ``self.device``) over ranks in place and return ``wait``: it blocks until
        the sum is there (a failure raised as ``run`` raises it). Work between the two overlaps the transfer."""
        if self.world_size == 1:
            return lambda: None
        if tensor.device.type != self.device.type:
            raise ValueError(f"{what}: an in-place collective needs its tensor on {self.device}, got {tensor.device}")
        work = self.run(what, lambda: dist.all_reduce(tensor, async_op=True))
        return lambda: self.run(what, work.wait)

    def all_gather(self, value: Tensor, what: str = "all-gather") -> Tensor:
        """Every rank's ``value`` (same shape on each), stacked: (W, …), gathered on ``self.device``."""
        if self.world_size == 1:
            return value.detach().unsqueeze(0)
        local = value.detach().to(self.device).contiguous().reshape(1, -1)  # (1, n)
        parts = torch.empty((self.world_size, local.shape[1]), dtype=local.dtype, device=self.device)  # (W, n)
        self.run(what, lambda: dist.all_gather_single(parts, local))
        return parts.view(self.world_size, *value.shape).to(value.device)

    def broadcast_(self, tensor: Tensor, what: str = "broadcast from rank 0") -> None:
        """Overwrite ``tensor`` in place with rank 0's (a parameter, a buffer)."""
        if self.world_size == 1:
            return
        staged = tensor.detach() if tensor.device == self.device else tensor.detach().to(self.device)
        self.run(what, lambda: dist.broadcast(staged, src=0))
        if staged is not tensor:
            with torch.no_grad():
                tensor.copy_(staged.to(tensor.device))

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over ranks (the same tensor on every rank), e.g. the global running loss."""
        return value if self.world_size == 1 else self.all_reduce(value, "mean over ranks") / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank (stop together: time budget, divergence)."""
        if self.world_size == 1:
            return flag
        return bool(self.all_reduce(torch.tensor([int(flag)]), "vote over ranks", dist.ReduceOp.MAX).item())

    def broadcast_object(self, value: _T) -> _T:
        """Rank 0's ``value`` (any picklable object) on every rank: a decision taken once (a plateau lr cut)."""
        if self.world_size == 1:
            return value
        data = torch.frombuffer(bytearray(pickle.dumps(value)), dtype=torch.uint8) if self.is_main else None
        size = torch.tensor([data.numel() if data is not None else 0])
        self.broadcast_(size, "broadcast of rank 0's value")
        data = data if data is not None else torch.empty(int(size.item()), dtype=torch.uint8)
        self.broadcast_(data, "broadcast of rank 0's value")
        return pickle.loads(data.numpy().tobytes())

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


__all__ = ["DEFAULT_TIMEOUT", "DistributedContext", "lost_peer"]
