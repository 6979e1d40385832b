"""The real CIFAR-10 subset in ../shared/data, read directly (tests skip where it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from robustode.data import load_dataset

# ../shared/data from the project root, or wherever ROBUSTODE_CIFAR10_DIR points
CIFAR_DIR = Path(
    os.environ.get(
        "ROBUSTODE_CIFAR10_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py",
    )
)


def cifar_train_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images (data_batch_1's) in [0, 1], NCHW float32, with labels."""
    if not (CIFAR_DIR / "data_batch_1").is_file():
        pytest.skip(
            f"no CIFAR-10 subset at {CIFAR_DIR} (../shared/data, or set ROBUSTODE_CIFAR10_DIR)"
        )
    data = load_dataset("cifar10", split="train", root=CIFAR_DIR).subset(n)
    return data.float_images(), data.labels
