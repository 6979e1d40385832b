"""Gradients by the adjoint method: O(1) memory in the number of solver steps.

Forward: solve without building a graph and keep only the outputs. Backward,
between consecutive output times t_i → t_{i−1}, solve the augmented system
(Chen et al. 2018, eq. 4 and appendix B) backwards in time:

    dy/dt = f(t, y),   da/dt = −aᵀ ∂f/∂y,   dθ/dt = −aᵀ ∂f/∂θ,

from a(t_i) = ∂L/∂y(t_i), θ(t_i) = running parameter gradient. Each
augmented evaluation is one vector–Jacobian product of ``func``. The backward
solve uses batch step control over the whole augmented state (its norm is the
maximum over tensors of their RMS, parameters included), whatever the forward
used.

When ``t`` requires grad, as torchdiffeq does: ∂L/∂t_i = f(t_i, y_i) · ∂L/∂y(t_i)
for i ≥ 1, and ∂L/∂t_0 comes from one more augmented scalar,
dτ/dt = −aᵀ ∂f/∂t, started at −Σ_{j≥i} ∂L/∂t_j (Chen et al. 2018, appendix B.2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .odeint import StateLike, _check_options, check_method, integrate, prepare_call
from .record import StepRecord


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, t, n_state, *tensors):
        y0 = tensors[:n_state]
        params = tensors[n_state:]
        with torch.no_grad():
            ys = integrate(spec["func"], y0, spec["is_tuple"], t, **spec["forward"])
        ctx.spec = spec
        ctx.n_state = n_state
        ctx.save_for_backward(t, *ys, *params)
        return ys

    @staticmethod
    def backward(ctx, *grad_ys):
        spec, n = ctx.spec, ctx.n_state
        saved = ctx.saved_tensors
        t, ys, params = saved[0], saved[1 : 1 + n], saved[1 + n :]
        func, is_tuple = spec["func"], spec["is_tuple"]
        time_grad = ctx.needs_input_grad[1]
        grad_ys = tuple(
            torch.zeros_like(y) if g is None else g for g, y in zip(grad_ys, ys, strict=True)
        )

        def call(tt: torch.Tensor, y: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            f = func(tt, y if is_tuple else y[0])
            return tuple(f) if is_tuple else (f,)

        def augmented(tt, state):
            y = tuple(v.detach().requires_grad_(True) for v in state[:n])
            a = state[n : 2 * n]
            with torch.enable_grad():
                # only when ∂L/∂t is wanted: ∂f/∂t may not even exist (piecewise fields)
                tt = tt.detach().requires_grad_(True) if time_grad else tt.detach()
                f = call(tt, y)
                wrt = y + params + ((tt,) if time_grad else ())
                # a derivative that does not depend on y, θ or t contributes nothing
                linked = [(fi, ai) for fi, ai in zip(f, a, strict=True) if fi.requires_grad]
                vjps = (
                    torch.autograd.grad(
                        [fi for fi, _ in linked],
                        wrt,
                        grad_outputs=[ai for _, ai in linked],
                        allow_unused=True,
                    )
                    if linked
                    else (None,) * len(wrt)
                )
            vjps = tuple(
                torch.zeros_like(v) if g is None else g for g, v in zip(vjps, wrt, strict=True)
            )
            return (*(v.detach() for v in f), *(-g for g in vjps))

        def output_time_gradient(i: int) -> torch.Tensor:
            with torch.no_grad():
                f = call(t[i].to(ys[0].dtype), tuple(y[i] for y in ys))
            return sum((fi * g[i]).sum() for fi, g in zip(f, grad_ys, strict=True))

        adj_y = tuple(g[-1] for g in grad_ys)
        adj_p = tuple(torch.zeros_like(p) for p in params)
        adj_t = (torch.zeros((), dtype=ys[0].dtype, device=ys[0].device),) if time_grad else ()
        time_vjps = torch.zeros_like(t) if time_grad else None
        backward_record = StepRecord()
        for i in range(len(t) - 1, 0, -1):
            if time_grad:
                d_ti = output_time_gradient(i)
                time_vjps[i] = d_ti
                adj_t = (adj_t[0] - d_ti,)
            state = (*(y[i] for y in ys), *adj_y, *adj_p, *adj_t)
            with torch.no_grad():
                sol = integrate(
                    augmented,
                    state,
                    True,
                    t[i - 1 : i + 1].flip(0),
                    **spec["backward"],
                    record=backward_record,
                )
            end = tuple(s[-1] for s in sol)
            adj_y = tuple(a + g[i - 1] for a, g in zip(end[n : 2 * n], grad_ys, strict=True))
            adj_p = end[2 * n : 2 * n + len(params)]
            adj_t = end[2 * n + len(params) :]
        if time_grad and len(t) > 1:
            time_vjps[0] = adj_t[0]
        spec["record"].nfe_backward += backward_record.nfe_forward
        return (None, time_vjps, None, *adj_y, *adj_p)


def odeint_adjoint(
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
    adjoint_params: Sequence[torch.Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``odeint`` whose gradients come from the adjoint method (same signature as
    ``torchdiffeq.odeint_adjoint``). ``adjoint_params`` defaults to the
    parameters of ``func`` when it is an ``nn.Module``."""
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

        return torchdiffeq_odeint(
            func, y0, t, adjoint=True, adjoint_params=adjoint_params, **common
        )
    if adjoint_params is None:
        adjoint_params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    params = tuple(p for p in adjoint_params if p.requires_grad)
    b_method = check_method(adjoint_method or common["method"])
    spec = {
        "func": func,
        "is_tuple": is_tuple,
        "record": common["record"],
        "forward": common,
        "backward": dict(
            rtol=adjoint_rtol if adjoint_rtol is not None else rtol,
            atol=adjoint_atol if adjoint_atol is not None else atol,
            method=b_method,
            options=_check_options(
                b_method,
                adjoint_options if adjoint_options is not None else common["options"],
            ),
            step_control="batch",
            detach_step_size=True,
        ),
    }
    out = _AdjointSolve.apply(spec, t, len(state), *state, *params)
    return out if is_tuple else out[0]
