"""Step-size control: error norms, the first step, and the step-size update.

Two modes share the formulas (torchdiffeq 0.2.5's, REFERENCE.md):

* ``batch``: one error norm for the whole state — the RMS over every element
  of each state tensor, the maximum over the tensors of a tuple state — so a
  sample's step sizes depend on its batch-mates;
* ``per_sample``: the same norm taken over each sample's own elements, giving
  one error ratio, one first step and one step size per sample.

Update rule (accept when err ≤ 1; never shrink after an accepted step):
``factor = min(ifactor, max(safety · err^(−1/order), dfactor))``, with
``dfactor`` replaced by 1 when err < 1 and ``factor = ifactor`` when err = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .state import State, broadcast


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


def error_ratio(
    error: State,
    y0: State,
    y1: State,
    rtol: Sequence[float],
    atol: Sequence[float],
    per_sample: bool,
) -> torch.Tensor:
    """‖error / (atol + rtol · max(|y0|, |y1|))‖ — accept the step when ≤ 1."""
    scaled = tuple(
        e / (at + rt * torch.maximum(a.abs(), b.abs()))
        for e, a, b, rt, at in zip(error, y0, y1, rtol, atol, strict=True)
    )
    return state_norm(scaled, per_sample)


def initial_step(
    field,
    t0: torch.Tensor,
    y0: State,
    f0: State,
    order: int,
    rtol: Sequence[float],
    atol: Sequence[float],
    per_sample: bool,
) -> torch.Tensor:
    """Hairer–Nørsett–Wanner (Solving ODEs I, §II.4) starting step, differentiable.

    ``order`` is the controller order minus one, as torchdiffeq passes it.
    Returns a float64 0-dim tensor (batch) or (B,) tensor (per sample) that
    still carries the graph to y0 and the field's parameters.
    """
    scale = tuple(at + a.abs() * rt for a, rt, at in zip(y0, rtol, atol, strict=True))
    d0 = state_norm(tuple(a / s for a, s in zip(y0, scale, strict=True)), per_sample)
    d1 = state_norm(tuple(f / s for f, s in zip(f0, scale, strict=True)), per_sample)

    # torch.where evaluates both branches; keep the unused one finite so that
    # no NaN leaks into the gradient.
    small = (d0 < 1e-5) | (d1 < 1e-5)
    safe_d1 = torch.where(small, torch.ones_like(d1), d1)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / safe_d1).abs()

    y1 = tuple(a + broadcast(h0, f) * f for a, f in zip(y0, f0, strict=True))
    f1 = field(t0 + h0.to(t0.dtype), y1)
    d2 = (
        state_norm(tuple((b - a) / s for a, b, s in zip(f0, f1, scale, strict=True)), per_sample)
        / h0
    ).abs()

    tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    biggest = torch.maximum(d1, d2)
    safe_biggest = torch.where(tiny, torch.ones_like(biggest), biggest)
    h1_regular = (0.01 / safe_biggest) ** (1.0 / float(order + 1))
    h1_tiny = torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3)
    h1 = torch.where(tiny, h1_tiny, h1_regular).abs()
    return torch.minimum(100 * h0, h1).to(torch.float64)


def next_step_size(dt: float, ratio: float, order: int, cfg: ControllerConfig) -> float:
    """The step-size update on host floats (batch mode: one sync reads ``ratio``)."""
    if ratio == 0:
        new = dt * cfg.ifactor
    else:
        dfactor = 1.0 if ratio < 1 else cfg.dfactor
        factor = min(cfg.ifactor, max(cfg.safety / ratio ** (1.0 / order), dfactor))
        new = dt * factor
    return min(max(new, cfg.min_step), cfg.max_step)


def step_factor_tensor(ratio: torch.Tensor, order: int, cfg: ControllerConfig) -> torch.Tensor:
    """The same update factor as a tensor: per sample, or differentiable in ``ratio``."""
    ratio = ratio.to(torch.float64)
    dfactor = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, cfg.dfactor))
    safe = torch.where(ratio == 0, torch.ones_like(ratio), ratio)
    factor = torch.minimum(
        torch.full_like(ratio, cfg.ifactor),
        torch.maximum(cfg.safety / safe ** (1.0 / order), dfactor),
    )
    return torch.where(ratio == 0, torch.full_like(ratio, cfg.ifactor), factor)
