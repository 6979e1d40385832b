"""``backend="torchdiffeq"``: the same call run by torchdiffeq itself, for reference.

torchdiffeq is an optional dependency (``pip install robustode[reference]``).
Its solver reports steps through callbacks on the vector-field module; we
record them into the same :class:`StepRecord` the native engine fills.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import SolverError
from .field import _CountBackward
from .record import StepRecord
from .tableau import ADAPTIVE_METHODS

# the messages of torchdiffeq 0.2.5's asserts when a solve gives up (rk_common.py)
_TORCHDIFFEQ_GIVE_UPS = ("max_num_steps exceeded", "underflow in dt")


class _Recorded(nn.Module):
    def __init__(self, func, record: StepRecord) -> None:
        super().__init__()
        self.func = func
        self.record = record

    def forward(self, t, y):
        self.record.nfe_forward += 1
        out = self.func(t, y)
        if torch.is_grad_enabled():
            outs = out if isinstance(out, tuple) else (out,)
            if any(o.requires_grad for o in outs):
                counted = _CountBackward.apply(self.record, *outs)
                out = counted if isinstance(out, tuple) else counted[0]
        return out


class _RecordedAdaptive(_Recorded):
    def callback_accept_step(self, t0, y0, dt):
        self.record.add_step(t0.detach(), dt.detach(), True)

    def callback_reject_step(self, t0, y0, dt):
        self.record.add_step(t0.detach(), dt.detach(), False)


class _RecordedFixed(_Recorded):
    def callback_step(self, t0, y0, dt):
        self.record.add_step(t0.detach(), dt.detach(), True)


def torchdiffeq_odeint(
    func,
    y0,
    t,
    *,
    rtol,
    atol,
    method,
    options,
    step_control,
    detach_step_size,
    record,
    adjoint,
    adjoint_params=None,
):
    """Call ``torchdiffeq.odeint`` (or ``odeint_adjoint``) and record its steps."""
    try:
        import torchdiffeq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='torchdiffeq' needs torchdiffeq: pip install 'robustode[reference]'"
        ) from exc
    if step_control != "batch" or detach_step_size is not None:
        raise ValueError(
            "backend='torchdiffeq' supports only step_control='batch' and detach_step_size=None"
        )
    wrapper_cls = _RecordedAdaptive if method in ADAPTIVE_METHODS else _RecordedFixed
    wrapped = wrapper_cls(func, record)
    record.method, record.step_control = method, step_control
    kwargs = dict(rtol=rtol, atol=atol, method=method, options=dict(options) or None)
    if isinstance(y0, list):
        y0 = tuple(y0)
    try:
        if adjoint:
            params = adjoint_params
            if params is None:
                params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
            return torchdiffeq.odeint_adjoint(
                wrapped, y0, t, adjoint_params=tuple(params), **kwargs
            )
        return torchdiffeq.odeint(wrapped, y0, t, **kwargs)
    except AssertionError as exc:
        # torchdiffeq reports a spent step budget or an underflowed step with a bare assert;
        # the native engine's error type and wording (method, tolerances) say it instead
        text = str(exc)
        if not text.startswith(_TORCHDIFFEQ_GIVE_UPS):
            raise
        raise SolverError(
            f"ODE solve with {method} (rtol={rtol}, atol={atol}) in torchdiffeq: {text}"
        ) from exc
