"""Checks of defense options: each bad value is one :class:`DefenseConfigError` line."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..nn.perturbation import perturbation_points
from .base import DefenseConfigError


def _number(defense: str, name: str, value: Any, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DefenseConfigError(f"{defense}: {name} must be a finite number {rule}, got {value!r}")
    return float(value)


def positive(defense: str, name: str, value: Any) -> float:
    """``value`` as a float, refusing anything but a finite number > 0."""
    number = _number(defense, name, value, "> 0")
    if number <= 0:
        raise DefenseConfigError(f"{defense}: {name} must be a finite number > 0, got {value!r}")
    return number


def non_negative(defense: str, name: str, value: Any) -> float:
    """``value`` as a float, refusing anything but a finite number ≥ 0."""
    number = _number(defense, name, value, "≥ 0")
    if number < 0:
        raise DefenseConfigError(f"{defense}: {name} must be a finite number ≥ 0, got {value!r}")
    return number


def fraction(defense: str, name: str, value: Any) -> float:
    """``value`` as a float in [0, 1]."""
    number = _number(defense, name, value, "in [0, 1]")
    if not 0 <= number <= 1:
        raise DefenseConfigError(f"{defense}: {name} must be a number in [0, 1], got {value!r}")
    return number


def radius(defense: str, name: str, value: Any) -> float:
    """An L∞ radius in pixel units of [0, 1] images: 0 < ε ≤ 1."""
    number = positive(defense, name, value)
    if number > 1:
        raise DefenseConfigError(
            f"{defense}: {name} must be ≤ 1 (pixel units of [0, 1] images, 8/255 ≈ 0.031), "
            f"got {value!r}"
        )
    return number


def positive_int(defense: str, name: str, value: Any) -> int:
    """``value`` as an int ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefenseConfigError(f"{defense}: {name} must be an integer ≥ 1, got {value!r}")
    return value


def flag(defense: str, name: str, value: Any) -> bool:
    """``value`` as a bool (True or False only)."""
    if not isinstance(value, bool):
        raise DefenseConfigError(f"{defense}: {name} must be true or false, got {value!r}")
    return value


def choice(defense: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise DefenseConfigError(
            f"{defense}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def require_points(defense: str, model: nn.Module) -> list[str]:
    """The model's perturbation points, or one error saying the defense needs them."""
    names = perturbation_points(model)
    if not names:
        raise DefenseConfigError(
            f"{defense} perturbs hidden layers, but {type(model).__name__} has no perturbation "
            "points; models from robustode.models.create_model expose them (docs/models.md)"
        )
    return names
