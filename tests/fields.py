"""Vector fields shared by the ODE-engine tests."""

from __future__ import annotations

import torch
from torch import nn


class MLPField(nn.Module):
    """A random time-dependent MLP field on a (B, d) state."""

    def __init__(self, dim: int = 5, hidden: int = 16) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t, y):
        tt = t.reshape(-1, 1).expand(y.shape[0], 1).to(y.dtype)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], 1))))


class ConvPairField(nn.Module):
    """A random conv field on an image-shaped tuple state (x: C_in, z: C_out channels)."""

    def __init__(self, c_in: int = 3, c_out: int = 6) -> None:
        super().__init__()
        self.to_z = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.to_x = nn.Conv2d(c_out, c_in, 3, padding=1)

    def forward(self, t, state):
        x, z = state
        scale = 1 + t.reshape(-1, 1, 1, 1).to(x.dtype)
        return torch.tanh(self.to_x(z)), torch.tanh(self.to_z(x)) * scale


def make_field(kind: str, dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "mlp":
        f = MLPField().to(dtype)
        y0 = torch.randn(4, 5, dtype=dtype)
        return f, y0
    f = ConvPairField().to(dtype)
    y0 = (torch.randn(2, 3, 6, 6, dtype=dtype), torch.randn(2, 6, 6, 6, dtype=dtype))
    return f, y0


class StepLog(nn.Module):
    """Wraps a field to log torchdiffeq's accepted steps through its callbacks."""

    def __init__(self, func) -> None:
        super().__init__()
        self.func = func
        self.accepted: list[tuple[float, float]] = []
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.func(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted.append((float(t0.detach()), float(dt.detach())))


def as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def run_against_torchdiffeq(
    kind: str,
    method: str,
    tol: float | None,
    dtype,
    t: torch.Tensor,
    options: dict | None = None,
    grads: bool = True,
):
    """Solve one field with torchdiffeq and with robustode; return (torchdiffeq's
    step log, our record, their outputs, ours, their gradients, ours) — gradients
    of Σ y·sin(y) w.r.t. y0 and the field's parameters (None with ``grads=False``).
    ``tol=None`` keeps torchdiffeq's default tolerances."""
    import torchdiffeq

    from robustode.ode import StepRecord, odeint

    f, y0 = make_field(kind, dtype)
    y0 = tuple(v.requires_grad_() for v in y0) if isinstance(y0, tuple) else y0.requires_grad_()
    log = StepLog(f)
    kw = dict(method=method, options=options)
    if tol is not None:
        kw.update(rtol=tol, atol=tol)
    with torch.set_grad_enabled(grads):
        ref = torchdiffeq.odeint(log, y0, t, **kw)
        rec = StepRecord()
        out = odeint(f, y0, t, record=rec, **kw)
    if not grads:
        return log, rec, as_tuple(ref), as_tuple(out), None, None
    wrt = [*as_tuple(y0), *f.parameters()]
    g_ref = torch.autograd.grad(sum((r.sin() * r).sum() for r in as_tuple(ref)), wrt)
    g_out = torch.autograd.grad(sum((r.sin() * r).sum() for r in as_tuple(out)), wrt)
    return log, rec, as_tuple(ref), as_tuple(out), g_ref, g_out
