"""Data-parallel training pieces (ebm.lm.distributed, ebm.harness.context), checked with 2 gloo processes on the CPU.

Oracles: a dense all-reduce of the same gradients (the mean DDP would give); a single process training on the
whole global batch with every default of the LM recipe on (dropout 0.4/0.3/0.4 locked, noise per sequence),
its masks and noise drawn from its own generators; hand-written row ranges, byte counts and means; a stand-in
for NCCL that refuses CPU tensors.

The ranks are forked on Linux (they start in milliseconds, with torch already imported) and spawned elsewhere.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401  (torch.optim and torch.testing import it lazily: once here, not in every rank)
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ebm.harness.context import DistributedContext
from ebm.lm.config import LMConfig
from ebm.lm.distributed import (
    DistributedLM,
    GradientSync,
    assert_identical,
    check_global_batch,
    gather_state,
    shard_rows,
    step_seed,
    sync_gradients,
)
from ebm.lm.models import RNNLM
from ebm.lm.optim import clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput

WORLD = 2
START = "fork" if sys.platform == "linux" else "spawn"  # fork: the ranks skip importing torch again (seconds)
V, HIDDEN, K, SEED = 50, 8, 10, 11  # the tiny language model
BPTT, STEPS = 5, 3  # tokens per row and step, optimiser steps
RECIPE = LMConfig()  # the defaults: dropout rates, locked dropout, noise sharing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ(rank: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


def _entry(rank: int, port: int, timeout_s: float, check, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(_environ(rank, port))  # what torchrun sets
    with DistributedContext.from_env("cpu", timedelta(seconds=timeout_s)) as context:
        check(context, *args)


def _spawn(check, *args, timeout_s: float = 60.0) -> None:
    """Run ``check(context, *args)`` on 2 gloo ranks; an assertion in a rank fails the test."""
    mp.start_processes(_entry, args=(_free_port(), timeout_s, check, args), nprocs=WORLD, start_method=START)


# --- (a) one all-gather: equal to a dense all-reduce -----------------------------------------------------------
# rows per rank: 3 is touched by both ranks, 1 and 5 by rank 0 only, 7, 9 and 11 by rank 1 only; 3 (rank 0) and
# 7 (rank 1) repeat within a rank; after coalescing the ranks send 3 and 4 rows.
ROWS = {0: [1, 3, 3, 5], 1: [3, 7, 11, 7, 9, 7]}
ROWS_OF_ONE_RANK = {0: [2, 2]}  # rank 1 has no gradient at all for this parameter


def _sparse_grad(rows: list[int], shape: tuple[int, ...], seed: int) -> torch.Tensor:
    values = torch.randn((len(rows), *shape[1:]), generator=torch.Generator().manual_seed(seed))
    rows = torch.tensor([rows], dtype=torch.int64)  # (1, n), duplicates kept: the tensor is not coalesced
    return torch.sparse_coo_tensor(rows, values, shape, check_invariants=True)


def _set_grads(rank: int, weight, bias, lonely, untouched, dense) -> None:
    weight.grad = _sparse_grad(ROWS[rank], (12, 3), seed=10 + rank)
    bias.grad = _sparse_grad(ROWS[rank], (12,), seed=20 + rank)
    lonely.grad = _sparse_grad(ROWS_OF_ONE_RANK[rank], (12, 3), seed=30) if rank in ROWS_OF_ONE_RANK else None
    untouched.grad = _sparse_grad([], (12,), seed=40) if rank == 0 else None  # no rows anywhere: None on both
    dense.grad = torch.randn(2, 5, generator=torch.Generator().manual_seed(50 + rank))


def _check_sync(context: DistributedContext) -> None:
    rank = context.rank
    weight, bias, lonely, untouched, dense = (nn.Parameter(torch.zeros(shape))
                                              for shape in ((12, 3), (12,), (12, 3), (12,), (2, 5)))
    params = [weight, bias, lonely, untouched, dense]
    _set_grads(rank, *params)
    expected = []  # the oracle: each rank's dense gradient, summed by a dense all-reduce, divided by W
    for p in (weight, bias, lonely, dense):
        total = p.grad.to_dense().clone() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(total)
        expected.append(total / WORLD)

    sync = GradientSync(params, context, sparse=[weight, bias, lonely, untouched])
    sent = sync()

    for p, want, touched in zip((weight, bias, lonely), expected, ([1, 3, 5, 7, 9, 11],) * 2 + ([2],), strict=False):
        assert p.grad.is_sparse
        assert p.grad.coalesce().indices()[0].tolist() == touched  # only the touched rows, each once
        torch.testing.assert_close(p.grad.to_dense(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dense.grad, expected[3], rtol=1e-6, atol=1e-6)
    assert untouched.grad is None
    # the dense gradient (2×5 float32: 40 bytes) goes to the all-reduce; the all-gather's buffer: a header of 5 codes
    # and the total (6 int64: 48 bytes), then 8-byte aligned int64 rows and float32 values: rank 0 weight 3 rows
    # (24 + 36 → 40), bias 3 (24 + 12 → 16), lonely 1 (8 + 12 → 16), untouched 0: 176 bytes; rank 1 weight 4 rows
    # (32 + 48), bias 4 (32 + 16): 176 bytes. The first step gathers the header alone, learns the sizes and gathers
    # again at 176 + 176 // 8 = 198 → 200 (8-aligned).
    assert sent == 40 + 48 + 200 and sync.capacity == 200
    _set_grads(rank, *params)
    assert sync() == 40 + 200  # the next step: one all-reduce and one all-gather


def test_gradient_sync_equals_dense_all_reduce_mean():
    _spawn(_check_sync)


def _check_dense_fallback(context: DistributedContext, listed_sparse: bool) -> None:
    p = nn.Parameter(torch.zeros(6, 2))
    dense = torch.arange(12.0).view(6, 2) * (context.rank + 1)
    p.grad = dense if context.rank == 0 else dense.to_sparse(1)  # a tied embedding under the full softmax
    sync_gradients([p], context, sparse=[p] if listed_sparse else [])  # in the all-gather, or in the all-reduce
    assert not p.grad.is_sparse
    torch.testing.assert_close(p.grad, torch.arange(12.0).view(6, 2) * 1.5)  # (1 + 2) / 2


@pytest.mark.parametrize("listed_sparse", [True, False])
def test_dense_and_sparse_gradients_of_one_parameter_average_densely(listed_sparse):
    _spawn(_check_dense_fallback, listed_sparse)


def _check_overlap(context: DistributedContext) -> None:
    torch.manual_seed(0)  # the same parameters on both ranks
    first, second = nn.Linear(3, 4), nn.Linear(4, 2)
    only_rank0, late = nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(2))  # late: the first bucket
    params = [*first.parameters(), *second.parameters(), only_rank0, late]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(context.rank))

    def backward(use_late: bool) -> None:
        out = second(torch.tanh(first(x)))
        extra = out.sum() * (only_rank0.sum() + (late.sum() if use_late else 0)) if context.rank == 0 else 0
        (out.square().sum() + extra).backward()

    def oracle(use_late: bool) -> list[torch.Tensor | None]:
        """Each gradient (zeros where missing) summed by its own all-reduce, over W; None where no rank had one."""
        backward(use_late)
        means = []
        for p in params:
            total = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(total)
            given = torch.tensor([float(p.grad is not None)])
            dist.all_reduce(given)
            means.append(total / WORLD if given.item() else None)
            p.grad = None
        return means

    sync = GradientSync(params, context, bucket_bytes=1)  # one bucket per parameter, in reverse order
    assert [len(b) for b in sync.buckets] == [1] * 6 and sync.buckets[0][0] is late
    for use_late in (False, True):
        expected = oracle(use_late)
        sync.arm()
        backward(use_late)
        # buckets start in order as they fill: none while the first (``late``) is empty on a rank, all during
        # the backward pass on rank 0 once its loss uses ``late``; the rest start in the sync, in the same order
        assert sync.in_flight == (6 if use_late and context.rank == 0 else 0)
        sync()
        assert sync.in_flight == 0
        for p, want in zip(params, expected, strict=True):
            if want is None:
                assert p.grad is None  # no rank gave ``late`` a gradient: None everywhere, as in one process
            else:
                torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=1e-6)
            p.grad = None


def test_dense_buckets_start_during_backward_in_the_same_order_on_every_rank():
    _spawn(_check_overlap)


def _check_collective_decisions(context: DistributedContext) -> None:
    assert context.any(context.rank == 1) and not context.any(False)  # rank 1 out of time: both stop
    assert context.mean(torch.tensor([1.0, 4.0]) * (context.rank + 1)).tolist() == [1.5, 6.0]
    assert context.broadcast_object({"lr": 0.1 * (context.rank + 1)}) == {"lr": 0.1}  # rank 0's decision
    state = torch.full((2, 1, 3), float(context.rank))  # (layers, B/W, H): this rank's rows
    assert gather_state(state, context)[:, :, 0].tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_decisions_and_means_are_taken_over_all_ranks():
    _spawn(_check_collective_decisions)


# --- (b) a tiny LM with the recipe's defaults on 2 ranks = one process on the global batch -----------------------
def _tiny_lm(seed: int, loss: str = "nce", tie: bool = True, sharing: str = RECIPE.noise_sharing,
             selfnorm: float = 0.0, norm: str = "auto") -> RNNLM:
    torch.manual_seed(seed)
    counts = torch.arange(V, 0, -1).float()  # a Zipf-like unigram
    output = SampledOutput(in_features=HIDDEN, vocab_size=V, noise=counts, loss=loss, noise_ratio=K, norm=norm,
                           noise_sharing=sharing, selfnorm_weight=selfnorm, selfnorm_positions=5)
    return RNNLM(V, output, emb_size=HIDDEN, hidden_size=HIDDEN, num_layers=2, dropout=0.0, cell="lstm",
                 tie_weights=tie, dropout_embedding=RECIPE.dropout_embedding,
                 dropout_between=RECIPE.dropout_between, dropout_output=RECIPE.dropout_output,
                 locked_dropout=RECIPE.locked_dropout)


def _global_batches(rows: int) -> torch.Tensor:
    """(STEPS, rows, BPTT + 1) tokens: consecutive bptt chunks of `rows` streams, as concat batching gives."""
    stream = torch.randint(V, (rows, STEPS * BPTT + 1), generator=torch.Generator().manual_seed(7))
    return torch.stack([stream[:, s * BPTT : (s + 1) * BPTT + 1] for s in range(STEPS)])


def _one_process(model: RNNLM, batches: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """The oracle: the whole global batch in one process, dropout masks from a generator seeded per step."""
    optimizer = make_optimizer(model, "adam", lr=0.05, sparse=model.sparse_parameters())
    noise, masks, state, losses = torch.Generator().manual_seed(3), torch.Generator(), None, []
    model.shard_dropout(masks)  # one shard: the whole batch
    for step, chunk in enumerate(batches):
        masks.manual_seed(step_seed(SEED, step))
        loss, state = model.loss(chunk[:, :-1], chunk[:, 1:], state, generator=noise)
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses, noise.get_state()


def _check_training(context: DistributedContext, out: Path, case: dict, micro_batches: int) -> None:
    model = _tiny_lm(context.rank, **case)  # rank 1 starts elsewhere: DistributedLM gives it rank 0's parameters
    parallel = DistributedLM(model, context)
    optimizer = make_optimizer(model, "adam", lr=0.05, sparse=model.sparse_parameters())
    noise, state, losses = torch.Generator().manual_seed(3), None, []
    for step, chunk in enumerate(_global_batches(ROWS_FOR[micro_batches])):
        optimizer.zero_grad(set_to_none=True)
        loss, state = parallel.forward_backward(chunk[:, :-1], chunk[:, 1:], state, noise=noise,
                                                dropout_seed=step_seed(SEED, step), micro_batches=micro_batches)
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert_identical(model, context, [noise])
    torch.save({"state": model.state_dict(), "losses": losses, "noise": noise.get_state()}, out / f"{context.rank}.pt")


ROWS_FOR = {1: 2, 2: 8}  # global rows: one row per rank; 2 micro-batches of 2 rows per rank
CASES = {
    "noise per sequence, one row per rank": ({}, 1),
    "self-normalisation penalty": ({"selfnorm": 0.5}, 1),
    "full softmax, learned norm (unused)": ({"loss": "full", "norm": "learn"}, 1),
    "sampled softmax untied, shared noise": ({"loss": "sampled", "tie": False, "sharing": "batch"}, 1),
    "gradient accumulation": ({"selfnorm": 0.5}, 2),
}


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_train_like_one_process_with_dropout_and_noise_on(tmp_path, name):
    case, micro_batches = CASES[name]
    single = _tiny_lm(0, **case)
    single_losses, single_noise = _one_process(single, _global_batches(ROWS_FOR[micro_batches]))
    _spawn(_check_training, tmp_path, case, micro_batches)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]

    for name, value in single.state_dict().items():
        # float32 sums in another order (shard-sized products, a gathered sum) differ by ~1e-7 relative per
        # step; Adam's steps of 0.05 carry that along for STEPS steps
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # each rank returns its token-weighted share: their mean is the global batch's loss
    shard_mean = torch.tensor([ranks[0]["losses"], ranks[1]["losses"]]).mean(0)
    torch.testing.assert_close(shard_mean, torch.tensor(single_losses), rtol=1e-5, atol=0)
    assert torch.equal(ranks[0]["noise"], single_noise)  # the noise stream advanced exactly as one process's
    assert single.output.weight.ne(_tiny_lm(0, **case).output.weight).any()  # training moved it


def _sentence_masks(rows: int) -> torch.Tensor:
    """Unequal sentences: rank 0's rows hold 2·BPTT tokens, rank 1's one real row of 1 token and a padded row."""
    mask = torch.zeros(rows, BPTT, dtype=torch.bool)
    mask[:2, :] = True
    mask[2, :1] = True
    return mask


def _check_masked_step(context: DistributedContext, out: Path) -> None:
    model = _tiny_lm(seed=0)
    parallel = DistributedLM(model, context)
    chunk = _global_batches(3)[0]  # 3 real rows: padded to 4 with a fully masked row
    parallel.forward_backward(chunk[:, :-1], chunk[:, 1:], None, _sentence_masks(3),
                              noise=torch.Generator().manual_seed(3), dropout_seed=step_seed(SEED, 0))
    torch.save({name: p.grad.to_dense() for name, p in model.named_parameters()}, out / f"grad{context.rank}.pt")


def test_padded_unequal_sentence_shards_give_the_global_token_mean_gradient(tmp_path):
    _spawn(_check_masked_step, tmp_path)
    grads = torch.load(tmp_path / "grad0.pt")
    single, masks = _tiny_lm(seed=0), torch.Generator()
    single.shard_dropout(masks.manual_seed(step_seed(SEED, 0)))
    chunk = _global_batches(3)[0]
    loss, _ = single.loss(chunk[:, :-1], chunk[:, 1:], None, _sentence_masks(3),
                          generator=torch.Generator().manual_seed(3))
    loss.backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(grads[name], p.grad.to_dense(), rtol=1e-5, atol=1e-7, msg=name)


def test_dropout_between_layers_run_one_by_one_is_nn_lstm_without_it():
    """The layer-by-layer stack (used in training to own the mask between layers) computes nn.LSTM's function:
    with the mask forced to ones it equals the module's own multi-layer call, state included."""
    model = _tiny_lm(seed=0).train()
    model.drop_between.p = 1e-12  # active, but keeps every unit (scale 1 / (1 − 1e-12))
    x, state = torch.randn(3, BPTT, HIDDEN), (torch.randn(2, 3, HIDDEN), torch.randn(2, 3, HIDDEN))
    by_layer, by_layer_state = model._layer_by_layer(x, state)
    whole, whole_state = model.rnn(x, state)
    torch.testing.assert_close(by_layer, whole)
    for a, b in zip(by_layer_state, whole_state, strict=True):
        torch.testing.assert_close(a, b)


