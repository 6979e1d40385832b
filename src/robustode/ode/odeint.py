"""``odeint``: a drop-in for ``torchdiffeq.odeint`` with controllable step semantics.

Change ``from torchdiffeq import odeint`` to ``from robustode.ode import odeint``
and the same call gives the same result: every method and option of
torchdiffeq 0.2.5 (bar ``scipy_solver``, which runs with
``backend="torchdiffeq"``), its step callbacks, events, complex states and
warnings (docs/ode-engine.md lists what is equal to the bit and what within a
bound). On top of that, per call:

* ``step_control="per_sample"`` — each sample gets its own steps, so its output
  no longer depends on the rest of the batch;
* ``detach_step_size`` — None (torchdiffeq: only the first step size is
  differentiable), True (none is) or False (all are);
* ``record=StepRecord()`` — accepted/rejected (t, dt) and forward/backward NFE;
* ``backend="torchdiffeq"`` — run torchdiffeq itself, for reference;
* ``step_semantics="torchdiffeq-2019"`` — the adaptive solvers as torchdiffeq had
  them before its 0.1.0 rewrite (every step size differentiable, error norm per
  state tensor; :mod:`.semantics2019`);
* ``options={"max_num_steps": n}`` — a step budget that raises
  :class:`SolverError` naming method, tolerances and time reached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .adams import AdamsStepper
from .adaptive import AdaptiveOptions, BatchSolver, solve_adaptive_batch, solve_adaptive_per_sample
from .arith import real_dtype
from .callbacks import StepCallbacks, find_callbacks, warn_unsupported
from .controller import ControllerConfig
from .events import combine_event_functions
from .field import VectorField
from .fixed import FixedGridSolver
from .fixed_steps import FIXED_STEPS
from .options import (
    DEFAULT_MAX_NUM_STEPS,
    AdaptiveSettings,
    FixedSettings,
    parse_options,
    tolerance_max,
    tolerance_min,
    tolerances,
)
from .record import StepRecord
from .semantics2019 import (
    DEFAULT_SEMANTICS,
    LEGACY_SEMANTICS,
    STEP_SEMANTICS,
    check_step_semantics,
    integrate_2019,
)
from .state import State
from .tableau import ADAMS_METHODS, ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS

StateLike = torch.Tensor | Sequence[torch.Tensor]

METHODS = (*TABLEAUS, *ADAMS_METHODS)
# torchdiffeq's scipy bridge: run it through backend="torchdiffeq"
REFERENCE_ONLY_METHODS = ("scipy_solver",)
STEP_CONTROLS = ("batch", "per_sample")
BACKENDS = ("native", "torchdiffeq")


def _as_state(y0: StateLike) -> tuple[State, bool]:
    if isinstance(y0, torch.Tensor):
        return (y0,), False
    if isinstance(y0, (tuple, list)) and y0 and all(isinstance(v, torch.Tensor) for v in y0):
        return tuple(y0), True
    raise TypeError("y0 must be a tensor or a non-empty tuple of tensors")


def _check_time(t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
        raise ValueError("t must be a 1-D floating-point tensor of output times")
    if t.numel() == 0:
        raise ValueError("t must hold at least one time")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError("t must hold finite times")
    if t.numel() > 1:
        d = t.detach()[1:] - t.detach()[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            raise ValueError("t must be strictly increasing or strictly decreasing")
    return t


def check_method(method: str | None, backend: str = "native") -> str:
    """Resolve ``None`` to dopri5 and reject unknown method names."""
    method = "dopri5" if method is None else method
    if method in REFERENCE_ONLY_METHODS:
        if backend == "torchdiffeq":
            return method
        raise ValueError(
            f"method '{method}' (scipy.integrate.solve_ivp through torchdiffeq) runs only with "
            "backend='torchdiffeq'; robustode has no native scipy bridge"
        )
    if method not in METHODS:
        raise ValueError(f"unknown ODE method '{method}'; choose one of: {', '.join(METHODS)}")
    return method


def _refuse(step_control: str, what: str, why: str) -> None:
    raise ValueError(f"{what} cannot be combined with step_control='{step_control}': {why}")


@dataclass
class PreparedSolve:
    """A checked call: the wrapped field, options, tolerances and time direction."""

    fn: VectorField
    method: str
    settings: AdaptiveSettings | FixedSettings
    rtol: tuple
    atol: tuple
    t: torch.Tensor  # increasing (s = sign·t)
    user_t0: torch.Tensor
    sign: float
    callbacks: StepCallbacks
    record: StepRecord


def prepare_solve(
    func,
    y0: State,
    is_tuple: bool,
    t: torch.Tensor,
    *,
    rtol,
    atol,
    method,
    options,
    step_control,
    record,
    callbacks,
) -> PreparedSolve:
    dtypes = {v.dtype for v in y0}
    devices = {v.device for v in y0}
    if (
        len(dtypes) != 1
        or len(devices) != 1
        or not all(v.is_floating_point() or v.is_complex() for v in y0)
    ):
        raise ValueError(
            "every tensor of y0 must be floating point (or complex), of one dtype and device"
        )
    dtype, device = dtypes.pop(), devices.pop()
    # t may stay on the host (SolverConfig keeps it there): the engine reads it there
    # anyway, so it is not moved to y0's device (torchdiffeq moves it, with a warning)
    shapes = [v.shape for v in y0]
    rtol_c = tolerances("rtol", rtol, shapes, is_tuple, torch.float64, device)
    atol_c = tolerances("atol", atol, shapes, is_tuple, torch.float64, device)
    if step_control == "per_sample":
        sizes = {v.shape[0] if v.dim() else None for v in y0}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "step_control='per_sample' needs every state tensor to share a leading batch dim"
            )
    user_t0 = t[0]
    sign = 1.0
    if t.numel() > 1 and bool(t[0] > t[1]):
        t, sign = -t, -1.0
    settings = parse_options(method, options, time_sign=sign)
    fn = VectorField(func, is_tuple, record, dtype, device, sign)
    record.method = method
    # fixed grids are shared by every sample: their record is the one grid
    record.step_control = step_control if method in ADAPTIVE_METHODS else "batch"
    if callbacks is None:
        found = find_callbacks(func)
        warn_unsupported(method, found)
        callbacks = StepCallbacks(found, fn.layout, sign)
    return PreparedSolve(fn, method, settings, rtol_c, atol_c, t, user_t0, sign, callbacks, record)


def integrate(
    func: Callable,
    y0: State,
    is_tuple: bool,
    t: torch.Tensor,
    *,
    rtol,
    atol,
    method: str,
    options: dict | None,
    step_control: str,
    detach_step_size: bool | None,
    record: StepRecord,
    event_fn: Callable | None = None,
    callbacks: StepCallbacks | None = None,
):
    """Solve with the native engine.

    Returns one (len(t), ...) tensor per state tensor, or with ``event_fn``
    ``(event_t, states)`` with states of length 2 (start and event).
    ``callbacks`` replaces the ones found on ``func`` (the adjoint's backward
    solve passes the ``*_adjoint`` ones).
    """
    if event_fn is not None and len(t) != 2:
        raise ValueError(
            f"We require len(t) == 2 when in event handling mode, but got len(t)={len(t)}."
        )
    p = prepare_solve(
        func,
        y0,
        is_tuple,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        step_control=step_control,
        record=record,
        callbacks=callbacks,
    )
    adaptive = method in ADAPTIVE_METHODS
    per_sample = step_control == "per_sample"
    if per_sample and adaptive:
        if p.callbacks:
            _refuse(
                step_control,
                "step callbacks (callback_step, …)",
                "they take one (t0, dt) per step, per-sample steps have one per sample",
            )
        if p.settings.norm is not None:
            _refuse(
                step_control,
                "options['norm']",
                "a norm gives one number for the batch; per-sample control needs one "
                "per sample (the default norm)",
            )
        if event_fn is not None:
            _refuse(step_control, "event_fn", "the event time is one for the whole batch")
    if per_sample and method in ("implicit_adams", "fixed_adams"):
        _refuse(
            step_control,
            f"method '{method}'",
            "its corrector's convergence test spans the batch; explicit_adams or "
            "step_control='batch'",
        )

    sign, fn = p.sign, p.fn
    internal_event = None
    if event_fn is not None:
        combined = combine_event_functions(event_fn, p.user_t0, fn.layout(y0))

        def internal_event(s, ys):
            return 1.0 * combined(-s if sign < 0 else s, fn.layout(ys))

    first_new_step = record.num_steps
    if p.t.numel() == 1:
        return tuple(torch.stack([v]) for v in y0)  # a copy, as torchdiffeq returns
    try:
        if adaptive:
            opts = adaptive_options(p, y0, detach_step_size)
            result = _adaptive(p, opts, y0, per_sample, internal_event)
        else:
            result = _fixed(p, func, y0, internal_event)
    finally:
        if sign < 0:  # also after a failure: that record is what the caller inspects
            record.negate_times(first_new_step)  # the caller's time, not s = -t
    if event_fn is None:
        return tuple(torch.stack([out[i] for out in result]) for i in range(len(y0)))
    event_t, y_event = result
    event_t = event_t.to(device=y0[0].device, dtype=p.user_t0.dtype)  # as torchdiffeq's
    if sign < 0:
        event_t = -event_t
    return event_t, tuple(torch.stack([a, b]) for a, b in zip(y0, y_event, strict=True))


def adaptive_options(p: PreparedSolve, y0: State, detach_step_size) -> AdaptiveOptions:
    """The adaptive solver's settings for a prepared call."""
    if tolerance_max(p.rtol) == 0 and tolerance_max(p.atol) == 0:
        raise ValueError("rtol and atol cannot both be 0 for an adaptive method")
    settings = p.settings
    time_dtype = torch.promote_types(settings.dtype, real_dtype(y0[0].dtype))
    user_norm, fn = settings.norm, p.fn
    norm = None
    if user_norm is not None:

        def norm(values):
            return user_norm(fn.layout(values))

    return AdaptiveOptions(
        rtol=p.rtol,
        atol=p.atol,
        controller=ControllerConfig(
            safety=settings.safety,
            ifactor=settings.ifactor,
            dfactor=settings.dfactor,
            min_step=settings.min_step,
            max_step=settings.max_step,
        ),
        first_step=settings.first_step,
        max_num_steps=settings.max_num_steps,
        detach_step_size=detach_step_size,
        time_sign=p.sign,
        time_dtype=time_dtype,
        step_t=settings.step_t or (),
        jump_t=settings.jump_t or (),
        norm=norm,
    )


