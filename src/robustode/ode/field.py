"""The user's vector field as the solvers call it: tuple in, tuple out, counted.

Time is handed to the field as a tensor of the state's (real) dtype, as
torchdiffeq does (a 0-dim tensor in batch mode, a (B,) tensor in per-sample
mode). Stages that land on the end of a step see the time nudged one ulp below
it, and with ``perturb`` a step's first stage sees it one ulp above its start
(torchdiffeq's ``Perturb.PREV``/``NEXT``), so a field with a discontinuity at a
grid point is evaluated on the side of the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .arith import real_dtype
from .record import StepRecord
from .state import State


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts one backward function evaluation."""

    @staticmethod
    def forward(ctx, record, *tensors):
        ctx.record = record
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.record.nfe_backward += 1
        return (None, *grads)


def _nudge(t: torch.Tensor, direction: int) -> torch.Tensor:
    """The next representable value below (−1) or above (+1) t, with the gradient of t."""
    moved = torch.nextafter(t.detach(), t.detach() + direction)
    if t.requires_grad:
        return t + (moved - t.detach())
    return moved


class VectorField:
    """Adapts ``func(t, y)`` (tensor or tuple state) to tuple states, counting NFE."""

    def __init__(
        self,
        func: Callable,
        is_tuple: bool,
        record: StepRecord,
        dtype: torch.dtype,
        device: torch.device,
        sign: float = 1.0,
    ) -> None:
        self.func = func
        self.is_tuple = is_tuple
        self.record = record
        self.dtype = dtype
        self.time_dtype = real_dtype(dtype)
        self.device = device
        self.sign = sign  # -1 integrates a decreasing time grid as s = -t

    def time(self, value: float | torch.Tensor, nudge: int = 0) -> torch.Tensor:
        """The time tensor handed to ``func`` for an integration time ``value``,
        nudged one ulp down (−1) or up (+1)."""
        if isinstance(value, torch.Tensor):
            t = value.to(device=self.device, dtype=self.time_dtype)
        else:
            t = torch.full((), value, dtype=self.time_dtype, device=self.device)
        if nudge:
            t = _nudge(t, nudge)
        return t

    def layout(self, y: State):
        """The state as the caller's function sees it: a tensor or a tuple."""
        return y if self.is_tuple else y[0]

    def __call__(self, t: float | torch.Tensor, y: State, nudge: int = 0) -> State:
        self.record.nfe_forward += 1
        tt = self.time(t, nudge)
        if self.sign < 0:
            tt = -tt
        out = self.func(tt, y if self.is_tuple else y[0])
        if self.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(y):
                raise TypeError(
                    f"the vector field returned {type(out).__name__}; a tuple state of "
                    f"{len(y)} tensors needs a tuple of {len(y)} derivatives"
                )
            out = tuple(out)
        else:
            out = (out,)
        # torchdiffeq writes stages into buffers of y0's dtype; a field that
        # returns another dtype must not silently change the state's.
        out = tuple(o.to(self.dtype) for o in out)
        if self.sign < 0:
            out = tuple(-o for o in out)
        if torch.is_grad_enabled() and any(o.requires_grad for o in out):
            out = _CountBackward.apply(self.record, *out)
        return out