def _check_identity_test(context: DistributedContext) -> None:
    model, noise = _tiny_lm(seed=0), torch.Generator().manual_seed(5)
    assert_identical(model, context, [noise])
    if context.rank == 1:
        noise.manual_seed(6)
    with pytest.raises(RuntimeError, match="different values of generator 0"):
        assert_identical(model, context, [noise])
    if context.rank == 1:
        with torch.no_grad():
            model.rnn.bias_hh_l0[3] = torch.nextafter(model.rnn.bias_hh_l0[3], torch.tensor(1.0))  # one ulp
    with pytest.raises(RuntimeError, match=r"different values of rnn\.bias_hh_l0 \("):
        assert_identical(model, context)


def test_assert_identical_finds_a_one_ulp_difference():
    _spawn(_check_identity_test)


# --- (c) the global batch must split evenly ---------------------------------------------------------------
def test_shard_rows_splits_the_global_batch_in_order():
    batch = torch.arange(12).view(6, 2)
    assert shard_rows(batch, 0, 3).tolist() == [[0, 1], [2, 3]]
    assert shard_rows(batch, 2, 3).tolist() == [[8, 9], [10, 11]]


@pytest.mark.parametrize(("batch_size", "world_size"), [(5, 2), (20, 3), (2, 4), (0, 1)])
def test_batch_not_divisible_by_world_size_is_a_value_error(batch_size, world_size):
    with pytest.raises(ValueError, match="multiple of the world size"):
        check_global_batch(batch_size, world_size)
    with pytest.raises(ValueError, match="multiple of the world size"):
        shard_rows(torch.zeros(batch_size, 3), 0, world_size)


