"""``odeint_dense``: solve once, evaluate the solution anywhere in [t0, t1] (torchdiffeq 0.2.5).

The solve is the adaptive one of :func:`robustode.ode.odeint` from t0 to t1
(torchdiffeq allows dopri5 only; every adaptive Runge–Kutta method is taken
here). The returned function evaluates the dense output — each accepted step's
quartic — at any time inside the accepted steps, with gradients to y0 and the
field's parameters. torchdiffeq's version needs a single evaluation time and
fails at t1 when it ends a step; this one takes a 0-dim tensor (returns one
state) or a 1-D tensor (returns them stacked) and accepts t1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .adaptive import BatchSolver
from .odeint import adaptive_options, prepare_solve
from .record import StepRecord
from .tableau import ADAPTIVE_METHODS, TABLEAUS


def odeint_dense(
    func: Callable,
    y0: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    record: StepRecord | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Integrate y0 from t0 to t1; return ``dense_output_fn(t_eval)``."""
    method = "dopri5" if method is None else method
    if method not in ADAPTIVE_METHODS:
        raise ValueError(
            f"odeint_dense needs an adaptive method (dense output); got '{method}', "
            f"choose one of: {', '.join(ADAPTIVE_METHODS)}"
        )
    if not isinstance(y0, torch.Tensor):
        raise ValueError("odeint_dense takes a tensor y0 (as torchdiffeq's does)")
    t0, t1 = torch.as_tensor(t0), torch.as_tensor(t1)
    t = torch.stack([t0.reshape(()), t1.reshape(()).to(t0)])
    if not bool(t[1] > t[0]):
        raise ValueError("odeint_dense needs t1 > t0")
    record = record if record is not None else StepRecord()
    p = prepare_solve(
        func,
        (y0,),
        False,
        t,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        step_control="batch",
        record=record,
        callbacks=None,
    )
    opts = adaptive_options(p, (y0,), None)
    t_values = p.t.to(opts.time_dtype).cpu().tolist()
    solver = BatchSolver(
        p.fn, TABLEAUS[method], (y0,), t_values[0], None, opts, record, p.callbacks
    )
    steps, n_steps = [], 0
    while t_values[1] > solver.t_val:
        if n_steps >= opts.max_num_steps:
            solver._fail(f"exceeded max_num_steps={opts.max_num_steps} on the way to t1")
        n_steps += 1
        before = solver.last
        solver.step()
        if solver.last is not before:
            steps.append(solver.last)
    ends = torch.tensor(
        [s.t1 if isinstance(s.t1, float) else float(s.t1.detach()) for s in steps],
        dtype=torch.float64,
    )

    def dense_output_fn(t_eval: torch.Tensor) -> torch.Tensor:
        times = torch.as_tensor(t_eval, dtype=torch.float64)
        flat = times.reshape(-1)
        if bool(((flat < t_values[0]) | (flat > ends[-1])).any()):
            raise ValueError(
                f"t_eval must lie in [{t_values[0]}, {float(ends[-1])}], the solved span"
            )
        idx = torch.searchsorted(ends, flat.cpu(), side="left").clamp(max=len(steps) - 1)
        outs = []
        for k, tk in zip(idx.tolist(), flat, strict=True):
            solver.last = steps[k]
            outs.append(solver.dense(tk.to(opts.time_dtype))[0])
        out = torch.stack(outs)
        return out[0] if times.dim() == 0 else out

    return dense_output_fn
