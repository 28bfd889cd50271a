"""The LM training loop under torchrun's environment: 2 gloo ranks on the CPU against one process.

Oracle: one process training on the same global batches with the recipe's dropout and noise per sequence on:
the ranks draw the masks and noise of the whole global batch and keep their rows, so the only difference is the
order of floating-point sums across shards. The ranks are forked on Linux, spawned elsewhere.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys

import pytest
import torch
import torch._dynamo  # noqa: F401  (imported lazily by torch.optim: once here, not in every rank)
import torch.multiprocessing as mp

import ebm.harness.loop as loop_module
import ebm.lm.task as lm_task
from ebm.lm.train import LMConfig, load_lm, train_lm
from ebm.utils import read_metrics

WORLD = 2
START = "fork" if sys.platform == "linux" else "spawn"
TINY = dict(synthetic_vocab=30, synthetic_tokens=4000, emb_size=16, hidden_size=16, batch_size=8, bptt=10,
            noise_ratio=10, lr=1e-2, progress=False, threads=1, dist_timeout=60.0, num_layers=2)  # dropout: defaults


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, configs: list[LMConfig], fake_clock: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if fake_clock:  # every reading of the clock advances it by one second, the same on every rank
        now = iter(range(10**6))
        loop_module._now = lambda: float(next(now))
    for config in configs:
        train_lm(config)


def _on_two_ranks(*configs: LMConfig, fake_clock: bool = False) -> None:
    mp.start_processes(_rank, args=(_free_port(), list(configs), fake_clock), nprocs=WORLD, start_method=START)


def _config(path, **changes) -> LMConfig:
    return LMConfig(**{**TINY, "out": str(path), **changes})


def _parameters(path) -> dict[str, torch.Tensor]:
    return load_lm(path).model.state_dict()


def _assert_close_runs(a, b, rtol=1e-4):
    pa, pb = _parameters(a), _parameters(b)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=rtol, atol=1e-5, msg=name)
    final_a, final_b = read_metrics(a / "metrics.jsonl")[-1], read_metrics(b / "metrics.jsonl")[-1]
    assert final_a["test_ppl"] == pytest.approx(final_b["test_ppl"], rel=rtol)


@pytest.mark.parametrize("batch_mode", ["concat", "sentence"])
def test_two_ranks_train_as_one_process_on_the_global_batch(tmp_path, batch_mode):
    # sentence mode: batch 8 over ~13 sentences leaves a last batch of 5 rows, padded with masked rows for 2 ranks
    changes = dict(epochs=2, batch_mode=batch_mode, bptt=10 if batch_mode == "concat" else 0,
                   synthetic_tokens=4000 if batch_mode == "concat" else 1000)
    _on_two_ranks(_config(tmp_path / "two", **changes))
    train_lm(_config(tmp_path / "one", **changes))
    _assert_close_runs(tmp_path / "two", tmp_path / "one")
    records = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 2] and records[-1]["world_size"] == WORLD  # rank 0 alone wrote


def test_one_row_per_rank_with_the_selfnorm_penalty_under_plateau_trains_as_one_process(tmp_path):
    """Noise per sequence with one sequence per rank, the penalty's token sample and plateau lr cuts."""
    changes = dict(epochs=2, batch_size=WORLD, synthetic_tokens=1500, selfnorm_weight=0.5, selfnorm_positions=4,
                   schedule="plateau", lr_decay=0.5)
    _on_two_ranks(_config(tmp_path / "two", **changes))
    train_lm(_config(tmp_path / "one", **changes))
    _assert_close_runs(tmp_path / "two", tmp_path / "one")


def test_full_softmax_with_a_learned_norm_trains_on_two_ranks(tmp_path):
    """The full softmax never uses the norm: no rank has its gradient, and it stays at log V as in one process."""
    changes = dict(epochs=1, loss="full", norm="learn")
    _on_two_ranks(_config(tmp_path / "two", **changes))
    train_lm(_config(tmp_path / "one", **changes))
    _assert_close_runs(tmp_path / "two", tmp_path / "one")


