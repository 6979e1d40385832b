"""The ``options`` dict and the tolerances of one solve, checked as torchdiffeq 0.2.5 checks them.

torchdiffeq ignores an option a solver does not take with a warning (e.g.
``step_size`` given to dopri5); so does robustode, naming what the method
accepts. Values a solver cannot use (a negative step size, an interpolation
rule that does not exist, step_size together with grid_constructor) are one
``ValueError`` line before anything is integrated.

Accepted, by family (torchdiffeq's names and meanings):

* adaptive Runge–Kutta: ``first_step``, ``safety``, ``ifactor``, ``dfactor``,
  ``min_step``, ``max_step``, ``max_num_steps``, ``step_t``, ``jump_t``,
  ``dtype`` (of the time arithmetic, default float64), ``norm``;
* fixed grid: ``step_size``, ``grid_constructor``, ``interp`` ("linear" or
  "cubic"), ``perturb``, and robustode's ``max_num_steps`` (a grid-length
  budget; torchdiffeq has none). ``norm`` is dropped silently, as torchdiffeq
  drops it;
* Adams methods additionally ``max_iters``, ``max_order`` and, for
  implicit_adams, ``implicit``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .tableau import ADAMS_METHODS, ADAPTIVE_METHODS

DEFAULT_MAX_NUM_STEPS = 100_000
ADAMS_MAX_ORDER = 12
ADAMS_MIN_ORDER = 4

_ADAPTIVE = {
    "first_step",
    "safety",
    "ifactor",
    "dfactor",
    "min_step",
    "max_step",
    "max_num_steps",
    "step_t",
    "jump_t",
    "dtype",
    "norm",
}
_FIXED = {"step_size", "grid_constructor", "interp", "perturb", "max_num_steps", "norm"}
_ADAMS = _FIXED | {"max_iters", "max_order"}


def accepted_options(method: str) -> set[str]:
    if method in ADAPTIVE_METHODS:
        return set(_ADAPTIVE)
    if method == "explicit_adams":
        return set(_ADAMS)
    if method in ADAMS_METHODS:
        return _ADAMS | {"implicit"}
    return set(_FIXED)


@dataclass(frozen=True)
class AdaptiveSettings:
    """Options of an adaptive Runge–Kutta solve, validated."""

    first_step: float | None = None
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    min_step: float = 0.0
    max_step: float = math.inf
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    step_t: tuple[float, ...] | None = None
    jump_t: tuple[float, ...] | None = None
    dtype: torch.dtype = torch.float64
    norm: Callable | None = None


@dataclass(frozen=True)
class FixedSettings:
    """Options of a fixed-grid solve (Runge–Kutta or Adams), validated."""

    step_size: float | None = None
    grid_constructor: Callable | None = None
    interp: str = "linear"
    perturb: bool = False
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    max_iters: int = 4
    max_order: int = ADAMS_MAX_ORDER
    implicit: bool = True


def _number(name: str, value, *, positive: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    ok = (math.isfinite(value) or (allow_inf and value == math.inf)) and (
        value > 0 if positive else value >= 0
    )
    if not ok:
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(
            f"{name} must be {kind} {'number' if allow_inf else 'finite number'}, got {value!r}"
        )
    return value


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value!r}")
    return int(value)


def _times(name: str, value, sign: float) -> tuple[float, ...]:
    try:
        values = torch.as_tensor(value, dtype=torch.float64).detach().reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{name} must be a 1-D tensor or sequence of times, got {value!r}"
        ) from exc
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} must hold finite times")
    return tuple(sign * v for v in values.tolist())


def parse_options(method: str, options: dict | None, time_sign: float = 1.0):
    """Validate ``options`` for ``method``; warn about (and drop) those it does not take.

    ``time_sign`` is −1 when a decreasing grid is integrated as s = −t: the
    ``step_t``/``jump_t`` times are then negated, as torchdiffeq negates them.
    Returns :class:`AdaptiveSettings` or :class:`FixedSettings`.
    """
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    accepted = accepted_options(method)
    unexpected = sorted(set(options) - accepted)
    if unexpected:
        warnings.warn(
            f"{method}: unexpected option(s) {unexpected} ignored, as torchdiffeq ignores them; "
            f"{method} takes {sorted(accepted)}",
            UserWarning,
            stacklevel=4,
        )
    o = {k: v for k, v in options.items() if k in accepted and v is not None}
    max_steps = _count("max_num_steps", o.get("max_num_steps", DEFAULT_MAX_NUM_STEPS), 1)
    if method in ADAPTIVE_METHODS:
        return _adaptive(o, max_steps, time_sign)
    return _fixed(method, o, max_steps)


def _adaptive(o: dict, max_steps: int, time_sign: float) -> AdaptiveSettings:
    kw: dict = {"max_num_steps": max_steps}
    if "first_step" in o:
        kw["first_step"] = _number("first_step", o["first_step"], positive=True)
    for name in ("safety", "ifactor", "dfactor"):
        if name in o:
            kw[name] = _number(name, o[name], positive=True)
    if "min_step" in o:
        kw["min_step"] = _number("min_step", o["min_step"])
    if "max_step" in o:
        kw["max_step"] = _number("max_step", o["max_step"], positive=True, allow_inf=True)
    if kw.get("min_step", 0.0) > kw.get("max_step", math.inf):
        raise ValueError(f"min_step ({kw['min_step']}) must not exceed max_step ({kw['max_step']})")
    for name in ("step_t", "jump_t"):
        if name in o:
            kw[name] = _times(name, o[name], time_sign)
    if "dtype" in o:
        dtype = o["dtype"]
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(
                f"dtype (of the time arithmetic) must be a floating torch.dtype, got {dtype!r}"
            )
        kw["dtype"] = dtype
    if "norm" in o:
        if not callable(o["norm"]):
            raise ValueError(f"norm must be a callable taking the state, got {o['norm']!r}")
        kw["norm"] = o["norm"]
    return AdaptiveSettings(**kw)


def _fixed(method: str, o: dict, max_steps: int) -> FixedSettings:
    kw: dict = {"max_num_steps": max_steps}
    if "step_size" in o:
        kw["step_size"] = _number("step_size", o["step_size"], positive=True)
    if "grid_constructor" in o:
        if not callable(o["grid_constructor"]):
            raise ValueError("grid_constructor must be a callable (func, y0, t) -> grid")
        if "step_size" in kw:
            raise ValueError("step_size and grid_constructor are mutually exclusive arguments")
        kw["grid_constructor"] = o["grid_constructor"]
    if "interp" in o:
        if o["interp"] not in ("linear", "cubic"):
            raise ValueError(
                f"unknown interpolation method {o['interp']!r}; use 'linear' or 'cubic'"
            )
        kw["interp"] = o["interp"]
    if "perturb" in o:
        kw["perturb"] = bool(o["perturb"])
    if method in ADAMS_METHODS:
        if "max_iters" in o:
            kw["max_iters"] = _count("max_iters", o["max_iters"], 1)
        if "max_order" in o:
            order = _count("max_order", o["max_order"], 2)
            if order > ADAMS_MAX_ORDER:
                raise ValueError(f"max_order must be at most {ADAMS_MAX_ORDER}, got {order}")
            kw["max_order"] = order
        kw["implicit"] = method != "explicit_adams" and bool(o.get("implicit", True))
        if kw.get("max_order", ADAMS_MAX_ORDER) < ADAMS_MIN_ORDER:
            warnings.warn(
                f"max_order is below {ADAMS_MIN_ORDER}, so the solver reduces to rk4",
                UserWarning,
                stacklevel=5,
            )
    return FixedSettings(**kw)


# ------------------------------------------------------------------ tolerances
Tol = float | torch.Tensor  # a scalar, or a tensor in the time dtype broadcast over one component


def _scalar_like(v) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.dim() == 0)


def tolerances(
    name: str, value, shapes: Sequence[torch.Size], is_tuple: bool, dtype: torch.dtype, device
) -> tuple[Tol, ...]:
    """One tolerance per state tensor, as torchdiffeq reads ``rtol``/``atol``.

    A scalar serves every element. For a tuple state a sequence gives one value
    per tensor (torchdiffeq first makes each a tensor of the default dtype, so
    a Python float is rounded to float32 there — reproduced); for a tensor
    state a tensor (or sequence) broadcastable to it gives per-element values.
    Non-scalar tolerances are tensors in ``dtype`` (the time dtype), which
    makes torchdiffeq compute the error scale in that precision.
    """
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise ValueError(f"{name} cannot require gradient")
    if _scalar_like(value):
        out: tuple[Tol, ...] = tuple(float(value) for _ in shapes)
    elif is_tuple:
        try:
            values = list(value)
        except TypeError as exc:
            raise ValueError(f"{name} must be a number or one per state tensor") from exc
        if len(values) != len(shapes):
            raise ValueError(
                f"{name} has {len(values)} entries; the tuple state has {len(shapes)} tensors"
            )
        out = tuple(
            torch.as_tensor(v).to(device=device, dtype=dtype).expand(shape)
            for v, shape in zip(values, shapes, strict=True)
        )
    else:
        try:
            t = torch.as_tensor(value, dtype=dtype, device=device)
            torch.broadcast_shapes(t.shape, shapes[0])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"{name} must be a number or a tensor broadcastable to y0's shape "
                f"{tuple(shapes[0])}, got {value!r}"
            ) from exc
        out = (t,)
    for v in out:
        ok = (
            math.isfinite(v) and v >= 0
            if isinstance(v, float)
            else bool((torch.isfinite(v) & (v >= 0)).all())
        )
        if not ok:
            raise ValueError(f"{name} must be finite and ≥ 0, got {value}")
    return out


def tolerance_max(values: Sequence[Tol]) -> float:
    return max(float(v) if isinstance(v, float) else float(v.max()) for v in values)


def tolerance_min(values: Sequence[Tol]) -> float:
    return min(float(v) if isinstance(v, float) else float(v.min()) for v in values)
