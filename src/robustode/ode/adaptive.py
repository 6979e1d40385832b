"""Adaptive Runge–Kutta integration with batch-shared or per-sample step control.

Batch mode reproduces torchdiffeq 0.2.5 (REFERENCE.md): float64 time, an
automatic first step that stays differentiable (later step sizes detached),
stages at t1 nudged one ulp below it, overshoot past each output time and
quartic interpolation back. The loop keeps time on the host and reads exactly
one number from the device per step — the error ratio that decides
acceptance.

Per-sample mode runs the same formulas with a time, step size and accept
decision for every sample; finished or rejected samples are carried along
with masked updates, so a sample's result does not depend on its batch-mates.
The per-step host read is one flag vector (any still active, any non-finite,
any underflow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .controller import (
    ControllerConfig,
    error_ratio,
    initial_step,
    next_step_size,
    step_factor_tensor,
)
from .errors import SolverError
from .field import VectorField
from .record import StepRecord
from .runge_kutta import midpoint_value, rk_step
from .state import State, quartic_coefficients, quartic_evaluate, where
from .tableau import ButcherTableau


@dataclass(frozen=True)
class AdaptiveOptions:
    """Tolerances (one per state tensor) and controller settings of one solve."""

    rtol: tuple[float, ...]
    atol: tuple[float, ...]
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    first_step: float | None = None
    max_num_steps: int = 100_000
    # None: torchdiffeq (first step differentiable, later detached);
    # True: every step size detached; False: gradients flow through all of them.
    detach_step_size: bool | None = None
    # -1 when a decreasing grid is integrated as s = -t: messages show the caller's t.
    time_sign: float = 1.0

    def describe(self, method: str) -> str:
        rt = self.rtol[0] if len(set(self.rtol)) == 1 else self.rtol
        at = self.atol[0] if len(set(self.atol)) == 1 else self.atol
        return f"{method} (rtol={rt}, atol={at})"


def _raise(method: str, opts: AdaptiveOptions, what: str, t: float) -> None:
    t_caller = opts.time_sign * t
    raise SolverError(f"ODE solve with {opts.describe(method)} {what} at t={t_caller:.6g}")


def _budget_message(opts: AdaptiveOptions, target: float) -> str:
    return (
        f"exceeded max_num_steps={opts.max_num_steps} on the way to "
        f"t={opts.time_sign * target:.6g} "
        "(raise it with options={'max_num_steps': n}, or loosen the tolerances)"
    )


def _step_grad_mode(opts: AdaptiveOptions, first: bool) -> bool:
    if not torch.is_grad_enabled() or opts.detach_step_size is True:
        return False
    return first or opts.detach_step_size is False


@dataclass
class _AcceptedStep:
    """The last accepted step: what the dense output between t0 and t1 needs."""

    t0: float | torch.Tensor
    dt: float | torch.Tensor
    y0: State
    y1: State
    f0: State
    f1: State
    ks: list[State]
    coefficients: list[State] | None = None


def solve_adaptive_batch(
    fn: VectorField,
    tableau: ButcherTableau,
    y0: State,
    t_values: list[float],
    t_tensor: torch.Tensor,
    opts: AdaptiveOptions,
    record: StepRecord,
) -> list[State]:
    """Integrate with one step size for the whole batch; return the state at each t."""
    ctrl = opts.controller
    device = y0[0].device
    time_grad = t_tensor.requires_grad and torch.is_grad_enabled()
    t_val = t_values[0]
    # Tensor time is only materialised when a gradient flows through it.
    t_ten: torch.Tensor | None = (
        t_tensor[0].to(device=device, dtype=torch.float64) if time_grad else None
    )

    f0 = fn(t_ten if t_ten is not None else t_val, y0)
    if opts.first_step is None:
        with torch.set_grad_enabled(_step_grad_mode(opts, first=True)):
            t_start = (
                t_ten
                if t_ten is not None
                else torch.full((), t_val, dtype=torch.float64, device=device)
            )
            h = initial_step(fn, t_start, y0, f0, tableau.order - 1, opts.rtol, opts.atol, False)
        dt_val = float(h.detach())  # one host read per solve
        if math.isnan(dt_val):
            _raise(tableau.name, opts, "met non-finite values in the state", t_val)
        dt_ten: torch.Tensor | None = h if h.requires_grad else None
    else:
        dt_val, dt_ten = float(opts.first_step), None

    y, f = y0, f0
    last: _AcceptedStep | None = None
    outputs: list[State] = [y0]
    for i in range(1, len(t_values)):
        target = t_values[i]
        n_steps = 0  # the budget is per output interval, as in torchdiffeq
        while target > t_val:
            if n_steps >= opts.max_num_steps:
                _raise(tableau.name, opts, _budget_message(opts, target), t_val)
            if not math.isfinite(dt_val):
                dt_val, dt_ten = ctrl.min_step, None
            clamped = min(max(dt_val, ctrl.min_step), ctrl.max_step)
            if clamped != dt_val:
                dt_val, dt_ten = clamped, None
            if not t_val + dt_val > t_val:
                _raise(tableau.name, opts, f"step size underflowed (dt={dt_val:.3g})", t_val)
            t1_val = t_val + dt_val
            dt = dt_ten if dt_ten is not None else dt_val
            base = t_ten if t_ten is not None else t_val

            def stage_time(c: float, base=base, dt=dt, t1_val=t1_val):
                if isinstance(base, float) and isinstance(dt, float):
                    return t1_val if c == 1.0 else base + c * dt
                return base + dt if c == 1.0 else base + c * dt

            y1, f1, err, ks = rk_step(fn, tableau, y, f, dt, stage_time, nudge_end=True)
            with torch.set_grad_enabled(_step_grad_mode(opts, first=False)):
                ratio = error_ratio(err, y, y1, opts.rtol, opts.atol, per_sample=False)
            r = float(ratio.detach())  # the one host read of this step
            if math.isnan(r):
                _raise(tableau.name, opts, "met non-finite values in the state", t_val)
            accept = r <= 1 or dt_val <= ctrl.min_step
            record.add_step(t_val, dt_val, accept)
            if accept:
                last = _AcceptedStep(base, dt, y, y1, f, f1, ks)
                if not (isinstance(base, float) and isinstance(dt, float)):
                    t_ten = base + dt
                t_val, y, f = t1_val, y1, f1
            new_dt = next_step_size(dt_val, r, tableau.order, ctrl)
            if _step_grad_mode(opts, first=False) and ratio.requires_grad:
                dt_ten = (dt * step_factor_tensor(ratio, tableau.order, ctrl)).clamp(
                    ctrl.min_step, ctrl.max_step
                )
            else:
                dt_ten = None
            dt_val = new_dt
            n_steps += 1
        assert last is not None
        target_t = t_tensor[i].to(device=device, dtype=torch.float64) if time_grad else target
        outputs.append(_dense_output(tableau, last, target_t))
    return outputs


def _dense_output(tableau: ButcherTableau, step: _AcceptedStep, target) -> State:
    if step.coefficients is None:
        y_mid = midpoint_value(tableau, step.y0, step.ks, step.dt)
        step.coefficients = quartic_coefficients(step.y0, step.y1, y_mid, step.f0, step.f1, step.dt)
    t1 = step.t0 + step.dt
    x = (target - step.t0) / (t1 - step.t0)
    return quartic_evaluate(step.coefficients, x)


def solve_adaptive_per_sample(
    fn: VectorField,
    tableau: ButcherTableau,
    y0: State,
    t_values: list[float],
    t_tensor: torch.Tensor,
    opts: AdaptiveOptions,
    record: StepRecord,
) -> list[State]:
    """Integrate every sample with its own step sizes; return the state at each t."""
    ctrl = opts.controller
    batch = y0[0].shape[0]
    device = y0[0].device
    f64 = torch.float64
    time_grad = t_tensor.requires_grad and torch.is_grad_enabled()
    t_cur = torch.full((batch,), t_values[0], dtype=f64, device=device)
    if time_grad:
        t_cur = t_tensor[0].to(device=device, dtype=f64).expand(batch) + 0.0

    f0 = fn(t_cur, y0)
    if opts.first_step is None:
        with torch.set_grad_enabled(_step_grad_mode(opts, first=True)):
            dt = initial_step(fn, t_cur, y0, f0, tableau.order - 1, opts.rtol, opts.atol, True)
    else:
        dt = torch.full((batch,), float(opts.first_step), dtype=f64, device=device)

    y, f = y0, f0
    # Per sample, the last accepted step's start state, start derivative and
    # midpoint value; its end state and derivative are always the current y, f.
    last: tuple[State, State, State] | None = None
    last_t0 = t_cur
    last_t1 = t_cur
    last_dt = torch.zeros_like(t_cur)
    outputs: list[State] = [y0]
    zero = torch.zeros((), dtype=f64, device=device)

    def fail(what: str) -> None:  # at the time of the sample that lags furthest behind
        _raise(tableau.name, opts, what, float(t_cur.detach().min()))

    for i in range(1, len(t_values)):
        target = t_values[i]
        n_steps = 0  # per output interval, as in batch mode
        active = t_cur < target
        running = bool(active.any())  # one host read per output time
        while running:
            if n_steps >= opts.max_num_steps:
                fail(_budget_message(opts, target))
            dt_c = torch.nan_to_num(dt, nan=ctrl.min_step).clamp(ctrl.min_step, ctrl.max_step)
            dt_eff = torch.where(active, dt_c, zero)

            def stage_time(c: float, t0=t_cur, h=dt_eff):
                return t0 + h if c == 1.0 else t0 + c * h

            y1, f1, err, ks = rk_step(fn, tableau, y, f, dt_eff, stage_time, nudge_end=True)
            with torch.set_grad_enabled(_step_grad_mode(opts, first=False)):
                ratio = error_ratio(err, y, y1, opts.rtol, opts.atol, per_sample=True)
            accept = ((ratio <= 1) | (dt_c <= ctrl.min_step)) & active
            record.add_step(t_cur.detach(), dt_eff.detach(), accept, active)

            step = (y, f, midpoint_value(tableau, y, ks, dt_eff))
            last = (
                step
                if last is None
                else tuple(where(accept, n, o) for n, o in zip(step, last, strict=True))
            )
            last_dt = torch.where(accept, dt_eff, last_dt)
            t_next = t_cur + dt_eff
            last_t0 = torch.where(accept, t_cur, last_t0)
            last_t1 = torch.where(accept, t_next, last_t1)
            y = where(accept, y1, y)
            f = where(accept, f1, f)
            t_cur = torch.where(accept, t_next, t_cur)

            factor = step_factor_tensor(ratio, tableau.order, ctrl)
            if not _step_grad_mode(opts, first=False):
                factor = factor.detach()
                dt_c = dt_c.detach()
            dt = torch.where(active, (dt_c * factor).clamp(ctrl.min_step, ctrl.max_step), dt)

            non_finite = active & torch.isnan(ratio)
            active = t_cur < target
            underflow = active & ~(t_cur + dt > t_cur)
            n_steps += 1
            flags = torch.stack([active.any(), non_finite.any(), underflow.any()]).tolist()
            if flags[1]:
                fail("met non-finite values in the state")
            if flags[2]:
                fail("step size underflowed")
            running = flags[0]
        assert last is not None
        coeffs = quartic_coefficients(last[0], y, last[2], last[1], f, last_dt)
        target_t = t_tensor[i].to(device=device, dtype=f64) if time_grad else target
        x = (target_t - last_t0) / (last_t1 - last_t0)
        outputs.append(quartic_evaluate(coeffs, x))
    return outputs