def test_without_torchrun_the_context_is_one_process(monkeypatch):
    for name in _environ(0, 1):
        monkeypatch.delenv(name, raising=False)
    context = DistributedContext.from_env("cpu")
    assert (context.rank, context.world_size, context.is_main, context.backend) == (0, 1, True, None)
    assert context.any(True) and not context.any(False) and context.broadcast_object("x") == "x"
    value = torch.tensor([2.0])
    assert context.mean(value) is value and context.all_gather(value).tolist() == [[2.0]]


def test_incomplete_torchrun_environment_or_mps_is_a_value_error(monkeypatch):
    for name, value in _environ(0, 1).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="cuda .* or cpu"):
        DistributedContext.from_env("mps")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ValueError, match="MASTER_ADDR not set"):
        DistributedContext.from_env("cpu")


# --- failures: the other rank exits with a clear message instead of hanging -------------------------------------
def _rank_that_fails(rank: int, port: int, timeout_s: float, how: str, report: Path) -> None:
    torch.set_num_threads(1)
    os.environ.update(_environ(rank, port))
    deadline = time.perf_counter() + timeout_s + 10
    with DistributedContext.from_env("cpu", timedelta(seconds=timeout_s)) as context:
        if rank == 1:
            if how == "raise":
                raise ValueError("rank 1 fails on purpose")
            while not report.exists() and time.perf_counter() < deadline:  # alive, never in the collective
                time.sleep(0.05)
            return
        start = time.perf_counter()
        p = nn.Parameter(torch.zeros(4, 2))
        p.grad = torch.ones(4, 2).to_sparse(1)
        try:
            sync_gradients([p], context)
        except RuntimeError as error:
            report.write_text(f"{time.perf_counter() - start:.2f}\n{error}")


