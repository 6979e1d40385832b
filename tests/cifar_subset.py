"""The real CIFAR-10 subset in ../shared/data, read directly (tests skip where it is absent)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

# ../shared/data from the project root, or wherever ROBUSTODE_CIFAR10_DIR points
CIFAR_DIR = Path(
    os.environ.get(
        "ROBUSTODE_CIFAR10_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py",
    )
)


def cifar_train_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of data_batch_1 in [0, 1], NCHW float32, with labels."""
    path = CIFAR_DIR / "data_batch_1"
    if not path.is_file():
        pytest.skip(
            f"no CIFAR-10 subset at {CIFAR_DIR} (../shared/data, or set ROBUSTODE_CIFAR10_DIR)"
        )
    with path.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    x = torch.tensor(batch["data"][:n]).view(-1, 3, 32, 32).float() / 255
    return x, torch.tensor(batch["labels"][:n])
