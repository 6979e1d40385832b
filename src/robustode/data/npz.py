"""Any image set saved with ``numpy.savez``: ``x``/``y`` and optionally ``x_test``/``y_test``.

Conventions:

- ``x`` is uint8 NHWC (0..255, as images are usually saved) or float NCHW in [0, 1]
  (as tensors are); ``y`` holds one integer label per image.
- ``split="train"`` reads ``x``/``y``; ``split="test"`` reads ``x_test``/``y_test``.
  A file with only ``x``/``y`` is a single set and serves both splits (an exported
  test set is the common case); a file with only ``x_test``/``y_test`` has no train split.
- The optional scalar ``num_classes`` fixes the number of classes; without it it is
  1 + the largest label over all the file's labels, so both splits agree.
- The file is read with ``allow_pickle=False``: object arrays are refused.
- Only a regular file is read, and every member's size — from its ``.npy``
  header, before anything is decompressed — must stay within
  :data:`MAX_NPZ_BYTES` in all (environment variable ``ROBUSTODE_MAX_NPZ_BYTES``
  to raise it): a small compressed file cannot ask for gigabytes.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import check_regular_file
from .dataset import DataError, ImageDataset

_CHANNELS = (1, 3)
# the full CIFAR-10 as float32 is 0.7 GB
MAX_NPZ_BYTES = 8 << 30


def _limit() -> int:
    text = os.environ.get("ROBUSTODE_MAX_NPZ_BYTES")
    try:
        return int(text) if text else MAX_NPZ_BYTES
    except ValueError:
        raise DataError(
            f"ROBUSTODE_MAX_NPZ_BYTES must be a number of bytes, got {text!r}"
        ) from None


def _check_member_sizes(path: Path) -> None:
    """Refuse an archive whose arrays (read from their .npy headers, nothing decompressed
    beyond them) would take more than the limit, or that holds object arrays."""
    limit = _limit()
    total = 0
    objects: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                if dtype.hasobject:
                    objects.append(info.filename[:-4])
                total += math.prod(shape) * dtype.itemsize
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz ({exc})") from None
    if objects:
        raise DataError(
            f"{path}: '{objects[0]}' is an object array; robustode reads an .npz without "
            "pickled objects only"
        )
    if total > limit:
        raise DataError(
            f"{path} declares arrays of {total:,} bytes, more than the {limit:,} robustode reads "
            "from an .npz (set ROBUSTODE_MAX_NPZ_BYTES to allow more)"
        )


def _images(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    where = f"{path}: '{key}'"
    if x.ndim != 4:
        raise DataError(f"{where} must be 4-D (uint8 NHWC or float NCHW), got shape {x.shape}")
    if x.dtype == np.uint8:
        if x.shape[3] not in _CHANNELS:
            hint = " (it looks NCHW: uint8 must be NHWC)" if x.shape[1] in _CHANNELS else ""
            raise DataError(f"{where} is uint8, so NHWC with 1 or 3 channels; got {x.shape}{hint}")
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if np.issubdtype(x.dtype, np.floating):
        if x.shape[1] not in _CHANNELS:
            hint = " (it looks NHWC: float must be NCHW)" if x.shape[3] in _CHANNELS else ""
            raise DataError(f"{where} is float, so NCHW with 1 or 3 channels; got {x.shape}{hint}")
        if not np.isfinite(x).all():
            raise DataError(f"{where} has NaN or infinite values; float images must lie in [0, 1]")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{where} is float, so must lie in [0, 1]; found {x.min():g}..{x.max():g}"
            )
        return torch.from_numpy(x.astype(np.float32))
    raise DataError(
        f"{where} has dtype {x.dtype}; accepted: uint8 (NHWC, 0..255) or float (NCHW, in [0, 1])"
    )


def _labels(y: np.ndarray, key: str, n: int, path: Path) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise DataError(
            f"{path}: '{key}' must be {n} integers (shape ({n},)), got {y.dtype} {y.shape}"
        )
    if n and y.min() < 0:
        raise DataError(f"{path}: '{key}' has negative labels")
    return y.astype(np.int64)


def load_npz(path: str | Path | None, *, split: str = "train") -> ImageDataset:
    """The ``split`` of the .npz file at ``path`` (see the module docstring for the layout)."""
    if path is None:
        raise DataError("the npz dataset needs root= the path of a .npz file holding x and y")
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise DataError(f"no .npz file at {path}; root must be the path of a .npz with x and y")
    try:
        check_regular_file(path, what=".npz data set")
    except InputError as exc:
        raise DataError(f"{exc}; root must be the path of a .npz with x and y") from None
    # np.load picks the format from the first bytes: a .npy gives an array, anything else is
    # tried as a pickle (refused, but with numpy's advice to unpickle it); accept a zip only
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head != b"PK\x03\x04":
        raise DataError(
            f"{path} is not a .npz archive (a zip, as numpy.savez writes); root must be the "
            "path of a .npz holding x and y"
        )
    _check_member_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz without pickled objects ({exc})") from None
    pairs = {"train": ("x", "y"), "test": ("x_test", "y_test")}
    present = {s: all(k in arrays for k in keys) for s, keys in pairs.items()}
    if not any(present.values()):
        raise DataError(f"{path} must hold arrays x and y (and optionally x_test, y_test)")
    if present[split]:
        x_key, y_key = pairs[split]
    elif split == "test":
        x_key, y_key = pairs["train"]  # a single-set file serves both splits
    else:
        raise DataError(f"{path} holds only x_test/y_test, no train split (x, y)")
    x = _images(arrays[x_key], x_key, path)
    y = _labels(arrays[y_key], y_key, len(x), path)
    # the other split's labels count too, so that both splits agree on num_classes
    all_labels = [y] + [
        arrays[k]
        for s, (_, k) in pairs.items()
        if present[s] and k != y_key and np.issubdtype(arrays[k].dtype, np.integer)
    ]
    if "num_classes" in arrays:
        nc = arrays["num_classes"]
        if nc.shape != () or not np.issubdtype(nc.dtype, np.integer) or nc < 1:
            raise DataError(f"{path}: 'num_classes' must be one positive integer, got {nc!r}")
        num_classes = int(nc)
    else:
        num_classes = 1 + max((int(a.max()) for a in all_labels if a.size), default=0)
    if len(y) and y.max() >= num_classes:
        raise DataError(f"{path}: '{y_key}' has label {y.max()} ≥ num_classes = {num_classes}")
    return ImageDataset(x, torch.from_numpy(y), num_classes, f"npz:{path.name}/{split}")
