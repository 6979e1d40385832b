"""Fixed-grid Runge–Kutta integration (euler, rk4 3/8 rule).

The grid follows torchdiffeq's rule for ``step_size`` (points t[0] + k·h in
the dtype of ``t``, the last replaced by t[-1]) or is ``t`` itself. It is
built on the host once per solve, so the loop makes no host–device
synchronisation. Output times between grid points are linearly interpolated,
as torchdiffeq does. When ``t`` requires grad the grid is kept as tensors so
the gradient reaches the output times (through t[0], t[-1] and the
interpolation weights, as in torchdiffeq).
"""

from __future__ import annotations

import torch

from .errors import SolverError
from .field import VectorField
from .record import StepRecord
from .runge_kutta import rk_step
from .state import State, linear_interpolate
from .tableau import ButcherTableau


def fixed_grid(t: torch.Tensor, step_size: float | None) -> torch.Tensor:
    """Grid points covering [t[0], t[-1]] in t's dtype (differentiable in t)."""
    if step_size is None:
        return t
    start, end = t[0], t[-1]
    n = int(torch.ceil((end.detach() - start.detach()) / step_size + 1).item())
    grid = torch.arange(0, n, dtype=t.dtype, device=t.device) * step_size + start
    return torch.cat([grid[:-1], t[-1:]])


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
    time_grad = t.requires_grad and torch.is_grad_enabled()
    t_host = t.detach().cpu()
    grid_host = fixed_grid(t_host, step_size)
    if len(grid_host) - 1 > max_num_steps:
        raise SolverError(
            f"ODE solve with {tableau.name} (step_size={step_size}) needs {len(grid_host) - 1} "
            f"steps, more than max_num_steps={max_num_steps}"
        )
    grid = grid_host.tolist()
    dts = grid_host.diff().tolist()  # in t's dtype, as torchdiffeq computes them
    grid_t = fixed_grid(t, step_size) if time_grad else None
    t_values = t_host.tolist()

    outputs: list[State] = [y0]
    j = 1
    y = y0
    for i, dt_value in enumerate(dts):
        g0, g1 = grid[i], grid[i + 1]
        if grid_t is not None:
            g0_t, g1_t = grid_t[i], grid_t[i + 1]
            dt = g1_t - g0_t
        else:
            g0_t, g1_t, dt = g0, g1, dt_value

        def stage_time(c: float, g0_t=g0_t, g1_t=g1_t, dt=dt):
            return g1_t if c == 1.0 else g0_t + c * dt

        f0 = fn(g0_t, y)
        y1, _, _, _ = rk_step(fn, tableau, y, f0, dt, stage_time, nudge_end=False)
        record.add_step(g0, dt_value, True)
        while j < len(t_values) and g1 >= t_values[j]:
            target = t[j] if time_grad else t_values[j]
            outputs.append(linear_interpolate(y, y1, (g0, g0_t), (g1, g1_t), (t_values[j], target)))
            j += 1
        y = y1
    return outputs