@pytest.mark.parametrize("how", ["raise", "stall"])
def test_a_failed_or_stalled_rank_makes_the_other_raise(tmp_path, how):
    timeout_s = 60.0 if how == "raise" else 2.0  # a crash is noticed at once, not after the timeout
    spawn, port, report = multiprocessing.get_context(START), _free_port(), tmp_path / "rank0.txt"
    ranks = [spawn.Process(target=_rank_that_fails, args=(r, port, timeout_s, how, report)) for r in range(WORLD)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=30)
    assert not any(process.is_alive() for process in ranks)
    seconds, message = report.read_text().split("\n", 1)
    assert message.startswith("rank 0 of 2: gradient all-gather failed; another rank has probably exited"), message
    assert float(seconds) < (10 if how == "raise" else timeout_s + 10)
    assert ranks[0].exitcode == 0 and ranks[1].exitcode == (1 if how == "raise" else 0)



# --- the backend's device: a stand-in for NCCL that refuses CPU tensors ---------------------------------------------
# NCCL serves only CUDA tensors. On a CPU-only machine, torch's lazy device (executed by TorchScript on the CPU)
# stands in for the GPU: "lazy:accelerator_only" gives every lazy tensor to a process group that refuses any
# other device, as NCCL refuses CPU tensors, and computes on copies with gloo.
class _Done(dist._Work):
    def wait(self, timeout=None) -> bool:
        return True


