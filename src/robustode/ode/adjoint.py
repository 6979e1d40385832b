"""Gradients by the adjoint method: O(1) memory in the number of solver steps.

Forward: solve without building a graph and keep only the outputs. Backward,
between consecutive output times t_i → t_{i−1}, solve the augmented system
(Chen et al. 2018, eq. 4 and appendix B) backwards in time:

    dy/dt = f(t, y),   da/dt = −aᵀ ∂f/∂y,   dθ/dt = −aᵀ ∂f/∂θ,   dτ/dt = −aᵀ ∂f/∂t,

from a(t_i) = ∂L/∂y(t_i), θ(t_i) = running parameter gradient, τ the time
gradient (∂L/∂t_i = f(t_i, y_i) · ∂L/∂y(t_i) for i ≥ 1, ∂L/∂t_0 from τ).
Each augmented evaluation is one vector–Jacobian product of ``func``. The
backward solve uses batch step control over the augmented state whatever the
forward used, with torchdiffeq 0.2.5's semantics throughout:

* ``adjoint_rtol/atol/method/options`` default to the forward ones (options
  without ``norm``); ``adjoint_method`` other than ``method`` with ``options``
  needs ``adjoint_options``;
* the backward norm is max(|τ|, ‖y‖, ‖a‖, ‖θ‖) with ‖·‖ the forward norm for y
  and a and the RMS per parameter; ``adjoint_options={"norm": "seminorm"}``
  drops the parameters from it (Kidger et al., "Hey, that's not an ODE",
  2021), a callable receives (τ, *y, *a, *θ);
* the graph node of the output carries ``adjoint_options`` (``out.grad_fn.
  adjoint_options``; for a tuple state the outputs are slices of one flat
  tensor, as torchdiffeq's are), whose ``norm`` is read at backward time and
  takes torchdiffeq's layout (τ, y, a, *θ) with y and a flat for tuple states;
* ``callback_*_adjoint`` defined on ``func`` are called during the backward
  solve with that layout;
* with ``event_fn`` the backward runs from the event time, which itself gets
  no gradient (:func:`robustode.ode.odeint_event` adds it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .callbacks import ADJOINT_CALLBACK_NAMES, StepCallbacks, find_callbacks, warn_unsupported
from .controller import state_norm
from .odeint import StateLike, check_method, integrate, prepare_call
from .record import StepRecord
from .state import State
from .tableau import ADAPTIVE_METHODS


def _flat(parts: Sequence[torch.Tensor], lead: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1)


def _unflat(flat: torch.Tensor, lead: tuple[int, ...], shapes) -> tuple[torch.Tensor, ...]:
    out, total = [], 0
    for shape in shapes:
        n = shape.numel()
        out.append(flat[..., total : total + n].view((*lead, *shape)))
        total += n
    return tuple(out)


class AdjointNorm:
    """The backward solve's norm as torchdiffeq builds it (``adjoint_options["norm"]``).

    Called with torchdiffeq's layout (τ, y, a, *θ) — y and a flat for a tuple
    state; :meth:`native` takes robustode's augmented tuple (τ, *y, *a, *θ).
    """

    def __init__(self, kind: str, shapes, is_tuple: bool, forward_norm, custom=None) -> None:
        self.kind, self.shapes, self.is_tuple = kind, list(shapes), is_tuple
        self.forward_norm, self.custom = forward_norm, custom
        self.n = len(self.shapes)

    def _state(self, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.forward_norm is None:
            return state_norm(parts, False)
        return torch.as_tensor(self.forward_norm(parts if self.is_tuple else parts[0])).abs()

    def native(self, aug: State) -> torch.Tensor:
        if self.custom is not None:
            return torch.as_tensor(self.custom(aug))
        n = self.n
        t, y, a, p = aug[0], aug[1 : 1 + n], aug[1 + n : 1 + 2 * n], aug[1 + 2 * n :]
        if self.forward_norm is None and (self.kind == "seminorm" or not p):
            return state_norm((t, *y, *a), False)
        if self.forward_norm is None:
            return state_norm(aug, False)
        parts = [t.abs(), self._state(y), self._state(a)]
        if self.kind != "seminorm" and p:
            parts.append(state_norm(p, False))
        return torch.stack([v.to(parts[0].dtype) for v in parts]).amax()

    def __call__(self, tensor_tuple):
        t, y, a, *p = tensor_tuple
        if self.is_tuple:
            y, a = _unflat(y, (), self.shapes), _unflat(a, (), self.shapes)
        else:
            y, a = (y,), (a,)
        return self.native((t, *y, *a, *p))


def _torchdiffeq_layout(aug: State, n: int, is_tuple: bool):
    """(τ, y, a, *θ) with y and a flat when the state is a tuple (torchdiffeq's)."""
    t, y, a, p = aug[0], aug[1 : 1 + n], aug[1 + n : 1 + 2 * n], aug[1 + 2 * n :]
    if is_tuple:
        return (t, _flat(y, ()), _flat(a, ()), *p)
    return (t, y[0], a[0], *p)


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, t, n_state, *tensors):
        y0 = tensors[:n_state]
        params = tensors[n_state:]
        with torch.no_grad():
            result = integrate(
                spec["func"], y0, spec["is_tuple"], t, event_fn=spec["event_fn"], **spec["forward"]
            )
        event_t = None
        if spec["event_fn"] is not None:
            event_t, ys = result
        else:
            ys = result
        ctx.spec = spec
        ctx.n_state = n_state
        ctx.event_mode = event_t is not None
        # what torchdiffeq's node carries; its "norm" is read again at backward time
        ctx.adjoint_options = spec["adjoint_options"]
        ctx.adjoint_rtol, ctx.adjoint_atol = spec["backward"]["rtol"], spec["backward"]["atol"]
        ctx.adjoint_method = spec["backward"]["method"]
        out = _flat(ys, (ys[0].shape[0],)) if spec["is_tuple"] else ys[0]
        extra = (event_t,) if event_t is not None else ()
        ctx.save_for_backward(t, out, *extra, *params)
        ctx.n_extra = len(extra)
        return (event_t, out) if event_t is not None else out

    @staticmethod
    def backward(ctx, *grads):
        spec, n = ctx.spec, ctx.n_state
        saved = ctx.saved_tensors
        t, out = saved[0], saved[1]
        event_t = saved[2] if ctx.event_mode else None
        params = saved[2 + ctx.n_extra :]
        func, is_tuple = spec["func"], spec["is_tuple"]
        time_grad = ctx.needs_input_grad[1]
        grad_out = grads[-1]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        t_full = t
        if event_t is not None:
            t = torch.cat([t[0].reshape(-1), event_t.reshape(-1).to(t)])
        lead = (out.shape[0],)
        ys = _unflat(out, lead, spec["shapes"]) if is_tuple else (out,)
        grad_ys = _unflat(grad_out, lead, spec["shapes"]) if is_tuple else (grad_out,)

        def call(tt: torch.Tensor, y: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            f = func(tt, y if is_tuple else y[0])
            return tuple(f) if is_tuple else (f,)

        def augmented(tt, state):
            y = tuple(v.detach().requires_grad_(True) for v in state[1 : 1 + n])
            a = state[1 + n : 1 + 2 * n]
            with torch.enable_grad():
                # τ = −∫aᵀ ∂f/∂t is integrated whether or not ∂L/∂t is wanted: torchdiffeq
                # does (its t and t_ are one tensor made to require grad in place), and
                # |τ| is part of the backward norm, so it decides the step sizes
                tt = tt.detach().requires_grad_(True)
                f = call(tt, y)
                wrt = (tt, *y, *params)
                # a derivative that does not depend on y, θ or t contributes nothing
                linked = [(fi, ai) for fi, ai in zip(f, a, strict=True) if fi.requires_grad]
                vjps = (
                    torch.autograd.grad(
                        [fi for fi, _ in linked],
                        wrt,
                        grad_outputs=[-ai for _, ai in linked],
                        allow_unused=True,
                    )
                    if linked
                    else (None,) * len(wrt)
                )
            vjps = tuple(
                torch.zeros_like(v) if g is None else g for g, v in zip(vjps, wrt, strict=True)
            )
            vjp_t = vjps[0].to(state[0].dtype).reshape(())
            return (vjp_t, *(v.detach() for v in f), *vjps[1:])

        def output_time_gradient(i: int) -> torch.Tensor:
            with torch.no_grad():
                f = call(t[i].to(ys[0].real.dtype), tuple(y[i] for y in ys))
            record.nfe_backward += 1
            # one dot over the flattened state, as torchdiffeq reduces it: τ enters the
            # backward norm, so its rounding can decide a step
            return torch.dot(_flat(f, ()), _flat(tuple(g[i] for g in grad_ys), ()))

        record: StepRecord = spec["record"]
        backward = dict(spec["backward"])
        options = {k: v for k, v in ctx.adjoint_options.items() if k != "norm"}
        norm = ctx.adjoint_options.get("norm")
        if isinstance(norm, AdjointNorm):
            native = norm.native
        elif callable(norm):
            native = _foreign(norm, n, is_tuple)
        else:
            native = None
        if native is not None and backward["method"] in ADAPTIVE_METHODS:
            options["norm"] = native
        found = find_callbacks(func, ADJOINT_CALLBACK_NAMES)
        warn_unsupported(backward["method"], found)
        # torchdiffeq hands the backward callbacks the forward solve's own time axis
        callbacks = StepCallbacks(
            found, lambda aug: _torchdiffeq_layout(aug, n, is_tuple), spec["time_sign_cb"]
        )

        dtype = ys[0].dtype
        adj_y = tuple(g[-1] for g in grad_ys)
        adj_p = tuple(torch.zeros_like(p) for p in params)
        adj_t = torch.zeros((), dtype=dtype, device=ys[0].device)
        time_vjps = torch.zeros_like(t) if time_grad else None
        backward_record = StepRecord()
        for i in range(len(t) - 1, 0, -1):
            if time_grad:
                d_ti = output_time_gradient(i)
                time_vjps[i] = d_ti
                adj_t = adj_t - d_ti.to(dtype)
            state = (adj_t, *(y[i] for y in ys), *adj_y, *adj_p)
            with torch.no_grad():
                sol = integrate(
                    augmented,
                    state,
                    True,
                    t[i - 1 : i + 1].flip(0),
                    rtol=backward["rtol"],
                    atol=backward["atol"],
                    method=backward["method"],
                    options=options,
                    step_control="batch",
                    detach_step_size=True,
                    record=backward_record,
                    callbacks=callbacks,
                )
            end = tuple(s[-1] for s in sol)
            adj_t = end[0]
            adj_y = tuple(
                a + g[i - 1] for a, g in zip(end[1 + n : 1 + 2 * n], grad_ys, strict=True)
            )
            adj_p = end[1 + 2 * n :]
        if time_grad and len(t) > 1:
            time_vjps[0] = adj_t.real if adj_t.is_complex() else adj_t
            if event_t is not None:
                time_vjps = torch.cat([time_vjps[:1], torch.zeros_like(t_full[1:])])
        record.nfe_backward += backward_record.nfe_forward
        return (None, time_vjps, None, *adj_y, *adj_p)


def _foreign(norm: Callable, n: int, is_tuple: bool) -> Callable:
    """A norm someone put into ``grad_fn.adjoint_options``: torchdiffeq's layout."""

    def native(aug: State) -> torch.Tensor:
        return torch.as_tensor(norm(_torchdiffeq_layout(aug, n, is_tuple)))

    return native


def find_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The module's parameters; inside DataParallel, the replica's tensors that
    require grad (which ``parameters()`` does not list there)."""
    if getattr(module, "_is_replica", False):

        def tensors(m):
            return [(k, v) for k, v in m.__dict__.items() if torch.is_tensor(v) and v.requires_grad]

        return [p for _, p in module._named_members(get_members_fn=tensors)]
    return list(module.parameters())


def odeint_adjoint(
    func: Callable,
    y0: StateLike,
    t: torch.Tensor,
    *,
    rtol: float | Sequence[float] | torch.Tensor = 1e-7,
    atol: float | Sequence[float] | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | Sequence[float] | torch.Tensor | None = None,
    adjoint_atol: float | Sequence[float] | torch.Tensor | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    step_control: str = "batch",
    detach_step_size: bool | None = None,
    record: StepRecord | None = None,
    backend: str = "native",
):
    """``odeint`` whose gradients come from the adjoint method (same signature and
    semantics as ``torchdiffeq.odeint_adjoint``; module docstring). ``adjoint_params``
    defaults to the parameters of ``func``, which must then be an ``nn.Module``."""
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError(
            "odeint_adjoint needs the parameters to differentiate: func is not an nn.Module, "
            "so pass adjoint_params=(...) (or adjoint_params=() when it has none)"
        )
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
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    raw_adjoint_method = method if adjoint_method is None else adjoint_method
    if raw_adjoint_method != method and options is not None and adjoint_options is None:
        raise ValueError(
            "adjoint_method differs from method, so adjoint_options cannot be inferred from "
            "options: pass adjoint_options as well"
        )
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    elif not isinstance(adjoint_options, dict):
        raise ValueError(f"adjoint_options must be a dict or None, got {adjoint_options!r}")
    else:
        adjoint_options = dict(adjoint_options)
    b_method = check_method(raw_adjoint_method, backend)

    if backend == "torchdiffeq":
        from .reference import torchdiffeq_odeint

        return torchdiffeq_odeint(
            func,
            y0,
            t,
            adjoint=True,
            event_fn=event_fn,
            adjoint_params=adjoint_params,
            adjoint_kwargs=dict(
                adjoint_rtol=adjoint_rtol,
                adjoint_atol=adjoint_atol,
                adjoint_method=b_method,
                adjoint_options=adjoint_options,
            ),
            **common,
        )

    params = tuple(find_parameters(func) if adjoint_params is None else adjoint_params)
    kept = tuple(p for p in params if p.requires_grad)
    if len(kept) != len(params) and callable(adjoint_options.get("norm")):
        warnings.warn(
            "An adjoint parameter was passed without requiring gradient. For efficiency this will "
            "be excluded from the adjoint pass, and will not appear as a tensor in the adjoint "
            "norm.",
            UserWarning,
            stacklevel=2,
        )
    forward_norm = (options or {}).get("norm")
    adjoint_options["norm"] = _adjoint_norm(
        adjoint_options.get("norm"), [v.shape for v in state], is_tuple, forward_norm
    )
    spec = {
        "func": func,
        "is_tuple": is_tuple,
        "shapes": [v.shape for v in state],
        "record": common["record"],
        "event_fn": event_fn,
        "forward": common,
        "adjoint_options": adjoint_options,
        # the backward callbacks see the forward solve's time axis (−t on a decreasing grid)
        "time_sign_cb": -1.0,
        "backward": dict(rtol=adjoint_rtol, atol=adjoint_atol, method=b_method),
    }
    out = _AdjointSolve.apply(spec, t, len(state), *state, *kept)
    if event_fn is not None:
        event_t, flat = out
    else:
        flat = out
    solution = _unflat(flat, (flat.shape[0],), spec["shapes"]) if is_tuple else flat
    return (event_t, solution) if event_fn is not None else solution


def _adjoint_norm(given, shapes, is_tuple: bool, forward_norm) -> AdjointNorm:
    if given is None:
        return AdjointNorm("default", shapes, is_tuple, forward_norm)
    if given == "seminorm":
        return AdjointNorm("seminorm", shapes, is_tuple, forward_norm)
    if callable(given):
        return AdjointNorm("custom", shapes, is_tuple, forward_norm, custom=given)
    raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable, got {given!r}")
