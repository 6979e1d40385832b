"""Adaptive Runge–Kutta integration with batch-shared or per-sample step control.

Batch mode reproduces torchdiffeq 0.2.5 (docs/references.md): time in float64 (or
``options["dtype"]``), an automatic first step that stays differentiable (later
step sizes detached), stages at t1 nudged one ulp below it, overshoot past
each output time and quartic interpolation back; ``step_t`` (steps end on
these times) and ``jump_t`` (and the derivative is re-evaluated just after
them), step callbacks, a ``norm=`` callable and event location. The loop keeps
time on the host and reads exactly one number from the device per step — the
error ratio that decides acceptance (an event search also reads the event
function's sign, as torchdiffeq does).

Per-sample mode runs the same formulas with a time, step size and accept
decision for every sample; finished or rejected samples are carried along
with masked updates, so a sample's result does not depend on its batch-mates.
The per-step host read is one flag vector (any still active, any non-finite,
any underflow, any crossed jump). Callbacks, ``norm=`` and events have
batch-wide meanings and are refused there (:func:`robustode.ode.odeint`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .arith import TimeArith
from .callbacks import StepCallbacks, no_callbacks
from .controller import (
    ControllerConfig,
    Norm,
    error_ratio,
    initial_step,
    next_step_size,
    step_factor_tensor,
)
from .errors import SolverError
from .events import find_event
from .field import VectorField
from .options import Tol, tolerance_min
from .record import StepRecord
from .runge_kutta import midpoint_value, rk_step
from .state import State, quartic_coefficients, quartic_evaluate, where
from .tableau import ButcherTableau


@dataclass(frozen=True)
class AdaptiveOptions:
    """Tolerances (one per state tensor) and controller settings of one solve."""

    rtol: tuple[Tol, ...]
    atol: tuple[Tol, ...]
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    first_step: float | None = None
    max_num_steps: int = 100_000
    # None: torchdiffeq (first step differentiable, later detached);
    # True: every step size detached; False: gradients flow through all of them.
    detach_step_size: bool | None = None
    # -1 when a decreasing grid is integrated as s = -t: messages show the caller's t.
    time_sign: float = 1.0
    time_dtype: torch.dtype = torch.float64
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    norm: Norm | None = None

    def describe(self, method: str) -> str:
        return f"{method} (rtol={_describe(self.rtol)}, atol={_describe(self.atol)})"


def _describe(tols: tuple[Tol, ...]):
    if all(isinstance(v, float) for v in tols):
        return tols[0] if len(set(tols)) == 1 else tols
    return "per-element"


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


def _prescribed_times(values: tuple[float, ...], t0: float, arith: TimeArith) -> list[float]:
    """torchdiffeq's step_t/jump_t handling: in the time dtype, those ≥ t0, sorted."""
    return sorted(v for v in (arith.round(x) for x in values) if v >= t0)


def _check_prescribed(step_t: list[float], jump_t: list[float]) -> None:
    both = step_t + jump_t
    if len(set(both)) != len(both):
        raise ValueError("step_t and jump_t must not have any repeated elements between them")


@dataclass
class _AcceptedStep:
    """The last accepted step: what the dense output between t0 and t1 needs."""

    t0: float | torch.Tensor
    t1: float | torch.Tensor
    dt: float | torch.Tensor
    y0: State
    y1: State
    f0: State
    f1: State
    ks: list[State]
    coefficients: list[State] | None = None
    # whether the cached coefficients were built with autograd on: the event
    # search evaluates the interpolant under no_grad first, its result needs a graph
    coefficients_graph: bool = False


