"""CIFAR-10 and CIFAR-100 in the official python format, read without executing code.

The official batch files are pickles, and unpickling runs whatever callables the
file names. :class:`_SafeUnpickler` resolves only the handful of globals that a
NumPy array inside a dict needs, so a tampered file cannot run code: it is refused
with a :class:`DataError` before anything it names is called.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import read_bytes_limited
from .dataset import DataError, ImageDataset
from .download import download_file, extract_folder


@dataclass(frozen=True)
class CifarSource:
    """Where one CIFAR variant comes from and how its folder is laid out."""

    title: str
    folder: str  # the folder the official archive extracts to
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_keys: dict[str, str]  # label_mode -> key in each batch dict
    num_classes: dict[str, int]  # label_mode -> number of classes

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_keys={"fine": "labels"},
        num_classes={"fine": 10},
    ),
    "cifar100": CifarSource(
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        label_keys={"fine": "fine_labels", "coarse": "coarse_labels"},
        num_classes={"fine": 100, "coarse": 20},
    ),
}


def default_root() -> Path:
    """Where datasets live when no root is given: $ROBUSTODE_DATA, else ./data."""
    return Path(os.environ.get("ROBUSTODE_DATA", "data"))


# ---------------------------------------------------------------- safe unpickling
def _numpy_reconstruct() -> Any:
    # NumPy 2 moved numpy.core to numpy._core; files written by either name the one they knew
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_BUILTINS = (dict, list, tuple, set, frozenset, bytes, bytearray, str, int, float, complex, bool)

# (module, name) -> a function returning the object; nothing outside this table is ever resolved
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols < 3
    ("_codecs", "encode"): lambda: codecs.encode,
}
for _t in _BUILTINS:
    # Python 2 pickles say __builtin__; overriding find_class skips pickle's name fixing
    for _module in ("builtins", "__builtin__"):
        _ALLOWED[_module, _t.__name__] = lambda t=_t: t


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can build arrays, dicts and lists, and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                f"{self._path}: refusing to load '{module}.{name}' — a CIFAR batch file holds "
                "only NumPy arrays, lists and dicts; this file is not an official one"
            )
        return allowed()


# what a truncated or garbled pickle raises on the way (a refused global raises DataError)
_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    MemoryError,
    OverflowError,
)


# an official batch is 31 MB (CIFAR-10) or 155 MB (CIFAR-100's train file)
BATCH_FILE_BYTES = 1 << 30


def read_batch(path: Path) -> dict[str, Any]:
    """Read one official batch file as a dict with str keys, running no code from it."""
    path = Path(path)
    try:
        data = read_bytes_limited(path, BATCH_FILE_BYTES, what="CIFAR batch")
    except InputError as exc:
        if not path.exists():
            raise DataError(f"{path} is missing; the folder is incomplete") from None
        raise DataError(str(exc)) from None
    try:
        obj = _SafeUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} is missing; the folder is incomplete") from None
    except _CORRUPT as exc:
        raise DataError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR batch (a dict), got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# ---------------------------------------------------------------- folders
def find_folder(source: CifarSource, root: str | Path | None) -> Path:
    """``root`` itself when it holds the batch files (or is named like the folder), else
    ``root/<official folder>``."""
    root = default_root() if root is None else Path(root)
    if root.name == source.folder or (root / source.test_files[0]).is_file():
        return root
    return root / source.folder


def _missing_message(source: CifarSource, folder: Path) -> str:
    return (
        f"{source.title} not found: expected the folder {folder} "
        f"(the contents of {source.archive}); pass download=True (--download) to fetch it, "
        "or a root that holds it"
    )


def _download(source: CifarSource, folder: Path) -> None:
    from ..outputs import OutputFolder

    with OutputFolder(folder.parent, "download", out_option="data_dir") as claimed:
        archive = download_file(
            source.url,
            folder.parent / source.archive,
            source.md5,
            what=f"without a network, provide the folder {folder} (the contents of "
            f"{source.archive})",
            folder=claimed,
        )
        extract_folder(archive, source.folder, folder.parent, folder=claimed)


# ---------------------------------------------------------------- loading
def load_cifar(
    name: str,
    *,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    label_mode: str = "fine",
) -> ImageDataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) as uint8 NCHW images.

    ``label_mode`` picks CIFAR-100's 100 fine or 20 coarse labels (CIFAR-10 has "fine" only).
    """
    source = SOURCES[name]
    if label_mode not in source.label_keys:
        raise DataError(
            f"{name}: unknown label_mode '{label_mode}'; choose one of: "
            f"{', '.join(source.label_keys)}"
        )
    if split not in ("train", "test"):
        raise DataError(f"unknown split '{split}'; choose one of: train, test")
    files = source.train_files if split == "train" else source.test_files
    folder = find_folder(source, root)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        if download and folder.name == source.folder:
            _download(source, folder)
        elif not folder.exists():
            raise DataError(_missing_message(source, folder))
        else:
            raise DataError(
                f"{folder} lacks {', '.join(missing)}; provide the full contents of "
                f"{source.archive} there"
                + (
                    ", or pass download=True (--download) to fetch them"
                    if folder.name == source.folder and not download
                    else ""
                )
            )
    label_key = source.label_keys[label_mode]
    images, labels = [], []
    for file in files:
        try:
            batch = read_batch(folder / file)
        except DataError as exc:  # say what the folder must hold instead
            raise DataError(
                f"{exc}; {folder} must hold the official python-format files of {source.archive}"
            ) from None
        data, y = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DataError(f"{folder / file}: 'data' must be a uint8 N×3072 array")
        if data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{folder / file}: 'data' rows must hold 3072 bytes, got {data.shape}")
        if y is None or len(y) != len(data):
            raise DataError(
                f"{folder / file}: '{label_key}' must hold one label per image ({len(data)})"
            )
        images.append(data)
        labels.append(np.asarray(y, dtype=np.int64))
    x = torch.from_numpy(np.concatenate(images)).view(-1, 3, 32, 32)
    y = torch.from_numpy(np.concatenate(labels))
    title = name if label_mode == "fine" else f"{name}-{label_mode}"
    try:
        return ImageDataset(x, y, source.num_classes[label_mode], f"{title}/{split}")
    except DataError as exc:
        raise DataError(f"{folder}: {exc}") from None
