"""``backend="torchdiffeq"``: the same call run by torchdiffeq itself, for reference.

torchdiffeq is an optional dependency (``pip install robustode[reference]``).
Its solver reports steps through callbacks on the vector-field module; we
record them into the same :class:`StepRecord` the native engine fills, and
pass the caller's own callbacks (``callback_*`` and ``callback_*_adjoint``)
through, so torchdiffeq calls them as it would without robustode.
"""

from __future__ import annotations

import torch
from torch import nn

from .callbacks import ADJOINT_CALLBACK_NAMES, CALLBACK_NAMES
from .errors import SolverError
from .field import _CountBackward
from .record import StepRecord
from .tableau import ADAPTIVE_METHODS

# the messages of torchdiffeq 0.2.5's asserts when a solve gives up (rk_common.py)
_TORCHDIFFEQ_GIVE_UPS = ("max_num_steps exceeded", "underflow in dt")


class _Recorded(nn.Module):
    """Counts evaluations and records steps; forwards the caller's callbacks."""

    def __init__(self, func, record: StepRecord, method: str) -> None:
        super().__init__()
        self.func = func
        self.record = record
        self.adaptive = method in ADAPTIVE_METHODS
        self.scipy = method == "scipy_solver"  # calls no callback at all
        # Only the callbacks the record needs or the caller defined: torchdiffeq warns
        # about any other one it finds, as it would on the caller's own func.
        for name in CALLBACK_NAMES:
            user = getattr(func, name, None)
            recorder = self._recorder(name)
            if recorder is not None or user is not None:
                setattr(self, name, self._chain(recorder, user))
        for name in ADJOINT_CALLBACK_NAMES:
            user = getattr(func, name, None)
            if user is not None:
                setattr(self, name, user)

    def _recorder(self, name: str):
        record = self.record
        if self.scipy:
            return None
        if self.adaptive and name in ("callback_accept_step", "callback_reject_step"):
            accepted = name == "callback_accept_step"
            return lambda t0, y0, dt: record.add_step(t0.detach(), dt.detach(), accepted)
        if not self.adaptive and name == "callback_step":
            return lambda t0, y0, dt: record.add_step(t0.detach(), dt.detach(), True)
        return None

    @staticmethod
    def _chain(recorder, user):

        def callback(t0, y0, dt):
            if recorder is not None:
                recorder(t0, y0, dt)
            if user is not None:
                user(t0, y0, dt)

        return callback

    def forward(self, t, y):
        self.record.nfe_forward += 1
        out = self.func(t, y)
        if torch.is_grad_enabled():
            outs = out if isinstance(out, tuple) else (out,)
            if any(o.requires_grad for o in outs):
                counted = _CountBackward.apply(self.record, *outs)
                out = counted if isinstance(out, tuple) else counted[0]
        return out


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
    event_fn=None,
    adjoint_params=None,
    adjoint_kwargs=None,
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
    wrapped = _Recorded(func, record, method)
    record.method, record.step_control = method, step_control
    kwargs = dict(rtol=rtol, atol=atol, method=method, options=dict(options or {}) or None)
    if event_fn is not None:
        kwargs["event_fn"] = event_fn
    if isinstance(y0, list):
        y0 = tuple(y0)
    try:
        if adjoint:
            params = adjoint_params
            if params is None:
                params = tuple(func.parameters())  # odeint_adjoint checked func is a Module
            return torchdiffeq.odeint_adjoint(
                wrapped, y0, t, adjoint_params=tuple(params), **(adjoint_kwargs or {}), **kwargs
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
