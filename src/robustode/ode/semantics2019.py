"""torchdiffeq's adaptive solvers as they were before its 0.1.0 rewrite (``"torchdiffeq-2019"``).

The SONet reference code targets torch 1.3, so it ran on a torchdiffeq from
before the 2020 rewrite (released as 0.1.0). That solver differs from 0.2.5 —
robustode's default, :mod:`.adaptive` — in ways that change both the steps
and the gradients (docs/ode-engine.md, "Step semantics"):

* **every step size is differentiable**: the step-size update had no
  ``no_grad``, so each dt is a function of the state through the error ratio,
  and with it the accepted grid, the stage times and the interpolation back to
  each output time;
* **error norm per state tensor**: the mean square of err / (atol + rtol·max(|y0|,
  |y1|)) is taken over each tensor of a tuple state separately, and both the
  accept test (every mean square ≤ 1) and the step-size update (the largest
  mean square) use those numbers — not one RMS over the whole state;
* **step-size update**: factor = max(1/ifactor, min(sqrt(m)^(1/order)/safety,
  1/d)) with d = 1 after a mean square below 1 (the step never shrinks after
  a success) and dfactor otherwise, dt ← dt/factor, dt·ifactor when m = 0; the
  controller order is 5 for dopri5 *and* adaptive_heun, 3 for bosh3;
* **first step** (Hairer–Nørsett–Wanner II.4 as it was written then): norms
  per state tensor, h0 = 0.01·max(d0/d1), h1 = (0.01/max(d1 ∪ d2))^(1/(p+1))
  with p = 4 (dopri5), 2 (bosh3), 1 (adaptive_heun), computed with the first
  state tensor's tolerances, differentiable;
* no nudging of stage times off the step's end, no ``min_step``/``max_step``,
  ``step_t``, callbacks or events; the time is float64, each stage's time and
  step in the state's dtype.

The dense output is the same quartic as today's. The reference is torchdiffeq
at commit f9539b7 (2020-06-30, the last change to ``torchdiffeq/_impl``
before the rewrite; dopri5's automatic-first-step path is unchanged there
since 2019); tests/test_ode_2019.py holds values that code produced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .callbacks import find_callbacks
from .errors import SolverError
from .field import VectorField
from .record import StepRecord
from .state import State
from .tableau import TABLEAUS, ButcherTableau

DEFAULT_SEMANTICS = "torchdiffeq-0.2.5"
LEGACY_SEMANTICS = "torchdiffeq-2019"
STEP_SEMANTICS = (DEFAULT_SEMANTICS, LEGACY_SEMANTICS)
REFERENCE_COMMIT = "f9539b7dc1bb1f4956d18bbdd32c5cb64cf81fbc"

# method -> (order handed to the first-step rule, order of the step-size update),
# as that torchdiffeq had them (adaptive_heun's 5 is what it used, not its order).
LEGACY_ORDERS: dict[str, tuple[int, int]] = {
    "dopri5": (4, 5),
    "bosh3": (2, 3),
    "adaptive_heun": (1, 5),
}
LEGACY_OPTIONS = ("first_step", "safety", "ifactor", "dfactor", "max_num_steps")


def check_step_semantics(step_semantics: str, method: str | None = None) -> None:
    """Refuse an unknown semantics name, or an adaptive method the 2019 solver did not have."""
    if step_semantics not in STEP_SEMANTICS:
        raise ValueError(
            f"unknown step_semantics '{step_semantics}'; choose one of: {', '.join(STEP_SEMANTICS)}"
        )
    if (
        step_semantics == LEGACY_SEMANTICS
        and method is not None
        and TABLEAUS.get(method) is not None
        and TABLEAUS[method].adaptive
        and method not in LEGACY_ORDERS
    ):
        raise ValueError(
            f"step_semantics='{LEGACY_SEMANTICS}' has no '{method}' (that torchdiffeq had "
            f"{', '.join(LEGACY_ORDERS)} as adaptive methods)"
        )


@dataclass(frozen=True)
class LegacySettings:
    """The options that torchdiffeq's adaptive solvers took then (same defaults)."""

    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    max_num_steps: int = 2**31 - 1

    @classmethod
    def parse(cls, options: dict | None) -> LegacySettings:
        options = dict(options or {})
        unknown = sorted(set(options) - set(LEGACY_OPTIONS))
        if unknown:
            raise ValueError(
                f"option(s) {unknown} do not exist with step_semantics='{LEGACY_SEMANTICS}'; "
                f"accepted: {', '.join(LEGACY_OPTIONS)}"
            )
        settings = cls(**options)
        for name in ("safety", "ifactor", "dfactor"):
            value = getattr(settings, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"options['{name}'] must be a positive number, got {value!r}")
        if settings.first_step is not None and not settings.first_step > 0:
            raise ValueError(f"options['first_step'] must be positive, got {settings.first_step!r}")
        if int(settings.max_num_steps) < 1:
            raise ValueError(f"max_num_steps must be ≥ 1, got {settings.max_num_steps!r}")
        return settings


