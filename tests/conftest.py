"""Shared fixtures."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two contended OpenMP threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    """Every test starts from the same global RNG state, whichever tests ran before it.

    A model built with ``nn.Linear(...)`` draws its weights from the global RNG; without this
    a test's case depended on the order the suite ran in (CI runs both tiers in one process).
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