def _adaptive(p: PreparedSolve, opts: AdaptiveOptions, y0, per_sample, internal_event):
    tableau = TABLEAUS[p.method]
    t_time = p.t.to(opts.time_dtype)
    t_values = t_time.detach().cpu().tolist()
    if internal_event is not None:
        time_grad = p.t.requires_grad and torch.is_grad_enabled()
        t0_ten = t_time[0].to(y0[0].device) if time_grad else None
        solver = BatchSolver(p.fn, tableau, y0, t_values[0], t0_ten, opts, p.record, p.callbacks)
        return solver.advance_until_event(internal_event)
    if per_sample:
        return solve_adaptive_per_sample(p.fn, tableau, y0, t_values, t_time, opts, p.record)
    return solve_adaptive_batch(p.fn, tableau, y0, t_values, t_time, opts, p.record, p.callbacks)


def _fixed(p: PreparedSolve, func, y0, internal_event):
    if p.method in ADAMS_METHODS:
        stepper = AdamsStepper(p.settings, p.rtol, p.atol)
    else:
        stepper = FIXED_STEPS[p.method]
    solver = FixedGridSolver(
        p.fn,
        p.method,
        stepper,
        y0,
        p.settings,
        p.record,
        p.callbacks,
        event_tol=tolerance_min(p.atol),
        user_func=func,
        time_sign=p.sign,
    )
    if internal_event is not None:
        return solver.integrate_until_event(p.t[0], internal_event)
    return solver.integrate(p.t)


