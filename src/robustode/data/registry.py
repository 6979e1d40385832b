"""``load_dataset(name, split=…, root=…)`` and ``list_datasets()``: one entry point for all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..options import unknown_name
from .cifar import load_cifar
from .dataset import DataError, ImageDataset
from .digits import load_digits
from .npz import load_npz

SPLITS = ("train", "test")

# name -> loader(split, root, download, seed); a loader may ignore what it does not use
Loader = Callable[[str, "Path | None", bool, int], ImageDataset]

_LOADERS: dict[str, Loader] = {
    "cifar10": lambda split, root, download, seed: load_cifar(
        "cifar10", split=split, root=root, download=download
    ),
    "cifar100": lambda split, root, download, seed: load_cifar(
        "cifar100", split=split, root=root, download=download
    ),
    "digits": lambda split, root, download, seed: load_digits(split=split, seed=seed),
    "npz": lambda split, root, download, seed: load_npz(root, split=split),
}


def register_dataset(name: str, loader: Loader) -> None:
    """Make ``load_dataset(name, …)`` call ``loader(split, root, download, seed)``."""
    if name in _LOADERS:
        raise RuntimeError(f"dataset '{name}' is registered twice")
    _LOADERS[name] = loader


def list_datasets() -> list[str]:
    """Names ``load_dataset`` accepts, sorted."""
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    *,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
) -> ImageDataset:
    """Load one split of a dataset as an :class:`ImageDataset` on the CPU.

    - ``cifar10``/``cifar100``: ``root`` is the folder holding the official python-format
      files (``cifar-10-batches-py/``, ``cifar-100-python/``) or its parent (default
      ``$ROBUSTODE_DATA`` or ``./data``); ``download=True`` fetches and checks the official
      archive into it. Images are uint8.
    - ``digits``: scikit-learn's 8×8 digits, float32; the stratified 80/20 split depends only
      on ``seed``; ``root`` is ignored.
    - ``npz``: ``root`` is the path of a .npz file (layout in :mod:`robustode.data.npz`).
    """
    if name not in _LOADERS:
        raise DataError(unknown_name("dataset", name, list_datasets()))
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return _LOADERS[name](split, None if root is None else Path(root).expanduser(), download, seed)