class BatchSolver:
    """One batch-controlled adaptive solve, stepped on demand (torchdiffeq's RK state).

    Time values are host floats in the time dtype; ``t_ten``/``dt_ten`` are
    tensors only where a gradient flows through them (``t`` requiring grad, the
    differentiable first step, ``detach_step_size=False``).
    """

    def __init__(
        self,
        fn: VectorField,
        tableau: ButcherTableau,
        y0: State,
        t0: float,
        t0_ten: torch.Tensor | None,
        opts: AdaptiveOptions,
        record: StepRecord,
        callbacks: StepCallbacks | None = None,
    ) -> None:
        self.fn, self.tableau, self.opts, self.record = fn, tableau, opts, record
        self.callbacks = callbacks or no_callbacks()
        self.ta = TimeArith(opts.time_dtype)
        self.sa = TimeArith(fn.time_dtype)  # stage times: in the state's dtype
        self.device = y0[0].device
        self.t_val, self.t_ten = self.ta.round(t0), t0_ten
        self.y = y0
        self.last: _AcceptedStep | None = None
        self.step_t = _prescribed_times(opts.step_t, self.t_val, self.ta)
        self.jump_t = _prescribed_times(opts.jump_t, self.t_val, self.ta)
        _check_prescribed(self.step_t, self.jump_t)
        self.step_idx = min(bisect.bisect(self.step_t, self.t_val), len(self.step_t) - 1)
        self.jump_idx = min(bisect.bisect(self.jump_t, self.t_val), len(self.jump_t) - 1)

        self.f = fn(t0_ten if t0_ten is not None else self.t_val, y0)
        if opts.first_step is None:
            with torch.set_grad_enabled(_step_grad_mode(opts, first=True)):
                t_start = (
                    t0_ten
                    if t0_ten is not None
                    else torch.full((), self.t_val, dtype=opts.time_dtype, device=self.device)
                )
                h = initial_step(
                    fn,
                    t_start,
                    y0,
                    self.f,
                    tableau.order - 1,
                    opts.rtol,
                    opts.atol,
                    False,
                    opts.norm,
                    opts.time_dtype,
                )
            self.dt_val = float(h.detach())  # one host read per solve
            if math.isnan(self.dt_val):
                self._fail("met non-finite values in the state")
            self.dt_ten: torch.Tensor | None = h if h.requires_grad else None
        else:
            self.dt_val, self.dt_ten = self.ta.round(opts.first_step), None

    # ------------------------------------------------------------------ helpers
    def _fail(self, what: str) -> None:
        _raise(self.tableau.name, self.opts, what, self.t_val)

    def _time_tensor(self, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value
        # a fill, not a host-to-device copy: no synchronisation on a GPU
        return torch.full((), value, dtype=self.opts.time_dtype, device=self.device)

    def _stage_time_fn(self, base, dt, t1_stage) -> Callable:
        sa = self.sa

        def stage_time(c: float):
            if c == 1.0:
                return t1_stage
            if isinstance(base, float) and isinstance(dt, float):
                return sa.add(sa.round(base), sa.mul(sa.round(c), sa.round(dt)))
            s_dtype = self.fn.time_dtype
            b = base.to(s_dtype) if isinstance(base, torch.Tensor) else sa.round(base)
            if isinstance(dt, torch.Tensor):
                return b + dt.to(s_dtype) * c
            return b + sa.mul(sa.round(c), sa.round(dt))

        return stage_time

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """One attempted step: accepted (state advances) or rejected (dt shrinks)."""
        ctrl, ta, opts = self.opts.controller, self.ta, self.opts
        lo, hi = ta.round(ctrl.min_step), ta.round(ctrl.max_step)
        dt_val, dt_ten = self.dt_val, self.dt_ten
        if not math.isfinite(dt_val):
            dt_val, dt_ten = lo, None
        clamped = min(max(dt_val, lo), hi)
        if clamped != dt_val:
            dt_val, dt_ten = clamped, None
        t0 = self.t_val
        cb = self.callbacks
        if cb:
            cb.step(
                self._t0_for_callbacks(),
                self.y,
                dt_ten if dt_ten is not None else dt_val,
                opts.time_dtype,
                self.device,
            )
        t1 = ta.add(t0, dt_val)
        if not t1 > t0:
            self._fail(f"step size underflowed (dt={dt_val:.3g})")
        base = self.t_ten if self.t_ten is not None else t0
        tensor_time = isinstance(base, torch.Tensor) or dt_ten is not None
        t1_stage = None
        on_step = on_jump = False
        if self.step_t:
            nxt = self.step_t[self.step_idx]
            on_step = t0 < nxt < t1
            if on_step:
                t1, t1_stage = nxt, nxt
                dt_val = ta.sub(nxt, t0)
                dt_ten = nxt - self.t_ten if self.t_ten is not None else None
        if self.jump_t:
            nxt = self.jump_t[self.jump_idx]
            on_jump = t0 < nxt < ta.add(t0, dt_val)
            if on_jump:
                on_step = False
                t1, t1_stage = nxt, nxt
                dt_val = ta.sub(nxt, t0)
                dt_ten = nxt - self.t_ten if self.t_ten is not None else None
        dt = dt_ten if dt_ten is not None else dt_val
        if t1_stage is None:
            t1_stage = base + dt if tensor_time else t1

        stage_time = self._stage_time_fn(base, dt, t1_stage)
        y0, f0 = self.y, self.f
        y1, f1, err, ks = rk_step(self.fn, self.tableau, y0, f0, dt, stage_time, nudge_end=True)
        with torch.set_grad_enabled(_step_grad_mode(opts, first=False)):
            ratio = error_ratio(err, y0, y1, opts.rtol, opts.atol, False, opts.norm)
        r = float(ratio.detach())  # the one host read of this step
        if math.isnan(r):
            self._fail("met non-finite values in the state")
        accept = r <= 1
        if dt_val > hi:
            accept = False
        if dt_val <= lo:
            accept = True
        self.record.add_step(t0, dt_val, accept)
        if accept:
            if cb:
                cb.accept(self._t0_for_callbacks(), y0, dt, opts.time_dtype, self.device)
            self.last = _AcceptedStep(base, t1_stage if tensor_time else t1, dt, y0, y1, f0, f1, ks)
            if on_step and self.step_idx != len(self.step_t) - 1:
                self.step_idx += 1
            if on_jump:
                if self.jump_idx != len(self.jump_t) - 1:
                    self.jump_idx += 1
                # past a discontinuity of f: evaluate it on the new side
                f1 = self.fn(t1_stage, y1, nudge=1)
            # torchdiffeq's t1 = t0 + dt carries the graph of a differentiable dt (the
            # first step) or t into every later time; a prescribed time carries none
            self.t_ten = t1_stage if isinstance(t1_stage, torch.Tensor) else None
            self.t_val, self.y, self.f = t1, y1, f1
        elif cb:
            cb.reject(self._t0_for_callbacks(), y0, dt, opts.time_dtype, self.device)
        self.dt_val = next_step_size(dt_val, r, self.tableau.order, ctrl, ta)
        if _step_grad_mode(opts, first=False) and ratio.requires_grad:
            factor = step_factor_tensor(ratio, self.tableau.order, ctrl, opts.time_dtype)
            dt_t = dt if isinstance(dt, torch.Tensor) else self._time_tensor(dt)
            self.dt_ten = (dt_t * factor).clamp(ctrl.min_step, ctrl.max_step)
        else:
            self.dt_ten = None

    def _t0_for_callbacks(self):
        return self.t_ten if self.t_ten is not None else self._time_tensor(self.t_val)

    # ------------------------------------------------------------------ outputs
    def advance(self, target: float, target_ten: torch.Tensor | None) -> State:
        """Step until the solve passes ``target``; return the state there (dense output)."""
        n_steps = 0  # the budget is per output interval, as in torchdiffeq
        while target > self.t_val:
            if n_steps >= self.opts.max_num_steps:
                self._fail(_budget_message(self.opts, target))
            self.step()
            n_steps += 1
        return self.dense(target_ten if target_ten is not None else self.ta.round(target))

    def dense(self, target) -> State:
        step = self.last
        assert step is not None
        if step.coefficients is None or (torch.is_grad_enabled() and not step.coefficients_graph):
            y_mid = midpoint_value(self.tableau, step.y0, step.ks, step.dt)
            step.coefficients = quartic_coefficients(
                step.y0, step.y1, y_mid, step.f0, step.ks[-1], step.dt
            )
            step.coefficients_graph = torch.is_grad_enabled()
        if any(isinstance(v, torch.Tensor) for v in (target, step.t0, step.t1)):
            x = (target - step.t0) / (step.t1 - step.t0)  # host floats mix in as scalars
        else:
            ta = self.ta
            x = ta.div(ta.sub(target, step.t0), ta.sub(step.t1, step.t0))
        return quartic_evaluate(step.coefficients, x)

    def advance_until_event(self, event_fn: Callable) -> tuple[torch.Tensor, State]:
        """Step until ``event_fn(t, y)`` changes sign; locate the root on the dense output
        (torchdiffeq's bisection, to within atol) and return (event time, state there)."""
        t_now = self._time_tensor(self.t_val)
        value = event_fn(t_now, self.y)
        if bool(value == 0):
            return t_now, self.y
        sign0 = torch.sign(value)
        n_steps = 0
        while bool(sign0 == torch.sign(event_fn(self._time_tensor(self.t_val), self.y))):
            if n_steps >= self.opts.max_num_steps:
                self._fail(
                    f"exceeded max_num_steps={self.opts.max_num_steps} before the event "
                    "(raise it with options={'max_num_steps': n})"
                )
            self.step()
            n_steps += 1
        step = self.last
        assert step is not None
        tol = tolerance_min(self.opts.atol)
        return find_event(
            self.dense,
            sign0,
            self._time_tensor(step.t0).detach(),
            self._time_tensor(step.t1).detach(),
            event_fn,
            tol,
        )


def solve_adaptive_batch(
    fn: VectorField,
    tableau: ButcherTableau,
    y0: State,
    t_values: list[float],
    t_tensor: torch.Tensor,
    opts: AdaptiveOptions,
    record: StepRecord,
    callbacks: StepCallbacks | None = None,
) -> list[State]:
    """Integrate with one step size for the whole batch; return the state at each t."""
    time_grad = t_tensor.requires_grad and torch.is_grad_enabled()
    t_ten = t_tensor.to(device=y0[0].device, dtype=opts.time_dtype) if time_grad else None
    solver = BatchSolver(
        fn, tableau, y0, t_values[0], None if t_ten is None else t_ten[0], opts, record, callbacks
    )
    outputs: list[State] = [y0]
    for i in range(1, len(t_values)):
        outputs.append(solver.advance(t_values[i], None if t_ten is None else t_ten[i]))
    return outputs


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
    tdt = opts.time_dtype
    s_dtype = fn.time_dtype
    time_grad = t_tensor.requires_grad and torch.is_grad_enabled()
    ta = TimeArith(tdt)
    t_start = ta.round(t_values[0])
    t_cur = torch.full((batch,), t_start, dtype=tdt, device=device)
    if time_grad:
        t_cur = t_tensor[0].to(device=device, dtype=tdt).expand(batch) + 0.0

    f0 = fn(t_cur, y0)
    if opts.first_step is None:
        with torch.set_grad_enabled(_step_grad_mode(opts, first=True)):
            dt = initial_step(
                fn, t_cur, y0, f0, tableau.order - 1, opts.rtol, opts.atol, True, None, tdt
            )
    else:
        dt = torch.full((batch,), ta.round(opts.first_step), dtype=tdt, device=device)

    prescribed = {}
    for name, values in (("step", opts.step_t), ("jump", opts.jump_t)):
        times = _prescribed_times(values, t_start, ta)
        prescribed[name] = times
    _check_prescribed(prescribed["step"], prescribed["jump"])
    grids = {name: torch.tensor(v, dtype=tdt, device=device) for name, v in prescribed.items() if v}
    index = {
        name: torch.full(
            (batch,),
            min(bisect.bisect(prescribed[name], t_start), len(prescribed[name]) - 1),
            dtype=torch.long,
            device=device,
        )
        for name in grids
    }

    y, f = y0, f0
    # Per sample, the last accepted step's start state, start derivative and
    # midpoint value, its end derivative (the last stage) and its times.
    last: tuple[State, State, State, State] | None = None
    last_t0 = t_cur
    last_t1 = t_cur
    last_dt = torch.zeros_like(t_cur)
    outputs: list[State] = [y0]
    zero = torch.zeros((), dtype=tdt, device=device)
    lo, hi = ta.round(ctrl.min_step), ta.round(ctrl.max_step)

    def fail(what: str) -> None:  # at the time of the sample that lags furthest behind
        _raise(tableau.name, opts, what, float(t_cur.detach().min()))

    for i in range(1, len(t_values)):
        target = ta.round(t_values[i])
        n_steps = 0  # per output interval, as in batch mode
        active = t_cur < target
        running = bool(active.any())  # one host read per output time
        while running:
            if n_steps >= opts.max_num_steps:
                fail(_budget_message(opts, target))
            dt_c = torch.nan_to_num(dt, nan=lo).clamp(lo, hi)
            t1 = t_cur + dt_c
            on = {}
            for name in ("step", "jump"):
                if name not in grids:
                    continue
                nxt = grids[name][index[name]]
                span_end = t1 if name == "step" else t_cur + dt_c
                hit = active & (t_cur < nxt) & (nxt < span_end)
                if name == "jump" and "step" in on:
                    on["step"] = on["step"] & ~hit
                on[name] = hit
                t1 = torch.where(hit, nxt, t1)
                dt_c = torch.where(hit, nxt - t_cur, dt_c)
            dt_eff = torch.where(active, dt_c, zero)
            t1 = torch.where(active, t1, t_cur)

            def stage_time(c: float, t0=t_cur, h=dt_eff, t_end=t1):
                return t_end if c == 1.0 else t0.to(s_dtype) + h.to(s_dtype) * c

            y1, f1, err, ks = rk_step(fn, tableau, y, f, dt_eff, stage_time, nudge_end=True)
            with torch.set_grad_enabled(_step_grad_mode(opts, first=False)):
                ratio = error_ratio(err, y, y1, opts.rtol, opts.atol, per_sample=True)
            accept = ((ratio <= 1) & ~(dt_c > hi)) | (dt_c <= lo)
            accept = accept & active
            record.add_step(t_cur.detach(), dt_eff.detach(), accept, active)

            step = (y, f, midpoint_value(tableau, y, ks, dt_eff), ks[-1])
            last = (
                step
                if last is None
                else tuple(where(accept, n, o) for n, o in zip(step, last, strict=True))
            )
            last_dt = torch.where(accept, dt_eff, last_dt)
            last_t0 = torch.where(accept, t_cur, last_t0)
            last_t1 = torch.where(accept, t1, last_t1)
            y = where(accept, y1, y)
            f = where(accept, f1, f)
            t_cur = torch.where(accept, t1, t_cur)
            for name, hit in on.items():
                advance = accept & hit & (index[name] < len(prescribed[name]) - 1)
                index[name] = index[name] + advance.long()
            jumped = accept & on["jump"] if "jump" in on else None

            factor = step_factor_tensor(ratio, tableau.order, ctrl, tdt)
            if not _step_grad_mode(opts, first=False):
                factor = factor.detach()
                dt_c = dt_c.detach()
            dt = torch.where(active, (dt_c * factor).clamp(lo, hi), dt)

            non_finite = active & torch.isnan(ratio)
            active = t_cur < target
            underflow = active & ~(t_cur + dt > t_cur)
            n_steps += 1
            checks = [active.any(), non_finite.any(), underflow.any()]
            if jumped is not None:
                checks.append(jumped.any())
            flags = torch.stack(checks).tolist()
            if flags[1]:
                fail("met non-finite values in the state")
            if flags[2]:
                fail("step size underflowed")
            if jumped is not None and flags[3]:
                # past a discontinuity of f: re-evaluate it on the new side (every
                # sample is evaluated; only those that crossed a jump keep it)
                f = where(jumped, fn(t_cur, y, nudge=1), f)
            running = flags[0]
        assert last is not None
        coeffs = quartic_coefficients(last[0], y, last[2], last[1], last[3], last_dt)
        target_t = t_tensor[i].to(device=device, dtype=tdt) if time_grad else target
        x = (target_t - last_t0) / (last_t1 - last_t0)
        outputs.append(quartic_evaluate(coeffs, x))
    return outputs
