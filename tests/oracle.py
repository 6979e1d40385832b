"""Run one call through torchdiffeq 0.2.5 and through robustode and keep what each did.

The field logs every step callback torchdiffeq (or robustode) makes, so the
accepted/rejected grid is compared through the public callback API itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LoggedField(torch.nn.Module):
    """A small time-dependent field (tensor or (a, b) tuple state) that logs its callbacks."""

    def __init__(self, dtype: torch.dtype, tuple_state: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.5)
        self.w.data = self.w.data.to(dtype)
        self.tuple_state = tuple_state
        self.log: list[tuple] = []
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        if not self.tuple_state and y.dim() == 0:  # a scalar state
            return torch.tanh(self.w[0, 0] * y) * torch.cos(t) - 0.1 * y
        if self.tuple_state:
            a, b = y
            return torch.tanh(b @ self.w) * torch.cos(t), torch.tanh(a @ self.w.T) - 0.1 * b
        return torch.tanh(y @ self.w) * torch.cos(t) - 0.1 * y

    def callback_step(self, t0, y0, dt):
        self.log.append(("step", t0.item(), dt.item()))


class AdaptiveLoggedField(LoggedField):
    """Also logs the accept/reject callbacks (which only adaptive methods call: torchdiffeq
    and robustode warn about them on a fixed-grid method)."""

    def callback_accept_step(self, t0, y0, dt):
        self.log.append(("accept", t0.item(), dt.item()))

    def callback_reject_step(self, t0, y0, dt):
        self.log.append(("reject", t0.item(), dt.item()))


def initial_state(dtype: torch.dtype, tuple_state: bool, shape=(4, 3)):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        a = torch.complex(a, torch.randn(shape, generator=g, dtype=torch.float64))
    a = a.to(dtype).requires_grad_()
    if tuple_state:
        return a, (a, torch.randn(shape, generator=g, dtype=torch.float64).to(dtype))
    return a, a


@dataclass
class Run:
    outputs: tuple[torch.Tensor, ...]
    nfe: int
    log: list
    grads: tuple[torch.Tensor, ...]


def run(solver, dtype, t, *, tuple_state=False, shape=(4, 3), **kwargs) -> Run:
    """Solve, then differentiate Σ y·sin(y) w.r.t. y0's first tensor, the weights and t."""
    from robustode.ode import ADAPTIVE_METHODS

    adaptive = kwargs.get("method") in ADAPTIVE_METHODS or kwargs.get("method") is None
    f = (AdaptiveLoggedField if adaptive else LoggedField)(dtype, tuple_state)
    leaf, y0 = initial_state(dtype, tuple_state, shape)
    out = solver(f, y0, t, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * o.sin()).sum().real for o in outs)
    wrt = [leaf, f.w] + ([t] if t.requires_grad else [])
    return Run(tuple(o.detach() for o in outs), f.nfe, list(f.log), torch.autograd.grad(loss, wrt))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def bit_equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
