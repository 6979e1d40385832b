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
from typing import Any

import torch

from ..errors import InputError
from ..nn import SkewConvField, channel_copy
from ..ode import odeint

# beyond this a solve of the default tolerance runs for many minutes (t0 = 1e308 ran 885 s
# before its step budget stopped it) and says nothing the table's range does not
MAX_T0 = 10_000.0
STABILITY_FILE = "stability.json"


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
        if not self.t0s or any(not (0 < t <= MAX_T0) for t in self.t0s):
            raise InputError(
                f"t0s must be integration times in (0, {MAX_T0:g}], got {list(self.t0s)}"
            )
        if self.gamma < 0:
            raise InputError(f"gamma must be ≥ 0, got {self.gamma}")
        if not (self.delta > 0 and self.tol > 0):  # NaN fails too
            raise InputError(
                f"delta and tol must be numbers > 0, got delta={self.delta!r}, tol={self.tol!r}"
            )
        if min(self.channels, self.size, self.batch) < 1:
            raise InputError("channels, size and batch must be ≥ 1")


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
            "fingerprint": stability_fingerprint(self.settings),
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


def stability_fingerprint(settings: StabilitySettings) -> dict:
    """What the table depends on: its settings (as JSON gives them back) and the versions."""
    import json

    from ..fingerprint import versions

    return {"settings": json.loads(json.dumps(asdict(settings))), "versions": versions()}


def run_stability(
    settings: StabilitySettings | None = None,
    *,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: Any = None,
) -> StabilityResult:
    """Measure skew vs unconstrained output distance at every t0 (float64, CPU). With
    ``out_dir`` the folder is claimed first (a table of other settings there is refused
    unless ``overwrite``) and the result is written there as ``stability.json``."""
    s = settings or StabilitySettings()
    announce = progress or (lambda line: None)
    if out_dir is None:
        announce(f"integrating skew and unconstrained blocks to t0 = {list(s.t0s)} ...")
        return _measure(s)
    from ..outputs import OutputFolder

    with OutputFolder(out_dir, "stability", overwrite=overwrite) as folder:
        folder.refuse_other_settings(
            STABILITY_FILE, stability_fingerprint(s), what="a stability table"
        )
        announce(f"integrating skew and unconstrained blocks to t0 = {list(s.t0s)} ...")
        result = _measure(s)
        folder.write_json(STABILITY_FILE, result.to_dict())
    return result


def _measure(s: StabilitySettings) -> StabilityResult:
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