class AcceleratorOnlyGroup(dist.ProcessGroup):
    """gloo underneath; a RuntimeError for any tensor not on the lazy device (NCCL's CPU-tensor rule)."""

    def __init__(self, store, rank: int, size: int, timeout) -> None:
        super().__init__(rank, size)
        self.gloo = dist.ProcessGroupGloo(dist.PrefixStore("gloo", store), rank, size, timeout)

    def _on_cpu(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        for t in tensors:
            if t.device.type != "lazy":
                raise RuntimeError(f"no backend for device type {t.device.type} (the accelerator's backend)")
        return [t.cpu() for t in tensors]

    def _back(self, tensors: list[torch.Tensor], copies: list[torch.Tensor]) -> _Done:
        for t, c in zip(tensors, copies, strict=True):
            t.copy_(c.to(t.device))
        return _Done()

    def allreduce(self, tensors, opts):
        copies = self._on_cpu(tensors)
        self.gloo.allreduce(copies, opts).wait()
        return self._back(tensors, copies)

    def all_gather_single(self, output, input, opts=None):
        out, (local,) = self._on_cpu([output])[0], self._on_cpu([input])
        self.gloo._allgather_base(out, local).wait()
        return self._back([output], [out])

    def broadcast(self, tensors, opts):
        copies = self._on_cpu(tensors)
        self.gloo.broadcast(copies, opts).wait()
        return self._back(tensors, copies)

    def barrier(self, opts=None):
        self.gloo.barrier().wait()
        return _Done()

    def getBackendName(self) -> str:
        return "accelerator_only"


def _accelerator_entry(rank: int, port: int, check, args) -> None:
    import torch._lazy.ts_backend

    torch.set_num_threads(1)
    torch._lazy.ts_backend.init()
    dist.Backend.register_backend("accelerator_only", AcceleratorOnlyGroup, devices=["lazy"])
    dist.init_process_group("lazy:accelerator_only", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    check(DistributedContext(rank, WORLD, rank, torch.device("lazy"), "accelerator_only"), *args)


def _check_collectives_on_the_accelerator(context: DistributedContext) -> None:
    with pytest.raises(RuntimeError, match="no backend for device type cpu"):  # the stand-in refuses the CPU
        dist.all_reduce(torch.zeros(1))
    with pytest.raises(RuntimeError, match=r"^rank \d of 2: probe failed on this rank \(accelerator_only on lazy"):
        context.run("probe", lambda: dist.all_reduce(torch.zeros(1)))  # not blamed on another rank
    seconds = torch.tensor(10.0 + context.rank)  # a CPU clock reading, as the loop's time budget averages it
    assert context.mean(seconds).item() == 10.5
    assert context.any(context.rank == 0) and not context.any(False)
    assert context.broadcast_object(["cut lr", context.rank]) == ["cut lr", 0]
    context.barrier()
    state = (torch.full((1, 1, 2), float(context.rank)),) * 2  # CPU recurrent state rows, (layers, B/W, H)
    assert gather_state(state, context)[0][0, :, 0].tolist() == [0.0, 1.0]
    dense, rows = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4, 2))
    dense.grad = torch.full((3,), float(context.rank))
    rows.grad = torch.sparse_coo_tensor(torch.tensor([[context.rank]]), torch.ones(1, 2), (4, 2))
    sync_gradients([dense, rows], context, sparse=[rows])  # an all-reduce and an all-gather
    assert dense.grad.tolist() == [0.5] * 3 and rows.grad.to_dense()[:2, 0].tolist() == [0.5, 0.5]
    p = nn.Parameter(torch.full((2,), float(context.rank)))
    context.broadcast_(p.data)
    assert p.tolist() == [0.0, 0.0]


