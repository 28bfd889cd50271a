"""Data-parallel training pieces (ebm.lm.distributed), checked with 2 gloo processes on the CPU.

Oracles: a dense all-reduce of the same gradients (the mean DDP would give); a single process training on the
whole global batch; hand-written row ranges, byte counts and means.

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

from ebm.lm.distributed import (
    DistributedContext,
    DistributedLM,
    assert_identical,
    check_global_batch,
    global_mean_weight,
    shard_rows,
    sync_sparse_gradients,
)
from ebm.lm.models import RNNLM
from ebm.lm.optim import clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput

WORLD = 2
START = "fork" if sys.platform == "linux" else "spawn"  # fork: the ranks skip importing torch again (seconds)
V, HIDDEN, K = 50, 8, 10  # the tiny language model
BATCH, BPTT, STEPS = 4, 6, 4  # global batch rows, tokens per row and step, optimiser steps


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


# --- (a) sparse rows: equal to a dense all-reduce ------------------------------------------------------------
# rows per rank: 3 is touched by both ranks, 1 and 5 by rank 0 only, 7, 9 and 11 by rank 1 only; 3 (rank 0) and
# 7 (rank 1) repeat within a rank; after coalescing the ranks send 3 and 4 rows, so the gather pads.
ROWS = {0: [1, 3, 3, 5], 1: [3, 7, 11, 7, 9, 7]}
ROWS_OF_ONE_RANK = {0: [2, 2]}  # rank 1 has no gradient at all for this parameter


def _sparse_grad(rows: list[int], shape: tuple[int, ...], seed: int) -> torch.Tensor:
    values = torch.randn((len(rows), *shape[1:]), generator=torch.Generator().manual_seed(seed))
    rows = torch.tensor([rows], dtype=torch.int64)  # (1, n), duplicates kept: the tensor is not coalesced
    return torch.sparse_coo_tensor(rows, values, shape, check_invariants=True)


def _check_sparse_sync(context: DistributedContext) -> None:
    rank = context.rank
    weight, bias, lonely, untouched = (nn.Parameter(torch.zeros(shape)) for shape in ((12, 3), (12,), (12, 3), (12,)))
    weight.grad = _sparse_grad(ROWS[rank], (12, 3), seed=10 + rank)
    bias.grad = _sparse_grad(ROWS[rank], (12,), seed=20 + rank)
    if rank in ROWS_OF_ONE_RANK:
        lonely.grad = _sparse_grad(ROWS_OF_ONE_RANK[rank], (12, 3), seed=30)
        untouched.grad = _sparse_grad([], (12,), seed=40)  # no rows here, no gradient on rank 1: None on both
    # the oracle: each rank's dense gradient, summed by a dense all-reduce, divided by W
    expected = []
    for p in (weight, bias, lonely):
        dense = p.grad.to_dense() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(dense)
        expected.append(dense / WORLD)

    sent = sync_sparse_gradients([weight, bias, lonely, untouched], context)

    for p, want, touched in zip((weight, bias, lonely), expected, ([1, 3, 5, 7, 9, 11], [1, 3, 5, 7, 9, 11], [2]),
                                strict=True):
        assert p.grad.is_sparse
        assert p.grad.coalesce().indices()[0].tolist() == touched  # only the touched rows, each once
        torch.testing.assert_close(p.grad.to_dense(), want, rtol=1e-6, atol=1e-6)
    assert untouched.grad is None
    # the sizes (4 params, int64), then max_r n_r rows per param, each an int64 index and its float32 values:
    # 4 rows for weight (3 floats) and bias (1 float), 1 for lonely (rank 1 pads a row it does not have)
    assert sent == 4 * 8 + 4 * (8 + 3 * 4) + 4 * (8 + 4) + 1 * (8 + 3 * 4)


def test_sparse_sync_equals_dense_all_reduce_mean():
    _spawn(_check_sparse_sync)


def _check_dense_fallback(context: DistributedContext) -> None:
    p = nn.Parameter(torch.zeros(6, 2))
    dense = torch.arange(12.0).view(6, 2) * (context.rank + 1)
    p.grad = dense if context.rank == 0 else dense.to_sparse(1)  # a tied embedding under the full softmax
    sync_sparse_gradients([p], context)
    assert not p.grad.is_sparse
    torch.testing.assert_close(p.grad, torch.arange(12.0).view(6, 2) * 1.5)  # (1 + 2) / 2


def test_dense_gradient_on_one_rank_is_all_reduced_densely():
    _spawn(_check_dense_fallback)


def _check_collective_decisions(context: DistributedContext) -> None:
    assert context.any(context.rank == 1) and not context.any(False)  # rank 1 out of time: both stop
    assert context.mean(torch.tensor([1.0, 4.0]) * (context.rank + 1)).tolist() == [1.5, 6.0]
    assert global_mean_weight(3 if context.rank == 0 else 1, context) == (1.5 if context.rank == 0 else 0.5)


def test_decisions_and_means_are_taken_over_all_ranks():
    _spawn(_check_collective_decisions)


# --- (b) a tiny RNNLM on 2 ranks = one process on the global batch -------------------------------------------
def _tiny_lm(seed: int, loss: str = "nce", tie: bool = False) -> RNNLM:
    torch.manual_seed(seed)
    counts = torch.arange(V, 0, -1).float()  # a Zipf-like unigram
    output = SampledOutput(in_features=HIDDEN, vocab_size=V, noise=counts, loss=loss, noise_ratio=K)
    return RNNLM(V, output, emb_size=HIDDEN, hidden_size=HIDDEN, num_layers=1, dropout=0.0, cell="lstm",
                 tie_weights=tie)


def _global_batches() -> torch.Tensor:
    """(STEPS, BATCH, BPTT + 1) tokens: consecutive bptt chunks of BATCH streams, as concat batching gives."""
    stream = torch.randint(V, (BATCH, STEPS * BPTT + 1), generator=torch.Generator().manual_seed(7))
    return torch.stack([stream[:, s * BPTT : (s + 1) * BPTT + 1] for s in range(STEPS)])


def _train(model: RNNLM, loss_fn, sync, batches: torch.Tensor) -> list[float]:
    """STEPS Adam + SparseAdam steps with clipping; the noise generator has the same seed wherever it runs."""
    optimizer = make_optimizer(model, "adam", lr=0.05, sparse=model.sparse_parameters())
    noise, state, losses = torch.Generator().manual_seed(3), None, []
    for chunk in batches:
        loss, state = loss_fn(chunk[:, :-1], chunk[:, 1:], state, generator=noise)
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def _check_training(context: DistributedContext, out: Path, loss: str, tie: bool) -> None:
    model = _tiny_lm(context.rank, loss, tie)  # rank 1 starts elsewhere: DistributedLM gives it rank 0's parameters
    parallel = DistributedLM(model, context)
    shards = shard_rows(_global_batches().transpose(0, 1), context.rank, WORLD).transpose(0, 1)
    losses = _train(model, parallel.loss, parallel.sync_sparse_gradients, shards)
    assert_identical(model, context)
    torch.save({"state": model.state_dict(), "losses": losses}, out / f"rank{context.rank}.pt")


# sparse rows: input embedding, output embedding and bias (nce, sampled); the output layer dense under DDP and
# the embedding by rows (full); one tied matrix by rows (tied nce) or dense in the row sync (tied full)
@pytest.mark.parametrize(("loss", "tie"), [("nce", False), ("sampled", False), ("full", False), ("nce", True),
                                           ("full", True)])
def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path, loss, tie):
    single = _tiny_lm(0, loss, tie)
    single_losses = _train(single, single.loss, lambda: None, _global_batches())
    _spawn(_check_training, tmp_path, loss, tie)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, value in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name  # the same bits on both
        # float32 sums in another order (B/2-row products, a gathered sum of shards) differ by ~1e-7
        # relative per step; Adam's steps of 0.05 carry that along for STEPS steps
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # the shared noise draw: the global batch's loss is the mean of the shards' (equal-sized) losses
    shard_mean = torch.tensor([ranks[0]["losses"], ranks[1]["losses"]]).mean(0)
    torch.testing.assert_close(shard_mean, torch.tensor(single_losses), rtol=1e-5, atol=0)
    assert single.output.weight.ne(_tiny_lm(0, loss, tie).output.weight).any()  # training moved it


def _check_masked_weight(context: DistributedContext, out: Path) -> None:
    model = _tiny_lm(seed=0)
    parallel = DistributedLM(model, context)
    chunk = _global_batches()[0]
    input, target = (shard_rows(x, context.rank, WORLD) for x in (chunk[:, :-1], chunk[:, 1:]))
    mask = shard_rows(_masks(), context.rank, WORLD)
    loss, _ = parallel.loss(input, target, None, mask, generator=torch.Generator().manual_seed(3))
    (loss * global_mean_weight(int(mask.sum()), context)).backward()
    # DDP has averaged the dense gradients during backward; the sparse rows are still this rank's own
    for name, p in model.named_parameters():
        grads = [torch.empty_like(p) for _ in range(WORLD)]
        dist.all_gather(grads, p.grad.to_dense())
        assert torch.equal(*grads) == (name.startswith("rnn.")), name
    parallel.sync_sparse_gradients()
    torch.save({name: p.grad.to_dense() for name, p in model.named_parameters()}, out / f"grad{context.rank}.pt")


def _masks() -> torch.Tensor:
    mask = torch.zeros(BATCH, BPTT, dtype=torch.bool)
    mask[:2, :] = True  # rank 0's shard: 12 tokens
    mask[2, :1] = True  # rank 1's shard: 1 token
    return mask


def test_token_weight_makes_unequal_masked_shards_average_to_the_global_mean(tmp_path):
    _spawn(_check_masked_weight, tmp_path)
    grads = torch.load(tmp_path / "grad0.pt")
    single = _tiny_lm(seed=0)
    chunk = _global_batches()[0]
    loss, _ = single.loss(chunk[:, :-1], chunk[:, 1:], None, _masks(), generator=torch.Generator().manual_seed(3))
    loss.backward()
    for name, p in single.named_parameters():
        torch.testing.assert_close(grads[name], p.grad.to_dense(), rtol=1e-5, atol=1e-7, msg=name)


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
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    assert context.any(True) and not context.any(False)


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
            sync_sparse_gradients([p], context)
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
    assert message.startswith("rank 0 of 2: sparse gradient sizes failed; another rank has probably exited")
    assert float(seconds) < (10 if how == "raise" else timeout_s + 10)
    assert ranks[0].exitcode == 0 and ranks[1].exitcode == (1 if how == "raise" else 0)



# --- under torchrun itself --------------------------------------------------------------------------------------
TORCHRUN_SCRIPT = '''
import sys, time, torch
from ebm.lm.distributed import DistributedContext, sync_sparse_gradients
with DistributedContext.from_env("cpu") as context:
    if sys.argv[1] == "fail" and context.rank == 0:
        raise ValueError("rank 0 fails on purpose")
    if sys.argv[1] == "fail":
        time.sleep(120)  # busy outside any collective: only torchrun can stop it
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.sparse_coo_tensor(torch.tensor([[context.rank]]), torch.ones(1, 2), (4, 2), check_invariants=True)
    sync_sparse_gradients([p], context)
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
