"""Fixed-grid Runge–Kutta integration (euler, rk4 3/8 rule).

The grid is built on the host once per solve with torchdiffeq's rule for
``step_size`` (points start + k·h in the dtype of ``t``, the last replaced by
t[-1]), so the loop makes no host–device synchronisation at all. Output times
between grid points are linearly interpolated, as torchdiffeq does.
"""

from __future__ import annotations

import math

import torch

from .field import VectorField
from .record import StepRecord
from .runge_kutta import rk_step
from .state import State, linear_interpolate
from .tableau import ButcherTableau


def fixed_grid(t: torch.Tensor, step_size: float | None) -> list[float]:
    """Grid points covering [t[0], t[-1]] (host floats, built in t's dtype)."""
    t_host = t.detach().cpu()
    if step_size is None:
        return t_host.tolist()
    start, end = t_host[0], t_host[-1]
    n = int(torch.ceil((end - start) / step_size + 1).item())
    grid = torch.arange(0, n, dtype=t_host.dtype) * step_size + start
    grid[-1] = end
    return grid.tolist()


def solve_fixed(
    fn: VectorField,
    tableau: ButcherTableau,
    y0: State,
    t: torch.Tensor,
    step_size: float | None,
    record: StepRecord,
    max_num_steps: int,
) -> list[State]:
    """Integrate on the fixed grid; return the state at each time of ``t``."""
    t_values = t.detach().cpu().tolist()
    grid = fixed_grid(t, step_size)
    if len(grid) - 1 > max_num_steps:
        from .errors import SolverError

        raise SolverError(
            f"ODE solve with {tableau.name} (step_size={step_size}) needs {len(grid) - 1} "
            f"steps, more than max_num_steps={max_num_steps}"
        )
    dts = torch.tensor(grid, dtype=t.dtype).diff().tolist()
    outputs: list[State] = [y0]
    j = 1
    y = y0
    for g0, g1, dt in zip(grid[:-1], grid[1:], dts, strict=True):
        if not math.isfinite(dt):
            break

        def stage_time(c: float, g0=g0, g1=g1, dt=dt):
            return g1 if c == 1.0 else g0 + c * dt

        f0 = fn(g0, y)
        y1, _, _, _ = rk_step(fn, tableau, y, f0, dt, stage_time, nudge_end=False)
        record.add_step(g0, dt, True)
        while j < len(t_values) and g1 >= t_values[j]:
            outputs.append(linear_interpolate(y, y1, g0, g1, t_values[j]))
            j += 1
        y = y1
    return outputs
