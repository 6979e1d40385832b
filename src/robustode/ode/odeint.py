"""``odeint``: a drop-in for ``torchdiffeq.odeint`` with controllable step semantics.

Change ``from torchdiffeq import odeint`` to ``from robustode.ode import odeint``
and the same call gives the same result (same accepted grid, outputs and
gradients as torchdiffeq 0.2.5 for euler, rk4, adaptive_heun, bosh3 and dopri5).
On top of that, per call:

* ``step_control="per_sample"`` — each sample gets its own steps, so its output
  no longer depends on the rest of the batch;
* ``detach_step_size`` — None (torchdiffeq: only the first step size is
  differentiable), True (none is) or False (all are);
* ``record=StepRecord()`` — accepted/rejected (t, dt) and forward/backward NFE;
* ``backend="torchdiffeq"`` — run torchdiffeq itself, for reference;
* ``options={"max_num_steps": n}`` — a step budget that raises
  :class:`SolverError` naming method, tolerances and time reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from .adaptive import AdaptiveOptions, solve_adaptive_batch, solve_adaptive_per_sample
from .controller import ControllerConfig
from .field import VectorField
from .fixed import solve_fixed
from .record import StepRecord
from .state import State
from .tableau import ADAPTIVE_METHODS, FIXED_METHODS, TABLEAUS

StateLike = torch.Tensor | Sequence[torch.Tensor]

METHODS = tuple(TABLEAUS)
STEP_CONTROLS = ("batch", "per_sample")
BACKENDS = ("native", "torchdiffeq")
DEFAULT_MAX_NUM_STEPS = 100_000
_ADAPTIVE_OPTIONS = {
    "first_step",
    "safety",
    "ifactor",
    "dfactor",
    "min_step",
    "max_step",
    "max_num_steps",
}
_FIXED_OPTIONS = {"step_size", "max_num_steps"}


def _as_state(y0: StateLike) -> tuple[State, bool]:
    if isinstance(y0, torch.Tensor):
        return (y0,), False
    if isinstance(y0, (tuple, list)) and y0 and all(isinstance(v, torch.Tensor) for v in y0):
        return tuple(y0), True
    raise TypeError("y0 must be a tensor or a non-empty tuple of tensors")


def _per_component(name: str, value, n: int) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries; the state has {n} tensors")
    out = tuple(float(v) for v in values)
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ValueError(f"{name} must be finite and ≥ 0, got {value}")
    return out


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


def _check_options(method: str, options: dict | None) -> dict:
    options = dict(options or {})
    allowed = _ADAPTIVE_OPTIONS if method in ADAPTIVE_METHODS else _FIXED_OPTIONS
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for method '{method}'; "
            f"accepted: {sorted(allowed)}"
        )
    max_steps = options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS)
    if int(max_steps) < 1:
        raise ValueError(f"max_num_steps must be ≥ 1, got {max_steps}")
    if "step_size" in options and options["step_size"] is not None:
        h = float(options["step_size"])
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"step_size must be a positive number, got {options['step_size']}")
    return options


def check_method(method: str | None) -> str:
    """Resolve ``None`` to dopri5 and reject unknown method names."""
    method = "dopri5" if method is None else method
    if method not in TABLEAUS:
        raise ValueError(f"unknown ODE method '{method}'; choose one of: {', '.join(METHODS)}")
    return method


def integrate(
    func: Callable,
    y0: State,
    is_tuple: bool,
    t: torch.Tensor,
    *,
    rtol,
    atol,
    method: str,
    options: dict,
    step_control: str,
    detach_step_size: bool | None,
    record: StepRecord,
) -> State:
    """Solve with the native engine; return one (len(t), ...) tensor per state tensor."""
    tableau = TABLEAUS[method]
    dtypes = {v.dtype for v in y0}
    devices = {v.device for v in y0}
    if len(dtypes) != 1 or len(devices) != 1 or not all(v.is_floating_point() for v in y0):
        raise ValueError("every tensor of y0 must be floating point, of one dtype and device")
    dtype, device = dtypes.pop(), devices.pop()
    rtol_c = _per_component("rtol", rtol, len(y0))
    atol_c = _per_component("atol", atol, len(y0))
    if step_control == "per_sample":
        sizes = {v.shape[0] if v.dim() else None for v in y0}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "step_control='per_sample' needs every state tensor to share a leading batch dim"
            )

    sign = 1.0
    if t.numel() > 1 and bool(t[0] > t[1]):
        t, sign = -t, -1.0
    fn = VectorField(func, is_tuple, record, dtype, device, sign)
    record.method, record.step_control = method, step_control
    max_steps = int(options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS))
    first_new_step = record.num_steps

    if t.numel() == 1:
        return tuple(torch.stack([v]) for v in y0)  # a copy, as torchdiffeq returns
    if tableau.adaptive:
        if max(rtol_c) == 0 and max(atol_c) == 0:
            raise ValueError("rtol and atol cannot both be 0 for an adaptive method")
        opts = AdaptiveOptions(
            rtol=rtol_c,
            atol=atol_c,
            controller=ControllerConfig(
                safety=float(options.get("safety", 0.9)),
                ifactor=float(options.get("ifactor", 10.0)),
                dfactor=float(options.get("dfactor", 0.2)),
                min_step=float(options.get("min_step", 0.0)),
                max_step=float(options.get("max_step", math.inf)),
            ),
            first_step=options.get("first_step"),
            max_num_steps=max_steps,
            detach_step_size=detach_step_size,
            time_sign=sign,
        )
        t64 = t.to(torch.promote_types(torch.float64, dtype))
        solver = solve_adaptive_per_sample if step_control == "per_sample" else solve_adaptive_batch
        solve = partial(solver, fn, tableau, y0, t64.detach().cpu().tolist(), t64, opts, record)
    else:
        solve = partial(
            solve_fixed, fn, tableau, y0, t, options.get("step_size"), record, max_steps
        )
    try:
        outputs = solve()
    finally:
        if sign < 0:  # also after a failure: that record is what the caller inspects
            record.negate_times(first_new_step)  # the caller's time, not s = -t
    return tuple(torch.stack([out[i] for out in outputs]) for i in range(len(y0)))


def odeint(
    func: Callable,
    y0: StateLike,
    t: torch.Tensor,
    *,
    rtol: float | Sequence[float] = 1e-7,
    atol: float | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    step_control: str = "batch",
    detach_step_size: bool | None = None,
    record: StepRecord | None = None,
    backend: str = "native",
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Solve dy/dt = func(t, y), y(t[0]) = y0, returning y at every time in ``t``.

    Same signature and return layout as ``torchdiffeq.odeint`` (a tensor of
    shape (len(t), *y0.shape), or a tuple of such for a tuple ``y0``); the
    keyword arguments after ``options`` are robustode's additions (module
    docstring). In per-sample mode ``func`` receives t as a (B,) tensor.
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
    if backend == "torchdiffeq":
        from .reference import torchdiffeq_odeint

        return torchdiffeq_odeint(func, y0, t, adjoint=False, **common)
    out = integrate(func, state, is_tuple, t, **common)
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
    method = check_method(method)
    if step_control not in STEP_CONTROLS:
        raise ValueError(
            f"unknown step_control '{step_control}'; choose one of: {', '.join(STEP_CONTROLS)}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    state, is_tuple = _as_state(y0)
    common = dict(
        rtol=rtol,
        atol=atol,
        method=method,
        options=_check_options(method, options),
        step_control=step_control,
        detach_step_size=detach_step_size,
        record=record if record is not None else StepRecord(),
    )
    return state, is_tuple, _check_time(t), common


__all__ = ["FIXED_METHODS", "METHODS", "odeint"]
