"""scikit-learn's handwritten digits (UCI): 1797 8×8 grey images, 10 classes, no network needed."""

from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset

TEST_FRACTION = 0.2


def split_indices(labels: np.ndarray, seed: int, test_fraction: float = TEST_FRACTION):
    """A stratified train/test partition that depends only on ``seed``: in every class,
    ``test_fraction · n_class`` images (rounded half up) go to test. Both are sorted."""
    # RandomState, not default_rng: NumPy freezes its stream, so the split never drifts
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(test_fraction * len(members) + 0.5)
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def load_digits(*, split: str = "train", seed: int = 0) -> ImageDataset:
    """The digits as float32 NCHW (N, 1, 8, 8) in [0, 1] (raw values 0..16 divided by 16)."""
    from sklearn.datasets import load_digits as sk_load_digits  # slow import; only when used

    bunch = sk_load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = split_indices(labels, seed)
    idx = train_idx if split == "train" else test_idx
    x = torch.from_numpy((bunch.images[idx] / 16.0).astype(np.float32)).unsqueeze(1)
    return ImageDataset(x, torch.from_numpy(labels[idx]), 10, f"digits/{split}")
