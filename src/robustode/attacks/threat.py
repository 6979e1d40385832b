"""The threat model: a norm ball of radius ε around x, intersected with the [0, 1] box.

Every attack projects through :class:`ThreatModel`, so "the output lies in the
ε-ball and in the box" is one function's property, tested once for all
attacks. ε is always in pixel units of [0, 1] images — models normalise
inside themselves (RobustBench convention), so there is no normalised-space
clipping to get wrong (a known peer defect, docs/references.md).

Norms: L∞, L2 and L1. The L1 ball is the one where the box matters most: an
L1 budget of ε = 12 can move one pixel by far more than it can move, so the
projection is onto the *intersection* of the ball and the box
(:func:`project_l1_box`, the exact Euclidean projection Croce & Hein use in
"Mind the box: l1-APGD", ICML 2021), not the ball's projection clipped to the box,
which wastes budget on coordinates the box then cuts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..options import format_eps

Norm = Literal["linf", "l2", "l1"]
NORMS: tuple[str, ...] = ("linf", "l2", "l1")
SYMBOLS = {"linf": "L∞", "l2": "L2", "l1": "L1"}

# Guards divisions by a zero gradient or a zero perturbation.
_TINY = 1e-12


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``t``."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch: L∞, L2 or L1 over all but the first dimension."""
    flat = t.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(1)


