"""The threat model: a norm ball of radius ε around x, intersected with the [0, 1] box.

Every attack projects through :class:`ThreatModel`, so "the output lies in the
ε-ball and in the box" is one function's property, tested once for all
attacks. ε is always in pixel units of [0, 1] images — models normalise
inside themselves (RobustBench convention), so there is no normalised-space
clipping to get wrong (a known peer defect, REFERENCE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")

# Guards divisions by a zero gradient or a zero perturbation.
_TINY = 1e-12


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``t``."""
    n = t.flatten(1).norm(p=2, dim=1)
    return n.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class ThreatModel:
    """A norm (``"linf"`` or ``"l2"``), a radius ``eps`` and the box [lower, upper]."""

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
        d = (x_adv - x).flatten(1)
        return d.abs().amax(1) if self.norm == "linf" else d.norm(p=2, dim=1)

    def project_delta(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project a perturbation onto the ε-ball, then into the box around ``x``.

        Clipping to the box only shrinks each coordinate's magnitude, so the
        result stays in the ball: the composition is a valid projection onto
        the intersection for L∞ and a feasible point for L2.
        """
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            scale = (self.eps / _flat_norm(delta).clamp_min(_TINY)).clamp(max=1.0)
            delta = delta * scale
        return (x + delta).clamp(self.lower, self.upper) - x

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_adv`` moved into the threat model around ``x`` (see :meth:`project_delta`)."""
        out = (x + self.project_delta(x_adv - x, x)).clamp(self.lower, self.upper)
        if self.norm == "l2":
            # x + δ rounds each pixel to float precision; at small ε the rounding alone can
            # push ‖x_adv − x‖ past ε, so shrink the few such points until it does not
            for attempt in range(10):
                norm = _flat_norm(out - x)
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
        the centre (a known peer defect, REFERENCE.md).
        """
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return (2 * u - 1) * self.eps
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _flat_norm(direction).clamp_min(_TINY)
        d = x[0].numel()
        u = torch.rand(
            (x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device
        ).to(x.dtype)
        return direction * self.eps * u.pow(1.0 / d)

    def steepest_ascent(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm: sign(g) (L∞), g/‖g‖₂ (L2); 0 where g = 0."""
        if self.norm == "linf":
            return grad.sign()
        return grad / _flat_norm(grad).clamp_min(_TINY)

    def contains(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample: inside the box and the ball (L∞ slack 1e-6, L2 relative slack 1e-5)."""
        in_box = (x_adv >= self.lower).flatten(1).all(1) & (x_adv <= self.upper).flatten(1).all(1)
        dist = self.distance(x_adv, x)
        bound = self.eps + 1e-6 if self.norm == "linf" else self.eps * (1 + 1e-5)
        return in_box & (dist <= bound)

    def describe(self) -> str:
        symbol = "L∞" if self.norm == "linf" else "L2"
        return f"{symbol} ε={self.eps:.6g}"
