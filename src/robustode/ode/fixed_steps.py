"""One step of each fixed-grid Runge–Kutta method, in torchdiffeq 0.2.5's order of operations.

Each function returns ``(dy, f0)``: the increment (y1 = y0 + dy) and the
derivative at the start of the step (kept for the cubic interpolant). The
formulas are the textbook ones (Euler; the explicit midpoint rule; Heun's
second- and third-order methods; Kutta's 3/8 rule, torchdiffeq's "rk4"), but
the products and sums are grouped as torchdiffeq groups them, so float32
results agree bit for bit. Stage times are computed in the grid's dtype
(``arith``), or with tensors when a gradient flows through the times.

``perturb`` (torchdiffeq's option of that name): the first stage sees t0 one
ulp later and a stage at the step's end sees t1 one ulp earlier, so a field
with a jump at a grid point is evaluated on the side of the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .arith import TimeArith
from .state import State

Time = "float | torch.Tensor"
StepFn = Callable[..., tuple[State, State]]


def stage_time(t0, dt, c: float, arith: TimeArith):
    """t0 + dt·c in the grid's arithmetic (torchdiffeq: ``t0 + dt * c``)."""
    if isinstance(t0, torch.Tensor) or isinstance(dt, torch.Tensor):
        return t0 + dt * c
    return arith.add(t0, arith.mul(dt, arith.round(c)))


def _first(fn, t0, y0, perturb: bool) -> State:
    return fn(t0, y0, nudge=1 if perturb else 0)


def euler(fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith) -> tuple[State, State]:
    f0 = _first(fn, t0, y0, perturb)
    return tuple(dt * f for f in f0), f0


def midpoint(fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith) -> tuple[State, State]:
    half = dt * 0.5 if isinstance(dt, torch.Tensor) else arith.mul(0.5, dt)
    f0 = _first(fn, t0, y0, perturb)
    y_mid = tuple(y + f * half for y, f in zip(y0, f0, strict=True))
    t_mid = (
        t0 + half
        if isinstance(t0, torch.Tensor) or isinstance(half, torch.Tensor)
        else (arith.add(t0, half))
    )
    k2 = fn(t_mid, y_mid)
    return tuple(dt * k for k in k2), f0


def rk4(fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith) -> tuple[State, State]:
    """Kutta's 3/8 rule (torchdiffeq's ``rk4_alt_step_func``)."""
    third = 1 / 3
    k1 = _first(fn, t0, y0, perturb)
    k2 = fn(
        stage_time(t0, dt, third, arith),
        tuple(y + dt * a * third for y, a in zip(y0, k1, strict=True)),
    )
    k3 = fn(
        stage_time(t0, dt, 2 / 3, arith),
        tuple(y + dt * (b - a * third) for y, a, b in zip(y0, k1, k2, strict=True)),
    )
    k4 = fn(
        t1,
        tuple(y + dt * (a - b + c) for y, a, b, c in zip(y0, k1, k2, k3, strict=True)),
        nudge=-1 if perturb else 0,
    )
    dy = tuple(
        (a + 3 * (b + c) + d) * dt * 0.125 for a, b, c, d in zip(k1, k2, k3, k4, strict=True)
    )
    return dy, k1


def heun2(fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith) -> tuple[State, State]:
    k1 = _first(fn, t0, y0, perturb)
    k2 = fn(
        stage_time(t0, dt, 1.0, arith),
        tuple(y + dt * a * 1.0 for y, a in zip(y0, k1, strict=True)),
        nudge=-1 if perturb else 0,
    )
    return tuple(dt * (a * 0.5 + b * 0.5) for a, b in zip(k1, k2, strict=True)), k1


def heun3(fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith) -> tuple[State, State]:
    k1 = _first(fn, t0, y0, perturb)
    k2 = fn(
        stage_time(t0, dt, 1 / 3, arith),
        tuple(y + dt * a * (1 / 3) for y, a in zip(y0, k1, strict=True)),
    )
    k3 = fn(
        stage_time(t0, dt, 2 / 3, arith),
        tuple(y + dt * (a * 0.0 + b * (2 / 3)) for y, a, b in zip(y0, k1, k2, strict=True)),
    )
    dy = tuple(dt * (a * 0.25 + b * 0.0 + c * 0.75) for a, b, c in zip(k1, k2, k3, strict=True))
    return dy, k1


FIXED_STEPS: dict[str, StepFn] = {
    "euler": euler,
    "midpoint": midpoint,
    "heun2": heun2,
    "heun3": heun3,
    "rk4": rk4,
}