def odeint(
    func: Callable,
    y0: StateLike,
    t: torch.Tensor,
    *,
    rtol: float | Sequence[float] | torch.Tensor = 1e-7,
    atol: float | Sequence[float] | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
    step_control: str = "batch",
    detach_step_size: bool | None = None,
    record: StepRecord | None = None,
    backend: str = "native",
    step_semantics: str = DEFAULT_SEMANTICS,
):
    """Solve dy/dt = func(t, y), y(t[0]) = y0, returning y at every time in ``t``.

    Same signature and return layout as ``torchdiffeq.odeint`` (a tensor of
    shape (len(t), *y0.shape), or a tuple of such for a tuple ``y0``; with
    ``event_fn``, ``(event_t, solution)``); the keyword arguments after
    ``event_fn`` are robustode's additions (module docstring). In per-sample
    mode ``func`` receives t as a (B,) tensor.
    """
    state, is_tuple, t, common = prepare_call(
        y0,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        step_control=step_control,
        detach_step_size=detach_step_size,
        record=record,
        backend=backend,
    )
    check_step_semantics(step_semantics, common["method"])
    if step_semantics == LEGACY_SEMANTICS and common["method"] in ADAPTIVE_METHODS:
        return _odeint_2019(func, state, is_tuple, t, event_fn, backend, common)
    if backend == "torchdiffeq":
        from .reference import torchdiffeq_odeint

        return torchdiffeq_odeint(func, y0, t, adjoint=False, event_fn=event_fn, **common)
    out = integrate(func, state, is_tuple, t, event_fn=event_fn, **common)
    if event_fn is not None:
        event_t, out = out
        return event_t, (out if is_tuple else out[0])
    return out if is_tuple else out[0]


