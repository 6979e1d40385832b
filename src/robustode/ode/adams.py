"""Adams–Bashforth(–Moulton) steps on a fixed grid, with torchdiffeq 0.2.5's variable order.

The first steps (fewer than three derivatives in the history) are Kutta's 3/8
rule; afterwards the explicit Adams–Bashforth formula of order k uses the k
latest derivatives, k growing by one per step up to ``max_order − 1``
(Hairer, Nørsett & Wanner, Solving ODEs I, §III.1). ``implicit_adams``
corrects the prediction with the Adams–Moulton formula of order k + 1 by
functional iteration, at most ``max_iters`` evaluations of f(t1, ·), stopping
when successive increments agree within rtol/atol (max norm, relative to the
increments, as torchdiffeq measures it); when they never do it warns and drops
the oldest derivative, as torchdiffeq does.

The coefficients are computed here exactly (rational arithmetic) and rounded
to float64 once — the same values torchdiffeq tabulates. The history is
batch-wide: the implicit corrector's convergence test spans the whole batch,
so ``step_control="per_sample"`` is refused for it.
"""

from __future__ import annotations

import warnings
from collections import deque
from fractions import Fraction
from functools import cache

import torch

from .arith import TimeArith
from .controller import _scale
from .fixed_steps import rk4
from .options import FixedSettings, Tol
from .state import State


def _poly_mul(p: list[Fraction], q: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


def exact_weights(order: int, shift: int) -> tuple[Fraction, ...]:
    """Exact Lagrange weights ∫_0^1 ℓ_j(u) du of the order-``order`` Adams formula.

    Nodes u = shift − j for j = 0..order−1 in units of the step from t_n (0 is
    t_n, 1 is t_{n+1}): shift 0 gives Adams–Bashforth (f_n, f_{n−1}, …),
    shift 1 Adams–Moulton (f_{n+1}, f_n, …).
    """
    nodes = [Fraction(shift - j) for j in range(order)]
    weights = []
    for j, node in enumerate(nodes):
        poly, denom = [Fraction(1)], Fraction(1)
        for k, other in enumerate(nodes):
            if k != j:
                poly = _poly_mul(poly, [-other, Fraction(1)])
                denom *= node - other
        integral = sum(c / (p + 1) for p, c in enumerate(poly))
        weights.append(integral / denom)
    return tuple(weights)


@cache
def bashforth(order: int) -> tuple[float, ...]:
    """Adams–Bashforth weights of f_n, f_{n−1}, … (each the float64 nearest the exact value)."""
    return tuple(float(w) for w in exact_weights(order, 0))


@cache
def moulton(order: int) -> tuple[float, ...]:
    """Adams–Moulton weights of f_{n+1}, f_n, … (each the float64 nearest the exact value)."""
    return tuple(float(w) for w in exact_weights(order, 1))


MIN_ORDER = 4


class AdamsStepper:
    """The step function of one Adams solve; it keeps the derivative history."""

    def __init__(
        self, settings: FixedSettings, rtol: tuple[Tol, ...], atol: tuple[Tol, ...]
    ) -> None:
        self.implicit = settings.implicit
        self.max_iters = settings.max_iters
        self.max_order = settings.max_order
        self.rtol, self.atol = rtol, atol
        self.prev_f: deque[State] = deque(maxlen=self.max_order - 1)
        self.prev_t: float | None = None

    def _remember(self, t0: float, f0: State) -> None:
        if self.prev_t is None or self.prev_t != t0:
            self.prev_f.appendleft(f0)
            self.prev_t = t0

    def _converged(self, old: State, new: State) -> bool:
        worst = None
        for a, b, rt, at in zip(old, new, self.rtol, self.atol, strict=True):
            rt = rt.to(a.dtype) if isinstance(rt, torch.Tensor) else rt
            at = at.to(a.dtype) if isinstance(at, torch.Tensor) else at
            m = ((a - b).abs() / _scale(a, b, rt, at)).abs().max()
            worst = m if worst is None else torch.maximum(worst, m)
        return bool(worst < 1)

    def __call__(self, fn, t0, dt, t1, y0: State, perturb: bool, arith: TimeArith):
        key = float(t0.detach()) if isinstance(t0, torch.Tensor) else t0
        f0 = fn(t0, y0, nudge=1 if perturb else 0)
        self._remember(key, f0)
        order = min(len(self.prev_f), self.max_order - 1)
        if order < MIN_ORDER - 1:
            dy, _ = rk4(_Given(fn, self.prev_f[0]), t0, dt, t1, y0, perturb, arith)
            return dy, f0
        dy = _dot(_times_dt(dt, bashforth(order)), self.prev_f)
        if self.implicit:
            m = moulton(order + 1)
            delta = tuple(dt * d for d in _dot(m[1:], self.prev_f))
            lead = dt.to(torch.float64) * m[0] if isinstance(dt, torch.Tensor) else float(dt) * m[0]
            converged = False
            f = None
            for _ in range(self.max_iters):
                old = dy
                f = fn(
                    t1,
                    tuple(y + d for y, d in zip(y0, dy, strict=True)),
                    nudge=-1 if perturb else 0,
                )
                dy = tuple(lead * g + d for g, d in zip(f, delta, strict=True))
                converged = self._converged(old, dy)
                if converged:
                    break
            if not converged:
                warnings.warn(
                    "Functional iteration did not converge. Solution may be incorrect.",
                    UserWarning,
                    stacklevel=2,
                )
                self.prev_f.pop()
        return dy, f0


def _times_dt(dt, coefficients: tuple[float, ...]):
    """dt·β_j in float64, as torchdiffeq multiplies dt by its float64 coefficient table."""
    if isinstance(dt, torch.Tensor):
        d = dt.to(torch.float64)
        return [d * c for c in coefficients]
    return [float(dt) * c for c in coefficients]


def _dot(weights, history) -> State:
    """Σ_j w_j · f_j, left to right (torchdiffeq's Python ``sum``), in the state's dtype.

    torchdiffeq's weights are 0-dim float64 tensors; times a 0-dim state that
    promotes to float64 (PyTorch's rule for two 0-dim operands), so for such a
    state the sum is accumulated in float64 and rounded once, as there.
    """
    n = len(history[0])
    out = []
    for i in range(n):
        dtype = history[0][i].dtype
        wide = torch.promote_types(dtype, torch.float64) if history[0][i].dim() == 0 else dtype
        acc = None
        for w, f in zip(weights, history, strict=False):
            term = f[i].to(wide) * w
            acc = term if acc is None else acc + term
        out.append(acc.to(dtype))
    return tuple(out)


class _Given:
    """The field, except that the first call returns the derivative already known
    (torchdiffeq's rk4 step with ``f0`` given)."""

    def __init__(self, fn, f0: State) -> None:
        self.fn, self.f0, self.used = fn, f0, False

    def __call__(self, t, y, nudge: int = 0):
        if not self.used:
            self.used = True
            return self.f0
        return self.fn(t, y, nudge=nudge)
