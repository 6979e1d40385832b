"""Fixed-grid integration (Euler, midpoint, Heun, 3/8-rule RK4, Adams), torchdiffeq 0.2.5's rules.

The grid is ``t`` itself, or t[0] + k·h in the dtype of ``t`` with the last
point replaced by t[-1] (``step_size``), or whatever ``grid_constructor(func,
y0, t)`` returns (it must start at t[0] and end at t[-1]). It is built on the
host once per solve, so the loop makes no host–device synchronisation.
Output times between grid points are interpolated linearly or, with
``interp="cubic"``, by the cubic Hermite polynomial through both ends (one
more evaluation of f at the step's end per output time, as torchdiffeq). When
``t`` requires grad the grid is kept as tensors so the gradient reaches the
output times (through t[0], t[-1] and the interpolation weights).

With an event function the solve instead steps by ``step_size`` from t[0]
until the event function changes sign and bisects the interpolant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .arith import TimeArith, round_to
from .callbacks import StepCallbacks, no_callbacks
from .errors import SolverError
from .events import find_event
from .field import VectorField
from .options import FixedSettings
from .record import StepRecord
from .state import State, cubic_hermite, linear_interpolate

# torchdiffeq's cap on the steps of a fixed-grid event search
MAX_EVENT_STEPS = 20_000


def fixed_grid(t: torch.Tensor, step_size: float | None) -> torch.Tensor:
    """Grid points covering [t[0], t[-1]] in t's dtype (differentiable in t)."""
    if step_size is None:
        return t
    start, end = t[0], t[-1]
    n = int(torch.ceil((end.detach() - start.detach()) / step_size + 1).item())
    grid = torch.arange(0, n, dtype=t.dtype, device=t.device) * step_size + start
    return torch.cat([grid[:-1], t[-1:]])


class _ScalarStepArith(TimeArith):
    """Time arithmetic of the fixed-grid event search, where torchdiffeq's dt is a
    Python float: products stay in float64, a sum with the time tensor rounds
    the scalar to the tensor's dtype first."""

    def round(self, x: float) -> float:
        return x

    def mul(self, a: float, b: float) -> float:
        return a * b

    def add(self, a: float, b: float) -> float:
        return round_to(a + round_to(b, self.dtype), self.dtype)


