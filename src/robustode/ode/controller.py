"""Step-size control: error norms, the first step, and the step-size update.

Two modes share the formulas (torchdiffeq 0.2.5's, docs/references.md):

* ``batch``: one error norm for the whole state — the RMS over every element
  of each state tensor, the maximum over the tensors of a tuple state — so a
  sample's step sizes depend on its batch-mates;
* ``per_sample``: the same norm taken over each sample's own elements, giving
  one error ratio, one first step and one step size per sample.

Update rule (accept when err ≤ 1; never shrink after an accepted step):
``factor = min(ifactor, max(safety · err^(−1/order), dfactor))``, with
``dfactor`` replaced by 1 when err < 1 and ``factor = ifactor`` when err = 0,
computed in the time dtype (float64 unless ``options["dtype"]`` says otherwise).

The norm is the default above or a ``norm=`` callable (batch mode only), which
torchdiffeq calls with the state's layout (a tensor, or a tuple of tensors)
both for the error ratio and for the first-step selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .arith import TimeArith
from .state import State, broadcast

# A norm maps a tuple state (error / scale, or y / scale) to a 0-dim tensor.
Norm = Callable[[State], torch.Tensor]


@dataclass(frozen=True)
class ControllerConfig:
    """Constants of the step-size controller (torchdiffeq's defaults)."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    min_step: float = 0.0
    max_step: float = math.inf


def _safe_sqrt(mean_square: torch.Tensor) -> torch.Tensor:
    """sqrt whose gradient at 0 is 0, not NaN.

    Norms that are exactly 0 (a zero initial state, a constant field) sit in
    the graph of the first-step selection even where they do not decide it;
    sqrt's infinite slope at 0 times their zero upstream gradient would make
    every gradient NaN. torchdiffeq avoids it by branching on the host.
    """
    zero = mean_square == 0  # NaN stays NaN: a non-finite state must still be caught
    safe = torch.where(zero, torch.ones_like(mean_square), mean_square)
    return torch.where(zero, torch.zeros_like(mean_square), safe.sqrt())


def state_norm(values: State, per_sample: bool) -> torch.Tensor:
    """Max over tuple components of each component's RMS (0-dim, or (B,) per sample)."""
    norms = []
    for v in values:
        sq = v.abs().pow(2)
        norms.append(_safe_sqrt(sq.reshape(sq.shape[0], -1).mean(1) if per_sample else sq.mean()))
    if len(norms) == 1:
        return norms[0]
    return torch.stack(norms).amax(0)


def _apply(norm: Norm | None, values: State, per_sample: bool) -> torch.Tensor:
    if norm is None:
        return state_norm(values, per_sample)
    return torch.as_tensor(norm(values)).abs()


def _scale(a: torch.Tensor, b: torch.Tensor | None, rt, at) -> torch.Tensor:
    """atol + rtol · max(|a|, |b|) (|a| alone when b is None), torchdiffeq's error scale."""
    mag = a.abs() if b is None else torch.maximum(a.abs(), b.abs())
    return at + mag * rt if b is None else at + rt * mag


def error_ratio(
    error: State,
    y0: State,
    y1: State,
    rtol: Sequence,
    atol: Sequence,
    per_sample: bool,
    norm: Norm | None = None,
) -> torch.Tensor:
    """‖error / (atol + rtol · max(|y0|, |y1|))‖ — accept the step when ≤ 1."""
    scaled = tuple(
        e / _scale(a, b, rt, at) for e, a, b, rt, at in zip(error, y0, y1, rtol, atol, strict=True)
    )
    return _apply(norm, scaled, per_sample)


def initial_step(
    field,
    t0: torch.Tensor,
    y0: State,
    f0: State,
    order: int,
    rtol: Sequence,
    atol: Sequence,
    per_sample: bool,
    norm: Norm | None = None,
    time_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Hairer–Nørsett–Wanner (Solving ODEs I, §II.4) starting step, differentiable.

    ``order`` is the controller order minus one, as torchdiffeq passes it.
    Returns a 0-dim tensor (batch) or (B,) tensor (per sample) in ``time_dtype``
    that still carries the graph to y0 and the field's parameters.
    """
    scale = tuple(_scale(a, None, rt, at) for a, rt, at in zip(y0, rtol, atol, strict=True))
    d0 = _apply(norm, tuple(a / s for a, s in zip(y0, scale, strict=True)), per_sample)
    d1 = _apply(norm, tuple(f / s for f, s in zip(f0, scale, strict=True)), per_sample)

    # torch.where evaluates both branches; keep the unused one finite so that
    # no NaN leaks into the gradient.
    small = (d0 < 1e-5) | (d1 < 1e-5)
    safe_d1 = torch.where(small, torch.ones_like(d1), d1)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / safe_d1).abs()

    y1 = tuple(a + broadcast(h0, f) * f for a, f in zip(y0, f0, strict=True))
    f1 = field(t0 + h0.to(t0.dtype), y1)
    d2 = (
        _apply(norm, tuple((b - a) / s for a, b, s in zip(f0, f1, scale, strict=True)), per_sample)
        / h0
    ).abs()

    tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    biggest = torch.maximum(d1, d2)
    safe_biggest = torch.where(tiny, torch.ones_like(biggest), biggest)
    h1_regular = (0.01 / safe_biggest) ** (1.0 / float(order + 1))
    h1_tiny = torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3)
    h1 = torch.where(tiny, h1_tiny, h1_regular).abs()
    return torch.minimum(100 * h0, h1).to(time_dtype)


def next_step_size(
    dt: float, ratio: float, order: int, cfg: ControllerConfig, arith: TimeArith | None = None
) -> float:
    """The step-size update on host floats (batch mode: one sync reads ``ratio``),
    rounded as tensors of the time dtype compute it."""
    ar = arith or TimeArith(torch.float64)
    if ratio == 0:
        new = ar.mul(dt, ar.round(cfg.ifactor))
    else:
        dfactor = 1.0 if ratio < 1 else ar.round(cfg.dfactor)
        r = ar.round(ratio)
        exponent = ar.div(1.0, float(order))
        factor = min(
            ar.round(cfg.ifactor), max(ar.div(ar.round(cfg.safety), ar.pow(r, exponent)), dfactor)
        )
        new = ar.mul(dt, factor)
    return min(max(new, ar.round(cfg.min_step)), ar.round(cfg.max_step))


def step_factor_tensor(
    ratio: torch.Tensor, order: int, cfg: ControllerConfig, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The same update factor as a tensor: per sample, or differentiable in ``ratio``."""
    ratio = ratio.to(dtype)
    dfactor = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, cfg.dfactor))
    safe = torch.where(ratio == 0, torch.ones_like(ratio), ratio)
    factor = torch.minimum(
        torch.full_like(ratio, cfg.ifactor),
        torch.maximum(cfg.safety / safe ** (1.0 / order), dfactor),
    )
    return torch.where(ratio == 0, torch.full_like(ratio, cfg.ifactor), factor)
