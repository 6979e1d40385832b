"""Floating-point arithmetic in torchdiffeq 0.2.5's order, so float32 results match bit for bit.

Two things decide whether an adaptive float32 solve at tight tolerances takes
torchdiffeq's steps: its embedded error estimate is a difference of nearly
equal stage sums, so at rtol 1e-7 it is rounding noise, and every rounding
must be the same. torchdiffeq

* forms each stage sum as ``y0 + torch.sum(k * (beta * dt), dim=-1)`` over a
  stage-last buffer: products rounded one by one, then summed in the order of
  PyTorch's reduction kernel (not left to right for five or more stages), then
  added to y0. A fused ``torch.add(acc, k, alpha=c)`` rounds once per term
  instead and drifts from it (measured: 5 % more or fewer NFE at float32
  default tolerances, outputs 2e-5 apart).
* computes stage times, interpolation weights and its controller in tensors of
  a given dtype (the state's for stage times, ``t``'s on fixed grids, float64
  or ``options["dtype"]`` for adaptive time), rounding after every operation.

:func:`weighted_sum` reproduces the reduction order with element-wise adds
(contiguous, vectorised, no stage buffer). The order depends on the vector
width PyTorch's CPU kernel was built with, so it is calibrated once per dtype
against ``torch.sum`` itself; where no candidate order matches (another
device, half precision), the products are stacked and summed with
``torch.sum`` — the same kernel torchdiffeq calls, so the result is equal by
construction, at the cost of the copy.

:class:`TimeArith` does scalar time arithmetic on host floats rounded to a
dtype after each operation; for +, −, ×, ÷ rounding the float64 result to
float32 equals float32 arithmetic (53 ≥ 2·24 + 2 bits, so double rounding is
innocuous).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

Term = "torch.Tensor | None"  # None: a product known to be exactly zero (skipped, position kept)


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of a (possibly complex) dtype: torchdiffeq's ``y.abs().dtype``."""
    if dtype == torch.complex64:
        return torch.float32
    if dtype == torch.complex128:
        return torch.float64
    if dtype == torch.complex32:
        return torch.float16
    return dtype


def round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (a Python float holding that exact value)."""
    dtype = real_dtype(dtype)
    if dtype == torch.float64:
        return value
    if dtype == torch.float32:
        return float(np.float32(value))
    return float(torch.tensor(value, dtype=dtype))


class TimeArith:
    """Scalar arithmetic on host floats as tensors of ``dtype`` would do it."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = real_dtype(dtype)
        self.exact = self.dtype == torch.float64

    def round(self, x: float) -> float:
        return x if self.exact else round_to(x, self.dtype)

    def add(self, a: float, b: float) -> float:
        return self.round(a + b)

    def sub(self, a: float, b: float) -> float:
        return self.round(a - b)

    def mul(self, a: float, b: float) -> float:
        return self.round(a * b)

    def div(self, a: float, b: float) -> float:
        return self.round(a / b)

    def pow(self, a: float, b: float) -> float:
        return self.round(a**b)


# ------------------------------------------------------------ torch.sum's order
def _row_sum(xs: Sequence) -> Term:
    """PyTorch's scalar row sum: four interleaved accumulators, the tail into the
    first, then the four combined left to right (ATen's SumKernel ``row_sum``)."""
    n = len(xs)
    full = n // 4
    acc: list = [None] * 4
    for i in range(full):
        for k in range(4):
            acc[k] = _add(acc[k], xs[4 * i + k])
    for i in range(4 * full, n):
        acc[0] = _add(acc[0], xs[i])
    total = acc[0]
    for k in range(1, 4):
        total = _add(total, acc[k])
    return total


def _add(a, b):
    """a + b; a is a tensor this module created (a product or a partial sum), so it
    is summed into in place — no allocation — which autograd allows: neither a
    product's nor a sum's backward keeps its result."""
    if a is None:
        return b
    if b is None:
        return a
    return a.add_(b)


def _ordered(xs: Sequence, width: int) -> Term:
    """The order of ``torch.sum(stack(xs, -1), -1)`` for a kernel of vector ``width``:
    below one vector, the scalar row sum; otherwise lanes of whole vectors are
    summed (row sum over vectors), the tail is summed first and the lanes are
    added to it in order (ATen's ``vectorized_inner_sum``)."""
    n = len(xs)
    if n < width:
        return _row_sum(xs)
    vectors = n // width
    lanes = [_row_sum([xs[v * width + lane] for v in range(vectors)]) for lane in range(width)]
    total = None
    for k in range(vectors * width, n):
        total = _add(total, xs[k])
    for lane in lanes:
        total = _add(total, lane)
    return total


_MAX_TERMS = 16  # dopri8 has 14 stages; the calibration covers every count up to this


@cache
def _cpu_width(dtype: torch.dtype) -> int | None:
    """The vector width whose order reproduces ``torch.sum`` on this CPU, or None."""
    g = torch.Generator().manual_seed(0)
    rows = 64
    data = torch.randn(rows, _MAX_TERMS, generator=g, dtype=torch.float64)
    scales = torch.logspace(-3, 3, _MAX_TERMS, dtype=torch.float64)
    data = data * scales[torch.randperm(_MAX_TERMS, generator=g)]
    if dtype.is_complex:
        data = torch.complex(data, data.flip(1))
    data = data.to(dtype)
    for width in (4, 8, 16, 2, 32, 64):
        ok = True
        for n in range(1, _MAX_TERMS + 1):
            cols = [data[:, j].contiguous() for j in range(n)]
            if not torch.equal(_ordered(cols, width), data[:, :n].contiguous().sum(-1)):
                ok = False
                break
        if ok:
            return width
    return None


def weighted_sum(terms: Sequence[Term]) -> torch.Tensor | None:
    """``torch.sum(stack(terms, -1), -1)`` as torchdiffeq's stage sums round it.

    ``terms`` are the products k_j·c_j in stage order, None where the
    coefficient is zero (adding an exact zero changes nothing, but the position
    decides the grouping). Returns None when every term is None.
    """
    present = [x for x in terms if x is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    first = present[0]
    width = _cpu_width(first.dtype) if first.device.type == "cpu" else None
    if width is not None:
        return _ordered(terms, width)
    full = [torch.zeros_like(first) if x is None else x for x in terms]
    return torch.stack(full, -1).sum(-1)
