"""Shared test set-up: a headless matplotlib backend and a fixed seed for every test."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from ebm.utils import seed_everything  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    seed_everything(1234)
