"""Images and labels checked against the model they are evaluated on, before any attack runs.

A label the model cannot output would be counted as an error on every image
(a silent 0 %); images of a shape the model was not trained on run through a
convolutional network all the same and give numbers for the wrong task. Both
are one :class:`~robustode.errors.InputError` line instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.base import model_mode
from ..errors import InputError


def expected_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The (C, H, W) a model was trained on, where it records one (``model.input_shape``)."""
    shape = getattr(model, "input_shape", None)
    return tuple(int(v) for v in shape) if shape else None


@torch.no_grad()
def check_inputs_fit_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Refuse images and labels ``model`` cannot be evaluated on; return its class count.

    One forward pass of the first image, in eval mode, tells the number of classes.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InputError("images and labels must be tensors")
    if x.dtype == torch.uint8:
        raise InputError(
            "the images are uint8 (0..255); robustode evaluates float images in [0, 1]: "
            "convert with robustode.data.float_images(x) (the same as x.float() / 255)"
        )
    if x.dim() != 4:
        raise InputError(f"images must be a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n = int(x.shape[0])
    if n < 1 or tuple(y.shape) != (n,):
        raise InputError(
            f"need n ≥ 1 images and n labels, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"labels must be integers, got {y.dtype}")
    expected = expected_input_shape(model)
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise InputError(
            f"the model was trained on images of shape {expected} (C, H, W) and these are "
            f"{tuple(x.shape[1:])}: they are not the data it was built for; accepted: images "
            f"of shape {expected}"
        )
    with model_mode(model, "eval"):
        try:
            logits = model(x[:1])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"the model cannot take images of shape {tuple(x.shape[1:])}: {first}"
            ) from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(
            f"the model returned {shape} for one image; robustode needs logits of shape "
            "(batch, classes)"
        )
    classes = int(logits.shape[1])
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InputError(
            f"the labels run from {low} to {high} but the model outputs {classes} classes: "
            f"the data does not fit this model (accepted: labels 0..{classes - 1})"
        )
    return classes


__all__ = ["check_inputs_fit_model", "expected_input_shape"]
