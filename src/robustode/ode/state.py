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

import torch

from .arith import TimeArith, real_dtype, round_to, weighted_sum

State = tuple[torch.Tensor, ...]
Coefficient = float | torch.Tensor | None


def broadcast(c: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A 0-dim or per-sample (B,) coefficient in k's (real) dtype, shaped to broadcast over k."""
    c = c.to(real_dtype(k.dtype))
    return c.view(-1, *([1] * (k.dim() - 1))) if c.dim() == 1 else c


def lincomb(base: State | None, coeffs: Sequence[Coefficient], ks: Sequence[State]) -> State:
    """Return ``base + Σ_j coeffs[j] · ks[j]`` component-wise (``base`` None means 0).

    Rounded as torchdiffeq rounds its stage sums (:mod:`.arith`): each product
    on its own, the products summed in ``torch.sum``'s order, ``base`` added
    last. ``None`` coefficients (zero tableau entries) are skipped.
    """
    n = len(ks[0])
    out = []
    for i in range(n):
        terms = [None if c is None else _scaled(k[i], c) for c, k in zip(coeffs, ks, strict=False)]
        acc = weighted_sum(terms)
        if acc is None:
            acc = torch.zeros_like(ks[0][i])
        out.append(acc if base is None else base[i] + acc)
    return tuple(out)


def _scaled(k: torch.Tensor, c: float | torch.Tensor) -> torch.Tensor:
    return k * c if isinstance(c, float) else k * broadcast(c, k)


def scale_coefficient(a: float, dt: float | torch.Tensor, dtype: torch.dtype) -> Coefficient:
    """The coefficient ``a · dt`` of a tableau entry, rounded as the state's dtype
    computes it (torchdiffeq casts dt and the tableau to that dtype), or None
    when ``a`` is zero."""
    if a == 0.0:
        return None
    if isinstance(dt, torch.Tensor):
        return dt.to(real_dtype(dtype)) * a
    if real_dtype(dtype) == torch.float64:
        return a * dt
    return round_to(round_to(a, dtype) * round_to(dt, dtype), dtype)


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
    """Evaluate the quartic at x (a float, a 0-dim tensor or a per-sample (B,) tensor).

    x and its powers are rounded to the state's dtype first, as torchdiffeq
    evaluates them (``x.to(coefficients[0].dtype)``).
    """
    out = []
    for i in range(len(coeffs[0])):
        c0 = coeffs[0][i]
        if isinstance(x, torch.Tensor):
            xi = broadcast(x, c0)
            total = c0 + xi * coeffs[1][i]
            power = xi
            for c in coeffs[2:]:
                power = power * xi
                total = total + power * c[i]
        else:
            arith = TimeArith(c0.dtype)
            xi = arith.round(x)
            total = c0 + xi * coeffs[1][i]
            power = xi
            for c in coeffs[2:]:
                power = arith.mul(power, xi)
                total = total + power * c[i]
        out.append(total)
    return tuple(out)


TimePoint = tuple[float, "float | torch.Tensor"]


def linear_interpolate(
    y0: State, y1: State, t0: TimePoint, t1: TimePoint, t: TimePoint, arith: TimeArith
) -> State:
    """Linear interpolation between grid points (torchdiffeq's fixed-grid output rule).

    Each time is (host value, value used in arithmetic), the second a tensor
    when a gradient flows through the times; ``arith`` rounds the weight in
    the grid's dtype.
    """
    if t[0] == t0[0]:
        return y0
    if t[0] == t1[0]:
        return y1
    if isinstance(t[1], torch.Tensor) or isinstance(t0[1], torch.Tensor):
        slope = (t[1] - t0[1]) / (t1[1] - t0[1])
        return tuple(a + broadcast(slope, a) * (b - a) for a, b in zip(y0, y1, strict=True))
    slope = arith.div(arith.sub(t[1], t0[1]), arith.sub(t1[1], t0[1]))
    return tuple(a + slope * (b - a) for a, b in zip(y0, y1, strict=True))


def cubic_hermite(y0: State, f0: State, y1: State, f1: State, t0, t1, t, arith: TimeArith) -> State:
    """The cubic Hermite interpolant through (t0, y0, f0) and (t1, y1, f1) at t
    (torchdiffeq's ``interp="cubic"``), its weights computed in the grid's dtype."""
    if any(isinstance(v, torch.Tensor) for v in (t0, t1, t)):
        h = (t - t0) / (t1 - t0)
        h00 = (1 + 2 * h) * (1 - h) * (1 - h)
        h10 = h * (1 - h) * (1 - h)
        h01 = h * h * (3 - 2 * h)
        h11 = h * h * (h - 1)
        dt = t1 - t0
        w = [h00, h10 * dt, h01, h11 * dt]
        return tuple(
            broadcast(w[0], a) * a
            + broadcast(w[1], a) * g
            + broadcast(w[2], a) * b
            + broadcast(w[3], a) * k
            for a, g, b, k in zip(y0, f0, y1, f1, strict=True)
        )
    m, s, a_ = arith.mul, arith.sub, arith.add
    h = arith.div(s(t, t0), s(t1, t0))
    one_m = s(1.0, h)
    h00 = m(m(a_(1.0, m(2.0, h)), one_m), one_m)
    h10 = m(m(h, one_m), one_m)
    h01 = m(m(h, h), s(3.0, m(2.0, h)))
    h11 = m(m(h, h), s(h, 1.0))
    dt = s(t1, t0)
    w10, w11 = m(h10, dt), m(h11, dt)
    return tuple(
        h00 * a + w10 * g + h01 * b + w11 * k for a, g, b, k in zip(y0, f0, y1, f1, strict=True)
    )