def test_a_run_stopped_in_one_process_resumes_on_two(tmp_path):
    plateau = dict(epochs=2, schedule="plateau")  # a cosine over the time budget would differ from one over steps
    now = iter(range(10**6))
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(loop_module, "_now", lambda: float(next(now)))
        train_lm(_config(tmp_path / "mixed", time_budget=30.0, log_interval=1, **plateau))
    assert torch.load(tmp_path / "mixed" / "checkpoint.pt", weights_only=True)["position"]["epoch_step"] > 0
    _on_two_ranks(_config(tmp_path / "mixed", resume=True, **plateau))
    train_lm(_config(tmp_path / "one", **plateau))
    _assert_close_runs(tmp_path / "mixed", tmp_path / "one")


def test_time_budget_stops_every_rank_and_resumes_mid_epoch(tmp_path):
    """A stop mid-epoch keeps the recurrent state of every rank's rows; one process can resume it."""
    plateau = dict(epochs=2, schedule="plateau")  # a cosine over the time budget would differ from one over steps
    _on_two_ranks(_config(tmp_path / "cut", time_budget=12.0, log_interval=1, **plateau), fake_clock=True)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch_step"] > 0 and state["hidden"][0].shape[1] == TINY["batch_size"]
    train_lm(_config(tmp_path / "cut", resume=True, **plateau))
    train_lm(_config(tmp_path / "one", **plateau))
    _assert_close_runs(tmp_path / "cut", tmp_path / "one")


def _expect_error(rank: int, port: int, config: LMConfig, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        train_lm(config)
    except ValueError as error:
        queue.put(str(error))


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_any_work(tmp_path):
    queue = multiprocessing.get_context(START).SimpleQueue()
    mp.start_processes(_expect_error, args=(_free_port(), _config(tmp_path / "r", batch_size=5), queue),
                       nprocs=WORLD, start_method=START)
    messages = [queue.get() for _ in range(WORLD)]
    assert all("global batch size 5 must be a positive multiple of the world size 2" in m for m in messages)
    assert not (tmp_path / "r").exists()


def _dying_rank(rank: int, port: int, config: LMConfig, die_at_step: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    real_step, calls = lm_task.LMTask.step, []

    def step(*args, **kwargs):
        calls.append(1)
        if rank == 1 and len(calls) == die_at_step:
            raise MemoryError("rank 1 ran out of memory")  # a rank that dies mid-epoch
        return real_step(*args, **kwargs)

    lm_task.LMTask.step = step
    try:
        train_lm(config)
    except BaseException as error:  # noqa: BLE001 - report what each rank saw, then fail as a rank would
        queue.put((rank, type(error).__name__, str(error)))
        raise


def test_a_rank_that_dies_stops_the_others_and_keeps_the_last_checkpoint(tmp_path):
    config = _config(tmp_path / "run", epochs=3, log_interval=1, dist_timeout=20.0)
    steps_per_epoch = 4000 // TINY["batch_size"] // TINY["bptt"]  # about 49: die early in epoch 2
    queue = multiprocessing.get_context(START).SimpleQueue()
    # Each rank is awaited on its own: start_processes' join would SIGTERM rank 0 as soon as rank 1 fails,
    # before rank 0 can show that it stops by itself.
    ranks = mp.start_processes(_dying_rank, args=(_free_port(), config, steps_per_epoch + 3, queue), nprocs=WORLD,
                               start_method=START, join=False)
    for process in ranks.processes:
        process.join(timeout=120)
    exit_codes = [process.exitcode for process in ranks.processes]
    for process in ranks.processes:
        if process.is_alive():
            process.kill()
    assert exit_codes == [1, 1]  # both stopped by themselves, neither hangs
    seen = {}
    while not queue.empty():
        rank, kind, message = queue.get()
        seen[rank] = (kind, message)
    assert seen[1][0] == "MemoryError"
    assert seen[0][0] == "RuntimeError" and "rank 0 of 2" in seen[0][1]  # named, not a silent hang
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"epoch": 1, "epoch_step": 0, "step": state["position"]["step"]}
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]
