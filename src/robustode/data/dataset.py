"""The in-memory dataset every loader returns, and the package's one error type."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


class DataError(InputError):
    """A dataset that cannot be found, read or accepted; the message says what to provide."""


def float_images(images: torch.Tensor) -> torch.Tensor:
    """Images as the attacks and models take them: uint8 (0..255) → float32 in [0, 1]
    (``x / 255``); a floating-point tensor is returned as it is (it must already lie in
    [0, 1]). Layout is kept: NHWC arrays need ``.permute(0, 3, 1, 2)`` first."""
    if not isinstance(images, torch.Tensor):
        raise DataError(f"float_images takes a tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not torch.is_floating_point(images):
        raise DataError(
            f"float_images takes uint8 (0..255) or floating-point images, got {images.dtype}"
        )
    return images


@dataclass
class ImageDataset:
    """A whole split as two tensors: NCHW images and int64 labels.

    ``images`` are uint8 (0..255, as CIFAR stores them: 1 byte per pixel until a batch
    is used) or float32 in [0, 1]. Models always receive float32 in [0, 1]; see
    :meth:`float_images` and :class:`~robustode.data.DeviceLoader`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dim() != 4:
            raise DataError(f"{self.name}: images must be NCHW (4-D), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"{self.name}: images must be uint8 or float32, got {x.dtype}")
        if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
            raise DataError(
                f"{self.name}: labels must be int64 of shape ({len(x)},), "
                f"got {y.dtype} {tuple(y.shape)}"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise DataError(
                f"{self.name}: num_classes must be an integer, got {self.num_classes!r}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in 0..{self.num_classes - 1}, "
                f"found {int(y.min())}..{int(y.max())}"
            )
        _, c, h, w = x.shape
        if x.stride() != (c * h * w, h * w, w, 1):
            # Grey (C = 1) images stored NHWC, as numpy saves them, come with the strides
            # of channels-last, which torch cannot tell from NCHW when C = 1: CPU
            # convolutions then take oneDNN's channels-last path, whose weight gradient of
            # a narrow stride-2 1×1 convolution corrupts the heap (docs/training.md).
            self.images = x.clone(memory_format=torch.contiguous_format)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same data on ``device`` (dtypes kept: uint8 stays 1 byte per pixel)."""
        return ImageDataset(
            self.images.to(device), self.labels.to(device), self.num_classes, self.name
        )

    def float_images(self) -> torch.Tensor:
        """All images as float32 in [0, 1] (the stored tensor itself when already float32)."""
        return float_images(self.images)

    def subset(self, n: int) -> ImageDataset:
        """The first ``n`` images in order (RobustBench's protocol for evaluation subsets)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self):
            raise DataError(
                f"{self.name}: subset size must be an integer in 0..{len(self)}, got {n!r}"
            )
        return ImageDataset(self.images[:n], self.labels[:n], self.num_classes, self.name)
