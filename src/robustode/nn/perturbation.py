"""Named perturbation points: where LAD and noise injection touch a network's hidden layers.

LAD (lad.txt eq. 5 and 8) perturbs the output x_n of every residual block;
noise injection (EnResNet, LAD's noise baseline) adds noise at the same
places. Rather than have every defense register forward hooks on module
internals, a model places a :class:`PerturbationPoint` at each such output —
an identity module with a name. A caller then runs the model under
:func:`perturbed` with one function ``fn(name, activation) -> activation``
that sees every point, in forward order, and returns what flows on.

Recording ∂L/∂x_n for LAD's first pass::

    acts = {}
    def keep(name, h):
        acts[name] = h
        return h
    with perturbed(model, keep):
        loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(acts.values()))

and its second pass is ``perturbed(model, lambda n, h: h + eta * g[n])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

PerturbationFn = Callable[[str, torch.Tensor], torch.Tensor]


class PerturbationPoint(nn.Module):
    """Identity, unless a perturbation function is active; then ``fn(self.name, x)``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn: PerturbationFn | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is None:
            return x
        out = self.fn(self.name, x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"perturbation at '{self.name}' must return a tensor of shape {tuple(x.shape)}, "
                f"got {got}"
            )
        return out

    def extra_repr(self) -> str:
        return f"'{self.name}'"


def perturbation_modules(model: nn.Module) -> Iterator[PerturbationPoint]:
    """The points of ``model`` in registration order (models register them in forward order)."""
    for module in model.modules():
        if isinstance(module, PerturbationPoint):
            yield module


def perturbation_points(model: nn.Module) -> list[str]:
    """Names of ``model``'s perturbation points, in forward order."""
    return [point.name for point in perturbation_modules(model)]


@contextmanager
def perturbed(model: nn.Module, fn: PerturbationFn) -> Iterator[None]:
    """Run ``model`` with ``fn`` applied at every perturbation point; restores the previous state.

    Raises if the model has no perturbation point, so a defense never silently
    trains without its perturbation.
    """
    points = list(perturbation_modules(model))
    if not points:
        raise ValueError(
            f"{type(model).__name__} has no perturbation points; models from "
            "robustode.models.create_model expose them (see docs/extending.md)"
        )
    previous = [point.fn for point in points]
    for point in points:
        point.fn = fn
    try:
        yield
    finally:
        for point, fn_before in zip(points, previous, strict=True):
            point.fn = fn_before


class PointAfter(nn.Module):
    """``block`` followed by a perturbation point named ``name`` (e.g. an ODE block's output)."""

    def __init__(self, block: nn.Module, name: str) -> None:
        super().__init__()
        self.block = block
        self.out = PerturbationPoint(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(x))
