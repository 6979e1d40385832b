"""What every training defense is: ``loss(model, x, y) → (loss, stats)``.

A defense is a training objective (docs/architecture.md): it owns how the batch is
attacked or perturbed and how the loss is formed, never the optimiser step.
The trainer calls it once per batch with the model in train mode and
back-propagates the returned loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import InputError
from ..options import unknown_name

Stats = dict[str, float]


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many rows of ``logits`` predict ``y``: a 0-d tensor, read with the other stats."""
    return (logits.detach().argmax(1) == y).sum().float()


def to_stats(values: dict[str, torch.Tensor | float]) -> Stats:
    """A defense's stats as floats, copied from the device in one transfer.

    One ``.item()`` per number would stall the host once per number per batch.
    """
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    read = dict.fromkeys(values, 0.0)
    read.update({k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)})
    if tensors:
        flat = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist()
        read.update(zip(tensors, flat, strict=True))
    return read


class DefenseConfigError(InputError):
    """An unknown defense name or an option value a defense cannot take."""


class Defense(Protocol):
    """A training objective: the scalar loss to minimise on one batch, and numbers to log."""

    name: str

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, Stats]: ...


@dataclass(frozen=True)
class DefenseEntry:
    name: str
    factory: Callable[..., Defense]
    summary: str

    @property
    def options(self) -> dict[str, Any]:
        params = inspect.signature(self.factory).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in CONTEXT
        }

    @property
    def context(self) -> tuple[str, ...]:
        """The context arguments (:data:`CONTEXT`) the factory takes."""
        params = inspect.signature(self.factory).parameters
        return tuple(name for name in CONTEXT if name in params)


_REGISTRY: dict[str, DefenseEntry] = {}
# what the trainer tells every defense that asks (a keyword of its factory): the dataset's
# name, for paper defaults that depend on it (LAD's η: 50 on CIFAR-10, 1000 on CIFAR-100)
CONTEXT = ("data",)


def register_defense(name: str, *, summary: str) -> Callable[[Callable[..., Defense]], Any]:
    """Decorator: register a factory whose keyword-only parameters are the defense's options."""

    def decorate(factory: Callable[..., Defense]) -> Callable[..., Defense]:
        if name in _REGISTRY:
            raise RuntimeError(f"defense '{name}' is registered twice")
        _REGISTRY[name] = DefenseEntry(name, factory, summary)
        return factory

    return decorate


def list_defenses() -> list[str]:
    return sorted(_REGISTRY)


def defense_entry(name: str) -> DefenseEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DefenseConfigError(unknown_name("defense", name, list_defenses())) from None


def create_defense(
    name: str, /, *, context: dict[str, Any] | None = None, **options: Any
) -> Defense:
    """Build the defense ``name``; an unknown option is one error listing the accepted ones.
    ``context`` (e.g. ``{"data": "cifar100"}``) reaches the factories that take it."""
    entry = defense_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none"
        raise DefenseConfigError(
            f"defense '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"it accepts: {accepted}"
        )
    given = {k: v for k, v in (context or {}).items() if k in entry.context}
    return entry.factory(**given, **options)
