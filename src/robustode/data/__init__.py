"""Datasets as tensors, and a loader that batches and augments them on the training device.

``load_dataset(name, split=…, root=…)`` returns an :class:`ImageDataset` (CIFAR-10/100 in
the official python format, scikit-learn's digits, or a .npz file);
:func:`float_images` turns uint8 images (0..255) into the float [0, 1] images attacks take;
:class:`DeviceLoader` turns it into deterministic, rank-sliced batches.
"""

from .dataset import DataError, ImageDataset, float_images
from .loader import DeviceLoader
from .registry import list_datasets, load_dataset, register_dataset

__all__ = [
    "DataError",
    "DeviceLoader",
    "ImageDataset",
    "float_images",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
