"""Step callbacks defined on the vector field, called where torchdiffeq 0.2.5 calls them.

A ``func`` may define ``callback_step(t0, y0, dt)`` (before every step),
``callback_accept_step(t0, y0, dt)`` and ``callback_reject_step(t0, y0, dt)``
(after the error test of an adaptive step), and the same three with an
``_adjoint`` suffix for the backward solve of ``odeint_adjoint``. They receive
time tensors (the step's start in the caller's time, the step size positive)
and the state in the caller's layout (a tensor, or a tuple of tensors).

Adaptive Runge–Kutta methods call all three; fixed-grid methods (Adams
included) call only ``callback_step``, and a callback a method does not call
is warned about, as torchdiffeq warns. The fixed-grid event search calls none
(torchdiffeq's does not either).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .state import State
from .tableau import ADAPTIVE_METHODS

CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
ADJOINT_CALLBACK_NAMES = tuple(f"{name}_adjoint" for name in CALLBACK_NAMES)


def supported_callbacks(method: str) -> set[str]:
    return set(CALLBACK_NAMES) if method in ADAPTIVE_METHODS else {"callback_step"}


def find_callbacks(func, names=CALLBACK_NAMES) -> dict[str, Callable]:
    """The callbacks among ``names`` that ``func`` defines (as attributes), by their
    names without the ``_adjoint`` suffix."""
    found = {}
    for name in names:
        callback = getattr(func, name, None)
        if callback is not None and callable(callback):
            found[name.removesuffix("_adjoint")] = callback
    return found


def warn_unsupported(method: str, found: dict[str, Callable]) -> None:
    unsupported = sorted(set(found) - supported_callbacks(method))
    if unsupported:
        warnings.warn(
            f"Solver '{method}' does not support callbacks {unsupported}; it calls only "
            f"{sorted(supported_callbacks(method))}",
            UserWarning,
            stacklevel=4,
        )


@dataclass
class StepCallbacks:
    """The callbacks of one solve and how to hand them (t0, y0, dt).

    ``layout`` turns the internal tuple state into what the callback receives;
    ``time_sign`` maps the solver's time to the time the callback is given.
    """

    found: dict[str, Callable]
    layout: Callable[[State], object]
    time_sign: float = 1.0

    def __bool__(self) -> bool:
        return bool(self.found)

    def _call(self, name: str, t0, y: State, dt, dtype: torch.dtype, device) -> None:
        callback = self.found.get(name)
        if callback is None:
            return
        t0 = t0 if isinstance(t0, torch.Tensor) else torch.full((), t0, dtype=dtype, device=device)
        dt = dt if isinstance(dt, torch.Tensor) else torch.full((), dt, dtype=dtype, device=device)
        callback(-t0 if self.time_sign < 0 else t0, self.layout(y), dt)

    def step(self, t0, y: State, dt, dtype, device) -> None:
        self._call("callback_step", t0, y, dt, dtype, device)

    def accept(self, t0, y: State, dt, dtype, device) -> None:
        self._call("callback_accept_step", t0, y, dt, dtype, device)

    def reject(self, t0, y: State, dt, dtype, device) -> None:
        self._call("callback_reject_step", t0, y, dt, dtype, device)


def no_callbacks() -> StepCallbacks:
    return StepCallbacks({}, lambda y: y)