def _odeint_2019(func, state, is_tuple, t, event_fn, backend, common):
    """An adaptive solve with torchdiffeq's pre-0.1.0 semantics (:mod:`.semantics2019`)."""
    unsupported = [
        name
        for name, present in (
            ("event_fn", event_fn is not None),
            ("backend='torchdiffeq'", backend != "native"),
            ("step_control='per_sample'", common["step_control"] != "batch"),
        )
        if present
    ]
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)} cannot be combined with step_semantics="
            f"'{LEGACY_SEMANTICS}': that torchdiffeq had one batch-shared step control and no "
            "events, and robustode reproduces it natively"
        )
    out = integrate_2019(
        func,
        state,
        is_tuple,
        t,
        rtol=common["rtol"],
        atol=common["atol"],
        method=common["method"],
        options=common["options"],
        record=common["record"],
        detach_step_size=common["detach_step_size"],
    )
    return out if is_tuple else out[0]


def prepare_call(
    y0: StateLike,
    t,
    *,
    rtol,
    atol,
    method,
    options,
    step_control,
    detach_step_size,
    record,
    backend,
) -> tuple[State, bool, torch.Tensor, dict]:
    """Validate the arguments shared by ``odeint`` and ``odeint_adjoint``.

    Returns the state as a tuple, whether the caller passed a tuple, the
    checked times, and the keyword arguments of one solve.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    method = check_method(method, backend)
    if step_control not in STEP_CONTROLS:
        raise ValueError(
            f"unknown step_control '{step_control}'; choose one of: {', '.join(STEP_CONTROLS)}"
        )
    if detach_step_size not in (None, True, False):
        raise ValueError("detach_step_size must be None, True or False")
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    state, is_tuple = _as_state(y0)
    common = dict(
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        step_control=step_control,
        detach_step_size=detach_step_size,
        record=record if record is not None else StepRecord(),
    )
    return state, is_tuple, _check_time(t), common


__all__ = ["DEFAULT_MAX_NUM_STEPS", "FIXED_METHODS", "METHODS", "STEP_SEMANTICS", "odeint"]