def test_every_collective_runs_on_the_backends_device():
    pytest.importorskip("torch._lazy.ts_backend")
    mp.start_processes(_accelerator_entry, args=(_free_port(), _check_collectives_on_the_accelerator, ()),
                       nprocs=WORLD, start_method=START)


# --- under torchrun itself --------------------------------------------------------------------------------------
TORCHRUN_SCRIPT = '''
import sys, time, torch
from ebm.harness.context import DistributedContext
from ebm.lm.distributed import sync_gradients
with DistributedContext.from_env("cpu") as context:
    if sys.argv[1] == "fail" and context.rank == 0:
        raise ValueError("rank 0 fails on purpose")
    if sys.argv[1] == "fail":
        time.sleep(120)  # busy outside any collective: only torchrun can stop it
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.sparse_coo_tensor(torch.tensor([[context.rank]]), torch.ones(1, 2), (4, 2), check_invariants=True)
    sync_gradients([p], context)
    print(f"rank {context.rank} of {context.world_size}: {p.grad.to_dense()[:2, 0].tolist()}")
'''


def _torchrun(script: Path, mode: str) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), str(script), mode]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=100,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


@pytest.mark.slow
def test_torchrun_runs_the_ranks_and_stops_them_all_when_one_fails(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(TORCHRUN_SCRIPT)
    code, output, _ = _torchrun(script, "sync")
    assert code == 0, output
    for rank in range(WORLD):
        assert f"rank {rank} of 2: [0.5, 0.5]" in output  # rows 0 and 1, each touched by one rank: 1 / W
    code, output, seconds = _torchrun(script, "fail")
    assert code != 0 and "ValueError: rank 0 fails on purpose" in output
    assert seconds < 60  # the sleeping rank was stopped by torchrun, not left to finish its 120 s
