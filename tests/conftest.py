"""Shared test set-up: a headless matplotlib backend, one intra-op thread, and a fixed seed for every test.

The tests use tiny tensors, for which a second OpenMP thread costs more than it gives (about ten times more
whenever another process holds the other core), so the whole suite runs single-threaded.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from ebm.utils import seed_everything  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    seed_everything(1234)
