"""Event handling: integrate until ``event_fn(t, y)`` crosses zero (torchdiffeq 0.2.5 semantics).

``odeint(..., event_fn=g)`` takes ``t = [t0, anything]``, integrates from t0
until g changes sign and returns ``(event_t, solution)`` with ``solution`` the
states at t0 and at the event. The crossing is located by bisection on the
solver's dense output until the bracket is below ``atol`` (the quartic of the
adaptive methods; for fixed-grid methods, which then need ``step_size``, the
linear or cubic interpolant). A multivariate g stops at the first of its
components to cross: each is made positive at t0 and their minimum is watched.

The solution's gradient flows through the dense output, but not through the
event time (it is found without a graph). :func:`odeint_event` adds that
link: by the implicit function theorem, moving the state at the event moves
the event time by −(∂g/∂y · δy) / (dg/dt), with dg/dt = ∂g/∂t + ∂g/∂y · f.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.functional import vjp

from .state import State


def find_event(
    interp: Callable, sign0: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, event_fn, tol: float
) -> tuple[torch.Tensor, State]:
    """Bisect [t0, t1] (a bracket of the sign change) to below ``tol``; return the
    midpoint of the final bracket and the interpolated state there."""
    with torch.no_grad():
        n = torch.ceil(torch.log((t1 - t0) / tol) / math.log(2.0))
        for _ in range(int(n.item())):
            t_mid = (t1 + t0) / 2.0
            same = sign0 == torch.sign(event_fn(t_mid, interp(t_mid)))
            t0 = torch.where(same, t_mid, t0)
            t1 = torch.where(same, t1, t_mid)
        event_t = (t0 + t1) / 2.0
    return event_t, interp(event_t)


def combine_event_functions(event_fn: Callable, t0: torch.Tensor, y0) -> Callable:
    """One scalar event function: every component positive at t0, their minimum."""
    with torch.no_grad():
        initial_signs = torch.sign(event_fn(t0, y0))

    def combined(t, y):
        return torch.min(event_fn(t, y) * initial_signs)

    return combined


class _EventGradient(torch.autograd.Function):
    """Identity on (event_t, state at the event) whose backward adds the state's
    dependence through the event time (torchdiffeq's ImplicitFnGradientRerouting)."""

    @staticmethod
    def forward(ctx, func, event_fn, event_t, *state):
        ctx.func, ctx.event_fn = func, event_fn
        ctx.save_for_backward(event_t, *state)
        return (event_t.detach(), *(s.detach() for s in state))

    @staticmethod
    def backward(ctx, grad_t, *grad_state):
        event_t, *state = ctx.saved_tensors
        event_t = event_t.detach().clone().requires_grad_(True)
        state = [s.detach().clone().requires_grad_(True) for s in state]
        grad_state = [
            torch.zeros_like(s) if g is None else g for g, s in zip(grad_state, state, strict=True)
        ]
        grad_t = torch.zeros_like(event_t) if grad_t is None else grad_t
        f_val = ctx.func(event_t, tuple(state))
        with torch.enable_grad():
            c, (par_dt, *dstate) = vjp(lambda t, *ys: ctx.event_fn(t, ys), (event_t, *state))
        dcdt = par_dt + sum(torch.sum(d * f) for d, f in zip(dstate, f_val, strict=True))
        grad_t = grad_t + sum(torch.sum(g * f) for g, f in zip(grad_state, f_val, strict=True))
        scale = (-grad_t / (dcdt + 1e-12)).reshape_as(c)
        return (None, None, None, *(g + d * scale for g, d in zip(grad_state, dstate, strict=True)))


def odeint_event(
    func: Callable,
    y0,
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable | None = None,
    **kwargs,
):
    """Integrate from ``t0`` until ``event_fn`` crosses zero; the event time is differentiable.

    Same signature and results as ``torchdiffeq.odeint_event``: returns
    ``(event_t, solution)`` with ``solution`` the states at t0 and at the event;
    ``odeint_interface`` is :func:`robustode.ode.odeint` (default) or
    :func:`robustode.ode.odeint_adjoint`; ``kwargs`` go to it (robustode's
    ``record=``, ``backend=`` included).
    """
    if odeint_interface is None:
        from .odeint import odeint as odeint_interface
    if not isinstance(t0, torch.Tensor):
        raise ValueError("t0 must be a tensor holding the start time")
    start = t0.reshape(-1)
    if start.numel() != 1:
        raise ValueError(f"t0 must hold one time, got shape {tuple(t0.shape)}")
    t = torch.cat([start, start.detach() + (-1.0 if reverse_time else 1.0)])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

    is_tuple = not isinstance(y0, torch.Tensor)
    sol = tuple(solution) if is_tuple else (solution,)
    state_t = tuple(s[-1] for s in sol)
    sign = -1.0 if reverse_time else 1.0
    y_start = tuple(y0) if is_tuple else y0
    combined = combine_event_functions(event_fn, t[0], y_start)

    def layout(ys):
        return tuple(ys) if is_tuple else ys[0]

    # The gradient is taken in the solver's time s = sign·t, as torchdiffeq takes it.
    def func_s(s, ys):
        s = s.to(ys[0].abs().dtype)
        out = func(sign * s, layout(ys))
        out = tuple(out) if is_tuple else (out,)
        return tuple(sign * o for o in out) if sign < 0 else out

    def event_s(s, ys):
        return combined(sign * s, layout(ys))

    event_t, *state_t = _EventGradient.apply(func_s, event_s, sign * event_t, *state_t)
    event_t = sign * event_t
    merged = tuple(torch.cat([s[:-1], st[None]], dim=0) for s, st in zip(sol, state_t, strict=True))
    return event_t, (merged if is_tuple else merged[0])
