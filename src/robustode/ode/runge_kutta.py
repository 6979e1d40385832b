"""One explicit Runge–Kutta step for any tableau, on tuple states."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .state import State, lincomb, scale_coefficient
from .tableau import ButcherTableau

TimeFn = Callable[[float], "float | torch.Tensor"]


def rk_step(
    field,
    tableau: ButcherTableau,
    y0: State,
    f0: State,
    dt: float | torch.Tensor,
    stage_time: TimeFn,
    nudge_end: bool,
) -> tuple[State, State, State | None, list[State]]:
    """Advance y0 by dt; return (y1, f1, error estimate or None, stage derivatives).

    ``stage_time(c)`` gives the time of the stage at t0 + c·dt. With
    ``nudge_end`` the stages at c = 1 are evaluated one ulp below t1.
    ``f1`` is the last stage evaluated (FSAL for dopri5/bosh3).
    """
    dtype = y0[0].dtype
    ks: list[State] = [f0]
    yi = y0
    for c, row in zip(tableau.c, tableau.a, strict=True):
        coeffs = [scale_coefficient(a, dt, dtype) for a in row]
        yi = lincomb(y0, coeffs, ks[: len(row)])
        ks.append(field(stage_time(c), yi, nudge=-1 if nudge_end and c == 1.0 else 0))
    if tableau.fsal:
        y1 = yi
    else:
        y1 = lincomb(y0, [scale_coefficient(b, dt, dtype) for b in tableau.b], ks)
    error = None
    if tableau.b_error is not None:
        error = lincomb(None, [scale_coefficient(e, dt, dtype) for e in tableau.b_error], ks)
    return y1, ks[-1], error, ks


def midpoint_value(tableau: ButcherTableau, y0: State, ks: list[State], dt) -> State:
    """Dense-output value at t0 + dt/2 from the stage derivatives."""
    assert tableau.b_mid is not None
    dtype = y0[0].dtype
    return lincomb(y0, [scale_coefficient(m, dt, dtype) for m in tableau.b_mid], ks)
