"""The stability-radius experiment of SONet Theorem 3.1, measured.

Two inputs ``delta`` apart (L2, per image) go through an ODE block in the
theorem's form — dz/dt = σ(W x − γz), dx/dt = σ(W⁽²⁾ z − γx), no
normalisation, LeakyReLU, z(0) = channel-copy of x — integrated to t0 for
several t0. With W⁽²⁾ = −Wᵀ (skew) the theorem promises a radius independent
of t0; with an independent W⁽²⁾ of the same initial scale (unconstrained)
nothing does. We report the largest output distance ‖z(t0) − z′(t0)‖ over a
batch of random images, for both, from one solve per block and input.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io import write_json_atomic
from ..nn import SkewConvField, channel_copy
from ..ode import odeint


@dataclass(frozen=True)
class StabilitySettings:
    """What the experiment integrates (defaults: the table `robustode stability` prints)."""

    t0s: tuple[float, ...] = (1.0, 5.0, 20.0, 50.0)
    gamma: float = 0.1
    channels: int = 4
    size: int = 8
    batch: int = 8
    delta: float = 1e-3
    activation: str = "leaky_relu"
    method: str = "dopri5"
    tol: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.t0s or any(t <= 0 for t in self.t0s):
            raise ValueError("t0s must be positive integration times")
        if self.gamma < 0:
            raise ValueError(f"gamma must be ≥ 0, got {self.gamma}")
        if not (self.delta > 0 and self.tol > 0):  # NaN fails too
            raise ValueError(
                f"delta and tol must be numbers > 0, got delta={self.delta!r}, tol={self.tol!r}"
            )
        if min(self.channels, self.size, self.batch) < 1:
            raise ValueError("channels, size and batch must be ≥ 1")


@dataclass
class StabilityResult:
    settings: StabilitySettings
    skew: list[float]  # max output distance at each t0
    unconstrained: list[float]
    seconds: float
    solver: str = field(default="")

    def rows(self) -> list[dict]:
        return [
            {
                "t0": t0,
                "skew_distance": s,
                "unconstrained_distance": u,
                "skew_amplification": s / self.settings.delta,
                "unconstrained_amplification": u / self.settings.delta,
            }
            for t0, s, u in zip(self.settings.t0s, self.skew, self.unconstrained, strict=True)
        ]

    def to_dict(self) -> dict:
        return {
            "experiment": "sonet-theorem-3.1-stability-radius",
            "settings": asdict(self.settings),
            "solver": self.solver,
            "rows": self.rows(),
            "seconds": self.seconds,
        }

    def to_markdown(self) -> str:
        s = self.settings
        lines = [
            f"Stability radius (SONet Thm 3.1): inputs {s.delta:g} apart (L2), γ = {s.gamma:g}, "
            f"σ = {s.activation}, {s.channels} channels {s.size}×{s.size}, batch {s.batch}, "
            f"seed {s.seed}",
            f"solver: {self.solver}",
            "",
            "| t0 | skew ‖Δz(t0)‖ | unconstrained ‖Δz(t0)‖ | skew / δ | unconstrained / δ |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r['t0']:g} | {r['skew_distance']:.3e} | {r['unconstrained_distance']:.3e} "
                f"| {r['skew_amplification']:.2f} | {r['unconstrained_amplification']:.3g} |"
            )
        return "\n".join(lines)


def _max_output_distance(field: SkewConvField, x, x2, t, s: StabilitySettings) -> list[float]:
    c = s.channels
    kw = dict(rtol=s.tol, atol=s.tol, method=s.method, options={"max_num_steps": 200_000})
    with torch.no_grad():
        _, z1 = odeint(field, (x, channel_copy(x, c)), t, **kw)
        _, z2 = odeint(field, (x2, channel_copy(x2, c)), t, **kw)
    dist = (z1[1:] - z2[1:]).flatten(2).norm(dim=2)  # (len(t0s), batch)
    return dist.max(dim=1).values.tolist()


def run_stability(settings: StabilitySettings | None = None) -> StabilityResult:
    """Measure skew vs unconstrained output distance at every t0 (float64, CPU)."""
    s = settings or StabilitySettings()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(s.seed)
    dtype = torch.float64
    x = torch.rand(s.batch, s.channels, s.size, s.size, generator=gen, dtype=dtype)
    direction = torch.randn(x.shape, generator=gen, dtype=dtype)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x2 = x + s.delta * direction
    t = torch.tensor([0.0, *s.t0s], dtype=dtype)

    results = {}
    for skew in (True, False):
        torch.manual_seed(s.seed)  # same initial kernel W for both blocks
        block = SkewConvField(
            s.channels,
            s.channels,
            1,
            gamma=s.gamma,
            norm=None,
            activation=s.activation,
            skew=skew,
        ).to(dtype)
        results[skew] = _max_output_distance(block, x, x2, t, s)
    return StabilityResult(
        settings=s,
        skew=results[True],
        unconstrained=results[False],
        seconds=time.perf_counter() - start,
        solver=f"{s.method} rtol=atol={s.tol:g}, float64",
    )


def write_json(result: StabilityResult, path: Path) -> None:
    """Write atomically: a crash never leaves a half-written result."""
    write_json_atomic(result.to_dict(), path)