class FixedGridSolver:
    """A fixed-grid solve with one step function (:mod:`.fixed_steps` or an Adams stepper)."""

    def __init__(
        self,
        fn: VectorField,
        method: str,
        stepper: Callable,
        y0: State,
        settings: FixedSettings,
        record: StepRecord,
        callbacks: StepCallbacks | None = None,
        event_tol: float = 1e-9,
        user_func: Callable | None = None,
        time_sign: float = 1.0,
    ) -> None:
        self.fn, self.method, self.stepper, self.y0 = fn, method, stepper, y0
        self.settings, self.record = settings, record
        self.callbacks = callbacks or no_callbacks()
        self.event_tol = event_tol
        self.user_func = user_func if user_func is not None else fn.func
        self.time_sign = time_sign

    # ------------------------------------------------------------------ grid
    def _grid(self, t: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.step_size is not None:
            return fixed_grid(t, s.step_size)
        if s.grid_constructor is None:
            return t
        sign = self.time_sign
        t_caller = -t if sign < 0 else t
        grid = s.grid_constructor(self.user_func, self.fn.layout(self.y0), t_caller)
        grid = torch.as_tensor(grid)
        grid = -grid if sign < 0 else grid
        g = grid.detach()
        if (
            g.dim() != 1
            or len(g) < 2
            or not bool(g[0] == t.detach()[0])
            or not bool(g[-1] == t.detach()[-1])
            or not bool((g[1:] > g[:-1]).all())
        ):
            raise ValueError(
                "grid_constructor must return a 1-D grid that starts at t[0], ends at t[-1] "
                f"and runs in t's direction; got {(sign * g).tolist()[:6]}…"
            )
        return grid.to(t.device)

    def integrate(self, t: torch.Tensor) -> list[State]:
        """Integrate on the grid; return the state at each time of ``t``."""
        time_grad = t.requires_grad and torch.is_grad_enabled()
        grid_full = self._grid(t)
        grid_host = grid_full.detach().cpu()
        steps = len(grid_host) - 1
        if steps > self.settings.max_num_steps:
            raise SolverError(
                f"ODE solve with {self.method} (step_size={self.settings.step_size}) needs "
                f"{steps} steps, more than max_num_steps={self.settings.max_num_steps}"
            )
        arith = TimeArith(grid_host.dtype)
        grid = grid_host.tolist()
        dts = grid_host.diff().tolist()  # in the grid's dtype, as torchdiffeq computes them
        grid_t = grid_full if time_grad else None
        t_values = t.detach().cpu().tolist()
        cubic = self.settings.interp == "cubic"
        perturb = self.settings.perturb
        cb = self.callbacks
        device = self.y0[0].device

        outputs: list[State] = [self.y0]
        j = 1
        y = self.y0
        for i, dt_value in enumerate(dts):
            g0, g1 = grid[i], grid[i + 1]
            if grid_t is not None:
                g0_t, g1_t = grid_t[i], grid_t[i + 1]
                dt = g1_t - g0_t
            else:
                g0_t, g1_t, dt = g0, g1, dt_value
            if cb:
                cb.step(g0_t, y, dt, grid_host.dtype, device)
            dy, f0 = self.stepper(self.fn, g0_t, dt, g1_t, y, perturb, arith)
            y1 = tuple(a + d for a, d in zip(y, dy, strict=True))
            self.record.add_step(g0, dt_value, True)
            while j < len(t_values) and g1 >= t_values[j]:
                target = t[j] if time_grad else t_values[j]
                if cubic:
                    f1 = self.fn(g1_t, y1)
                    outputs.append(cubic_hermite(y, f0, y1, f1, g0_t, g1_t, target, arith))
                else:
                    outputs.append(
                        linear_interpolate(
                            y, y1, (g0, g0_t), (g1, g1_t), (t_values[j], target), arith
                        )
                    )
                j += 1
            y = y1
        return outputs

    # ------------------------------------------------------------------ events
    def integrate_until_event(
        self, t0: torch.Tensor, event_fn: Callable
    ) -> tuple[torch.Tensor, State]:
        """Step by ``step_size`` from t0 until ``event_fn`` changes sign; bisect the
        interpolant of that step (torchdiffeq's fixed-grid event search)."""
        s = self.settings
        if s.step_size is None:
            raise ValueError(
                f"event handling with the fixed-step method '{self.method}' needs "
                "options={'step_size': h}"
            )
        s_dtype = self.fn.time_dtype
        arith = _ScalarStepArith(s_dtype)
        interp_arith = TimeArith(s_dtype)
        device = self.y0[0].device
        dt = s.step_size
        start = t0.to(device=device, dtype=s_dtype)
        t_val = start if start.requires_grad else float(start)

        def tensor(v):
            return (
                v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=s_dtype, device=device)
            )

        y = self.y0
        sign0 = torch.sign(event_fn(tensor(t_val), y))
        limit = min(MAX_EVENT_STEPS, s.max_num_steps)
        for _ in range(limit):
            t1 = t_val + dt if isinstance(t_val, torch.Tensor) else arith.add(t_val, dt)
            dy, f0 = self.stepper(self.fn, t_val, dt, t1, y, s.perturb, arith)
            y1 = tuple(a + d for a, d in zip(y, dy, strict=True))
            self.record.add_step(_host(t_val), _host(t1) - _host(t_val), True)
            if bool(sign0 != torch.sign(event_fn(tensor(t1), y1))):
                t0_, t1_, ya, yb = tensor(t_val), tensor(t1), y, y1
                if s.interp == "cubic":
                    fb = self.fn(t1_, yb)

                    def interp(t, t0_=t0_, t1_=t1_, ya=ya, yb=yb, fa=f0, fb=fb):
                        return cubic_hermite(ya, fa, yb, fb, t0_, t1_, t, interp_arith)
                else:

                    def interp(t, t0_=t0_, t1_=t1_, ya=ya, yb=yb):
                        return _linear_at(ya, yb, t0_, t1_, t)

                return find_event(
                    interp, sign0, t0_.detach(), t1_.detach(), event_fn, self.event_tol
                )
            t_val, y = t1, y1
        raise SolverError(
            f"ODE solve with {self.method} (step_size={dt}) found no event within {limit} steps"
        )


def _host(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else v


def _linear_at(y0: State, y1: State, t0: torch.Tensor, t1: torch.Tensor, t: torch.Tensor):
    """torchdiffeq's linear interpolant on tensors (the event search's)."""
    if bool(t == t0):
        return y0
    if bool(t == t1):
        return y1
    slope = (t - t0) / (t1 - t0)
    return tuple(a + slope.to(a.abs().dtype) * (b - a) for a, b in zip(y0, y1, strict=True))
