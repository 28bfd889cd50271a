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


@pytest.fixture
def crash_at_second_save(monkeypatch):
    """``crash(train)`` runs ``train()`` killed while writing its second checkpoint (KeyboardInterrupt, as a crash
    mid-write; the training code of both settings saves through ``RunFolder.save``), then restores the real save."""
    from ebm.harness import RunFolder

    real_save = RunFolder.save

    def crash(train):
        calls = []

        def crash_on_second_save(self, state):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            real_save(self, state)

        monkeypatch.setattr(RunFolder, "save", crash_on_second_save)
        with pytest.raises(KeyboardInterrupt):
            train()
        monkeypatch.setattr(RunFolder, "save", real_save)

    return crash
