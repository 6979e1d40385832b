"""Arithmetic on ODE states held as tuples of tensors.

A state is always a tuple internally, so the skew block's (x, z) pair — two
tensors of different shapes — is integrated without flattening and
concatenating at every function evaluation (torchdiffeq's approach).

A *coefficient* is a Python float, a 0-dim tensor (a differentiable step size)
or a 1-D tensor of length B (per-sample step sizes), broadcast over each
sample's elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

State = tuple[torch.Tensor, ...]
Coefficient = float | torch.Tensor | None


def broadcast(c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A 0-dim or per-sample (B,) coefficient in k's dtype, shaped to broadcast over k."""
    c = c.to(k.dtype)
    return c.view(-1, *([1] * (k.dim() - 1))) if c.dim() == 1 else c


def lincomb(base: State | None, coeffs: Sequence[Coefficient], ks: Sequence[State]) -> State:
    """Return ``base + (Σ_j coeffs[j] · ks[j])`` component-wise (``base`` None means 0).

    The increments are summed first and added to ``base`` last, the order in
    which torchdiffeq rounds. ``None`` coefficients (zero tableau entries) are
    skipped.
    """
    n = len(ks[0])
    out = []
    for i in range(n):
        acc = None
        for c, k in zip(coeffs, ks, strict=False):
            if c is None:
                continue
            if isinstance(c, float):
                acc = k[i] * c if acc is None else torch.add(acc, k[i], alpha=c)
            else:
                cb = broadcast(c, k[i])
                acc = k[i] * cb if acc is None else torch.addcmul(acc, cb, k[i])
        if acc is None:
            acc = torch.zeros_like(ks[0][i])
        out.append(acc if base is None else base[i] + acc)
    return tuple(out)


def scale_coefficient(a: float, dt: float | torch.Tensor, dtype: torch.dtype) -> Coefficient:
    """The coefficient ``a · dt`` of a tableau entry, rounded as the state's dtype
    computes it (torchdiffeq casts dt and the tableau to that dtype), or None
    when ``a`` is zero."""
    if a == 0.0:
        return None
    if isinstance(dt, torch.Tensor):
        return dt.to(dtype) * a
    if dtype == torch.float64:
        return a * dt
    return round_to(round_to(a, dtype) * round_to(dt, dtype), dtype)


def round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (a Python float holding that exact value)."""
    if dtype == torch.float64:
        return value
    if dtype == torch.float32:
        return float(np.float32(value))
    return float(torch.tensor(value, dtype=dtype))


def where(mask: torch.Tensor, a: State, b: State) -> State:
    """Per-sample select: sample i of the result is a's where mask[i], else b's."""
    out = []
    for x, y in zip(a, b, strict=True):
        m = mask.view(-1, *([1] * (x.dim() - 1)))
        out.append(torch.where(m, x, y))
    return tuple(out)


# ---------------------------------------------------------------- interpolation
def quartic_coefficients(
    y0: State, y1: State, y_mid: State, f0: State, f1: State, dt: float | torch.Tensor
) -> list[State]:
    """Coefficients [e, d, c, b, a] of the quartic through y0, y_mid, y1 with end slopes.

    p(x) = e + d·x + c·x² + b·x³ + a·x⁴ on x ∈ [0, 1] matches y(t0), y(t0+dt/2),
    y(t1) and dt·f at both ends (the dense output torchdiffeq uses for every
    adaptive method).
    """
    coeffs: list[list[torch.Tensor]] = [[], [], [], [], []]
    for a0, a1, am, g0, g1 in zip(y0, y1, y_mid, f0, f1, strict=True):
        h = broadcast(dt, a0) if isinstance(dt, torch.Tensor) else dt
        coeffs[0].append(a0)
        coeffs[1].append(h * g0)
        coeffs[2].append(h * (g1 - 4 * g0) - 11 * a0 - 5 * a1 + 16 * am)
        coeffs[3].append(h * (5 * g0 - 3 * g1) + 18 * a0 + 14 * a1 - 32 * am)
        coeffs[4].append(2 * h * (g1 - g0) - 8 * (a1 + a0) + 16 * am)
    return [tuple(c) for c in coeffs]


def quartic_evaluate(coeffs: list[State], x: float | torch.Tensor) -> State:
    """Evaluate the quartic at x (a float, a 0-dim tensor or a per-sample (B,) tensor)."""
    out = []
    for i in range(len(coeffs[0])):
        xi = broadcast(x, coeffs[0][i]) if isinstance(x, torch.Tensor) else x
        total = coeffs[0][i] + xi * coeffs[1][i]
        power = xi
        for c in coeffs[2:]:
            power = power * xi
            total = total + power * c[i]
        out.append(total)
    return tuple(out)


TimePoint = tuple[float, "float | torch.Tensor"]


def linear_interpolate(y0: State, y1: State, t0: TimePoint, t1: TimePoint, t: TimePoint) -> State:
    """Linear interpolation between grid points (torchdiffeq's fixed-grid output rule).

    Each time is (host value, value used in arithmetic), the second a tensor
    when a gradient flows through the times.
    """
    if t[0] == t0[0]:
        return y0
    if t[0] == t1[0]:
        return y1
    slope = (t[1] - t0[1]) / (t1[1] - t0[1])
    if isinstance(slope, torch.Tensor):
        return tuple(a + slope.to(a.dtype) * (b - a) for a, b in zip(y0, y1, strict=True))
    return tuple(torch.add(a, b - a, alpha=slope) for a, b in zip(y0, y1, strict=True))