def project_l1_box(
    v: torch.Tensor, low: torch.Tensor, high: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto {δ : ‖δ‖₁ ≤ ε, low ≤ δ ≤ high}.

    ``low ≤ 0 ≤ high`` (the box around the clean image, in δ). By the KKT
    conditions the projection is δ_i = sign(v_i)·min(max(|v_i| − λ, 0), u_i),
    with u_i the room in v_i's direction and λ ≥ 0 the least value at which
    Σ_i min(max(|v_i| − λ, 0), u_i) ≤ ε. That sum is piecewise linear and
    decreasing in λ with kinks at max(|v_i| − u_i, 0) (coordinate i leaves its
    box face) and |v_i| (it reaches 0); λ is found exactly by sorting the
    kinks and following the slope, as in Croce & Hein 2021 (Mind the box,
    Algorithm 2 computes the same point). ``eps`` is a number or one radius per row.
    """
    shape = v.shape
    v, low, high = v.flatten(1), low.flatten(1), high.flatten(1)
    n, d = v.shape
    magnitude = v.abs()
    room = torch.where(v >= 0, high, -low).clamp_min(0)
    eps_row = torch.as_tensor(eps, dtype=torch.float64, device=v.device).expand(n)
    clipped = torch.minimum(magnitude, room)
    total = clipped.double().sum(1)
    over = total > eps_row
    out = clipped
    if over.any():
        rows = torch.nonzero(over).squeeze(1)
        mag, rm = magnitude[rows], room[rows]
        start = (mag - rm).clamp_min(0)  # coordinate starts shrinking at λ = start
        # events: a coordinate's slope −1 begins at ``start`` and ends at |v_i|
        points = torch.cat([start, mag], 1)
        weights = torch.cat([-torch.ones_like(start), torch.ones_like(mag)], 1)
        points, order = points.sort(1)
        slope = weights.gather(1, order).double().cumsum(1)  # slope of the sum after each kink
        gaps = torch.diff(points.double(), dim=1)
        # g(λ) is flat on [0, first kink] (every kink is ≥ 0), so g(kink 0) = g(0) = total;
        # then g(kink j+1) = g(kink j) + slope_j·gap_j
        base = total[rows, None]
        g = torch.cat([base, base + (slope[:, :-1] * gaps).cumsum(1)], 1)
        target = eps_row[rows, None]
        # g is non-increasing and ends at 0 ≤ ε: λ lies after the last kink where g > ε,
        # on a piece of slope s_j < 0
        j = ((g > target).sum(1, keepdim=True) - 1).clamp(0, 2 * d - 1)
        g_j, s_j = g.gather(1, j), slope.gather(1, j)
        lam = points.double().gather(1, j) + (g_j - target) / (-s_j).clamp_min(1)
        # the kinks were sorted in the input's precision; two Newton steps on g(λ) = ε in
        # double precision put the sum of thousands of shrunk coordinates on ε (the piece
        # found is right, so the first step is exact up to rounding)
        mag64, rm64 = mag.double(), rm.double()
        for _ in range(2):
            shrinking = (mag64 > lam) & (mag64 - lam < rm64)
            g_lam = torch.minimum((mag64 - lam).clamp_min(0), rm64).sum(1, keepdim=True)
            lam = lam + (g_lam - target) / shrinking.sum(1, keepdim=True).clamp_min(1)
        out = out.clone()
        out[rows] = torch.minimum((mag64 - lam).clamp_min(0), rm64).to(v.dtype)
    return (torch.sign(v) * out).view(shape)


@dataclass(frozen=True)
class ThreatModel:
    """A norm (``"linf"``, ``"l2"`` or ``"l1"``), a radius ``eps`` and the box [lower, upper]."""

    norm: Norm
    eps: float
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm '{self.norm}'; choose one of: {', '.join(NORMS)}")
        if not (isinstance(self.eps, int | float) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        if self.norm == "linf" and self.eps > self.upper - self.lower:
            raise ValueError(
                f"an L∞ eps of {self.eps} exceeds the box width {self.upper - self.lower}; "
                "give eps in pixel units of [0, 1] images (8/255 ≈ 0.031)"
            )

    # ----------------------------------------------------------- geometry
    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample distance in this norm."""
        return lp_norm(x_adv - x, self.norm)

    def project_delta(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project a perturbation onto the ε-ball intersected with the box around ``x``.

        L∞: clamp to ε, then to the box — the exact projection onto the
        intersection (both are per-coordinate). L2: scale to ε, then clip to
        the box — clipping only shrinks coordinates, so the point stays in the
        ball (a feasible point; AutoAttack projects the same way). L1: the exact
        projection onto the intersection (:func:`project_l1_box`).
        """
        if self.norm == "l1":
            low, high = self.lower - x, self.upper - x
            return project_l1_box(delta, low, high, self.eps)
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            scale = (self.eps / _flat_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
            delta = delta * scale
        return (x + delta).clamp(self.lower, self.upper) - x

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_adv`` moved into the threat model around ``x`` (see :meth:`project_delta`)."""
        out = (x + self.project_delta(x_adv - x, x)).clamp(self.lower, self.upper)
        if self.norm != "linf":
            # x + δ rounds each pixel to float precision; at small ε the rounding alone can
            # push ‖x_adv − x‖ past ε, so shrink the few such points until it does not
            for attempt in range(10):
                norm = _per_sample(lp_norm(out - x, self.norm), out)
                over = norm > self.eps
                if not over.any():
                    break
                margin = 1 - 1e-5 * 4**attempt
                shrink = torch.where(over, self.eps / norm * margin, torch.ones_like(norm))
                out = (x + (out - x) * shrink).clamp(self.lower, self.upper)
        return out

    def random_delta(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A start uniform in the ε-ball (before box clipping).

        L2: a Gaussian direction and radius ε·U^(1/d), which is uniform in the
        d-dimensional ball — not a uniform radius, which piles the mass near
        the centre (a known peer defect, docs/references.md). L1: random signs times
        Exponential(1) magnitudes normalised to sum 1 (uniform on the L1
        sphere: the simplex's Dirichlet(1, …, 1)), radius ε·U^(1/d).
        """
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (2 * u - 1) * self.eps
        d = x[0].numel()
        radius = torch.rand(
            (x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device
        ).to(x.dtype)
        radius = self.eps * radius.pow(1.0 / d)
        if self.norm == "l2":
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return direction / _flat_norm(direction).clamp_min(_TINY) * radius
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        magnitude = -torch.log1p(-u.clamp(max=1 - 1e-7))  # Exponential(1)
        signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device) * 2 - 1
        total = _per_sample(magnitude.flatten(1).sum(1), x).clamp_min(_TINY)
        return signs.to(x.dtype) * magnitude / total * radius

    def steepest_ascent(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm; 0 where g = 0.

        sign(g) (L∞), g/‖g‖₂ (L2); for L1 the unit vector along the largest
        |g_i| (the L1 ball's vertex that maximises ⟨g, δ⟩). A single-pixel step
        makes plain PGD weak in L1: APGD-L1 (sparse steps, Croce & Hein 2021)
        is the L1 attack to use.
        """
        if self.norm == "linf":
            return grad.sign()
        if self.norm == "l2":
            return grad / _flat_norm(grad).clamp_min(_TINY)
        flat = grad.flatten(1)
        top = flat.abs().argmax(1, keepdim=True)
        step = torch.zeros_like(flat).scatter(1, top, flat.gather(1, top).sign())
        return step.view_as(grad)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample: inside the box and the ball (L∞ slack 1e-6; L2 and L1 relative 1e-5)."""
        in_box = (x_adv >= self.lower).flatten(1).all(1) & (x_adv <= self.upper).flatten(1).all(1)
        dist = self.distance(x_adv, x)
        bound = self.eps + 1e-6 if self.norm == "linf" else self.eps * (1 + 1e-5)
        return in_box & (dist <= bound)

    def describe(self) -> str:
        return f"{SYMBOLS[self.norm]} ε={format_eps(self.eps, self.norm, digits=6)}"
