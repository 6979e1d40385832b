"""Named perturbation points: where LAD and noise injection touch a network's hidden layers.

LAD (eq. 5 and 8) perturbs the output x_n of every residual block;
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
    """Identity, unless a perturbation is active; then ``fn(self.name, x)`` of the latest one.

    Active functions are kept as plain attributes (never registered as
    submodules, never in ``state_dict``) and are dropped when the module is
    copied or pickled, so a copy made inside a :func:`perturbed` block is clean.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        object.__setattr__(self, "active", [])

    @property
    def fn(self) -> PerturbationFn | None:
        """The perturbation in effect (the most recently entered), or None."""
        return self.active[-1].fn if self.active else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        out = self.active[-1](self.name, x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"perturbation at '{self.name}' must return a tensor of shape {tuple(x.shape)}, "
                f"got {got}"
            )
        return out

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: the default returns the live __dict__
        state["active"] = []
        return state

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
def perturbed(
    model: nn.Module, fn: PerturbationFn, *, after_enclosing: bool = False
) -> Iterator[None]:
    """Run ``model`` with ``fn`` applied at every perturbation point.

    Contexts nest: the innermost one acts — or, with ``after_enclosing``, the
    perturbation already in effect acts first and ``fn`` sees its output (LAD
    recording and shifting activations under training noise). Leaving any context removes
    exactly its own function, even when contexts are left out of order.
    Perturbing one model instance from several threads at once is not
    supported (the points are shared state, like any module attribute).
    Raises if the model has no perturbation point, so a defense never
    silently trains without its perturbation.
    """
    points = list(perturbation_modules(model))
    if not points:
        raise ValueError(
            f"{type(model).__name__} has no perturbation points; models from "
            "robustode.models.create_model expose them (see docs/models.md)"
        )
    enclosing = points[0].active[-1] if after_enclosing and points[0].active else None
    if enclosing is not None:
        inner = fn

        def fn(name: str, h: torch.Tensor) -> torch.Tensor:
            return inner(name, enclosing(name, h))

    token = _Active(fn)
    for point in points:
        point.active.append(token)
    try:
        yield
    finally:
        for point in points:
            point.active[:] = [f for f in point.active if f is not token]


class _Active:
    """One context's function, wrapped so that leaving removes this entry and no other."""

    __slots__ = ("fn",)

    def __init__(self, fn: PerturbationFn) -> None:
        self.fn = fn

    def __call__(self, name: str, h: torch.Tensor) -> torch.Tensor:
        return self.fn(name, h)


class PointAfter(nn.Module):
    """``block`` followed by a perturbation point named ``name`` (e.g. an ODE block's output)."""

    def __init__(self, block: nn.Module, name: str) -> None:
        super().__init__()
        self.block = block
        self.out = PerturbationPoint(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block(x))