def _per_tensor(name: str, value, n: int) -> tuple[float, ...]:
    """A tolerance as one float per state tensor (a float, or a sequence of n floats)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * n
    if (
        isinstance(value, Sequence)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(float(v) for v in value)
    raise ValueError(
        f"{name} must be a number or one number per state tensor with "
        f"step_semantics='{LEGACY_SEMANTICS}', got {value!r}"
    )


def _weighted(h: torch.Tensor, coeffs: Sequence[float], values: Sequence[torch.Tensor]):
    """Σ (h·c_i)·v_i summed left to right, every term kept (zeros included), as the
    old solver summed them — the order fixes the rounding."""
    total = None
    for c, v in zip(coeffs, values, strict=True):
        term = (h * c) * v
        total = term if total is None else total + term
    return total


def _via_float32(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as that torchdiffeq made its constants: ``torch.tensor(value)`` (float32,
    the default dtype) converted to ``like``'s dtype — so safety 0.9 was 0.8999999762,
    dfactor 0.2 was 0.2000000030 and the exponent 1/5 was 0.2000000030."""
    return torch.tensor(value, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.norm() / (x.numel() ** 0.5)


def _largest(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Python's ``max`` over 0-dim tensors (the first of equal values), with its gradient."""
    best = values[0]
    for v in values[1:]:
        if bool(v > best):
            best = v
    return best


def initial_step(
    fn: VectorField,
    t0: torch.Tensor,
    y0: State,
    f0: State,
    order: int,
    rtol: float,
    atol: float,
) -> torch.Tensor:
    """The first step of the 2019 solver (float64, differentiable): Hairer–Nørsett–Wanner
    II.4 with each norm taken per state tensor and the largest ratio used."""
    ty = t0.to(y0[0].dtype)
    scale = tuple(atol + torch.abs(y) * rtol for y in y0)
    d0 = [_rms(y / s) for y, s in zip(y0, scale, strict=True)]
    d1 = [_rms(f / s) for f, s in zip(f0, scale, strict=True)]
    if _largest(d0).item() < 1e-5 or _largest(d1).item() < 1e-5:
        h0 = _via_float32(1e-6, ty)
    else:
        h0 = 0.01 * _largest([a / b for a, b in zip(d0, d1, strict=True)])
    y1 = tuple(y + h0 * f for y, f in zip(y0, f0, strict=True))
    f1 = fn(ty + h0, y1)
    d2 = [_rms((b - a) / s) / h0 for b, a, s in zip(f1, f0, scale, strict=True)]
    if _largest(d1).item() <= 1e-15 and _largest(d2).item() <= 1e-15:
        h1 = torch.max(_via_float32(1e-6, h0), h0 * 1e-3)
    else:
        h1 = (0.01 / _largest([*d1, *d2])) ** (1.0 / float(order + 1))
    return torch.min(100 * h0, h1).to(torch.float64)


def next_step_size(
    dt: torch.Tensor, mean_squares: Sequence[torch.Tensor], order: int, c: dict
) -> torch.Tensor:
    """The 2019 step-size update (differentiable through the error ratio)."""
    m = _largest(mean_squares)
    if bool(m == 0):
        return dt * c["ifactor"]
    dfactor = c["one"] if bool(m < 1) else c["dfactor"]
    ratio = torch.sqrt(m).to(dt)
    exponent = _via_float32(1 / order, dt)
    factor = torch.max(1 / c["ifactor"], torch.min(ratio**exponent / c["safety"], 1 / dfactor))
    return dt / factor


def _quartic_fit(y0: State, y1: State, y_mid: State, f0: State, f1: State, h: torch.Tensor):
    """Coefficients (a, b, c, d, e) of a·x⁴ + b·x³ + c·x² + d·x + e on x ∈ [0, 1]."""

    def combine(weights, i):
        values = (f0[i], f1[i], y0[i], y1[i], y_mid[i])
        total = None
        for w, v in zip(weights, values, strict=True):
            term = w * v
            total = term if total is None else total + term
        return total

    n = len(y0)
    a = tuple(combine((-2 * h, 2 * h, -8, -8, 16), i) for i in range(n))
    b = tuple(combine((5 * h, -3 * h, 18, 14, -32), i) for i in range(n))
    c = tuple(combine((-4 * h, h, -11, -5, 16), i) for i in range(n))
    d = tuple(h * f for f in f0)
    return (a, b, c, d, y0)


def _quartic_evaluate(coeffs, t0: torch.Tensor, t1: torch.Tensor, t: torch.Tensor) -> State:
    dtype = coeffs[0][0].dtype
    t0, t1, t = t0.to(dtype), t1.to(dtype), t.to(device=t0.device, dtype=dtype)
    x = (t - t0) / (t1 - t0)
    powers = [torch.ones((), dtype=dtype, device=x.device), x]
    for _ in range(2, len(coeffs)):
        powers.append(powers[-1] * x)
    out = []
    for per_tensor in zip(*coeffs, strict=True):
        total = None
        for coef, p in zip(per_tensor, reversed(powers), strict=True):
            term = coef * p
            total = term if total is None else total + term
        out.append(total)
    return tuple(out)


class LegacySolver:
    """One solve with the 2019 semantics: state (y, f, t_prev, t, dt, dense coefficients)."""

    def __init__(
        self,
        fn: VectorField,
        method: str,
        y0: State,
        t0: torch.Tensor,
        rtol: tuple[float, ...],
        atol: tuple[float, ...],
        settings: LegacySettings,
        record: StepRecord,
        detach: bool = False,
    ) -> None:
        self.fn, self.method, self.record, self.detach = fn, method, record, detach
        self.tableau: ButcherTableau = TABLEAUS[method]
        self.first_order, self.order = LEGACY_ORDERS[method]
        self.rtol, self.atol, self.settings = rtol, atol, settings
        like = torch.empty((), dtype=torch.float64, device=y0[0].device)
        self.consts = {
            name: _via_float32(value, like)
            for name, value in (
                ("safety", settings.safety),
                ("ifactor", settings.ifactor),
                ("dfactor", settings.dfactor),
                ("one", 1.0),
            )
        }
        f0 = fn(t0.to(y0[0].dtype), y0)
        if settings.first_step is None:
            dt = initial_step(fn, t0, y0, f0, self.first_order, rtol[0], atol[0])
        else:
            dt = _via_float32(settings.first_step, like)
        if detach:
            dt = dt.detach()
        self.y, self.f, self.t_prev, self.t, self.dt = y0, f0, t0, t0, dt
        self.coeffs = (y0,) * 5

    def advance(self, next_t: torch.Tensor) -> State:
        """Step until the last accepted step ends at or past next_t, then interpolate."""
        n_steps = 0
        while bool(next_t > self.t):
            if n_steps >= self.settings.max_num_steps:
                raise SolverError(
                    f"{self.method} (step_semantics='{LEGACY_SEMANTICS}', rtol={self.rtol[0]}, "
                    f"atol={self.atol[0]}) exceeded max_num_steps={self.settings.max_num_steps} "
                    f"at t={float(self.t):.6g}"
                )
            self._step()
            n_steps += 1
        return _quartic_evaluate(self.coeffs, self.t_prev, self.t, next_t)

    def _step(self) -> None:
        y0, f0, t0, dt = self.y, self.f, self.t, self.dt
        if not bool(t0 + dt > t0):
            raise SolverError(f"{self.method}: underflow in dt {float(dt):.3g} at t={float(t0)}")
        if not all(bool(torch.isfinite(y).all()) for y in y0):
            raise SolverError(f"{self.method}: non-finite values in the state at t={float(t0)}")
        tab, fn = self.tableau, self.fn
        ty, h = t0.to(y0[0].dtype), dt.to(y0[0].dtype)
        n = len(y0)
        stages: list[State] = [f0]
        yi = y0
        for c_i, a_i in zip(tab.c, tab.a, strict=True):
            yi = tuple(
                y0[j] + _weighted(h, a_i, [k[j] for k in stages[: len(a_i)]]) for j in range(n)
            )
            stages.append(fn(ty + c_i * h, yi))
        if tab.fsal:
            y1 = yi
        else:
            y1 = tuple(y0[j] + _weighted(h, tab.b, [k[j] for k in stages]) for j in range(n))
        f1 = stages[-1]
        err = tuple(_weighted(h, tab.b_error, [k[j] for k in stages]) for j in range(n))
        mean_squares = []
        for j in range(n):
            tol = self.atol[j] + self.rtol[j] * torch.max(torch.abs(y0[j]), torch.abs(y1[j]))
            ratio = err[j] / tol
            mean_squares.append(torch.mean(ratio * ratio))
        accept = all(bool(m <= 1) for m in mean_squares)
        self.record.add_step(t0.detach(), dt.detach(), accept)
        if accept:
            y_mid = tuple(y0[j] + _weighted(h, tab.b_mid, [k[j] for k in stages]) for j in range(n))
            self.coeffs = _quartic_fit(y0, y1, y_mid, f0, f1, h)
            self.y, self.f, self.t = y1, f1, t0 + dt
        self.t_prev = t0
        dt_next = next_step_size(dt, mean_squares, self.order, self.consts)
        self.dt = dt_next.detach() if self.detach else dt_next


def integrate_2019(
    func: Callable,
    y0: State,
    is_tuple: bool,
    t: torch.Tensor,
    *,
    rtol,
    atol,
    method: str,
    options: dict | None,
    record: StepRecord,
    detach_step_size: bool | None = None,
) -> tuple[torch.Tensor, ...]:
    """Solve with the 2019 semantics; one (len(t), ...) tensor per state tensor.

    ``detach_step_size`` None or False keeps every step size differentiable (as
    then); True detaches all of them, the first included (an attack's ablation).
    """
    if method not in LEGACY_ORDERS:
        raise ValueError(
            f"step_semantics='{LEGACY_SEMANTICS}' solves with {', '.join(LEGACY_ORDERS)}; "
            f"got method '{method}'"
        )
    if find_callbacks(func):
        raise ValueError(
            f"step callbacks ({', '.join(sorted(find_callbacks(func)))}) are not called with "
            f"step_semantics='{LEGACY_SEMANTICS}' (that torchdiffeq had none); remove them or "
            f"use step_semantics='{DEFAULT_SEMANTICS}'"
        )
    if len({v.dtype for v in y0}) != 1 or not all(v.is_floating_point() for v in y0):
        raise ValueError("every tensor of y0 must be real floating point, of one dtype")
    settings = LegacySettings.parse(options)
    rtol_c, atol_c = _per_tensor("rtol", rtol, len(y0)), _per_tensor("atol", atol, len(y0))
    if max(rtol_c) == 0 and max(atol_c) == 0:
        raise ValueError("rtol and atol cannot both be 0 for an adaptive method")
    sign = 1.0
    if t.numel() > 1 and bool(t[0] > t[1]):
        t, sign = -t, -1.0  # as then: integrate s = -t with the field negated
    t = t.to(device=y0[0].device, dtype=torch.float64)
    fn = VectorField(func, is_tuple, record, y0[0].dtype, y0[0].device, sign)
    record.method, record.step_control = method, "batch"
    first_new = record.num_steps
    if t.numel() == 1:
        return tuple(torch.stack([v]) for v in y0)
    try:
        solver = LegacySolver(
            fn, method, y0, t[0], rtol_c, atol_c, settings, record, bool(detach_step_size)
        )
        outputs = [y0] + [solver.advance(t[i]) for i in range(1, t.numel())]
    finally:
        if sign < 0:
            record.negate_times(first_new)
    return tuple(torch.stack([out[j] for out in outputs]) for j in range(len(y0)))
