"""Measure how closely the native engine agrees with torchdiffeq 0.2.5.

The tests assert limits (grid times 1e-6, outputs 1e-5, gradients 1e-4
relative); this prints the maxima actually reached over the tested grid —
3 adaptive methods × tol {1e-1, 1e-2, 1e-3} × {MLP field, conv tuple field} —
for float64 and float32, as a Markdown table.

    python -m benchmarks.ode_agreement
"""

from __future__ import annotations

import torch
from tests.fields import run_against_torchdiffeq

METHODS = ("dopri5", "bosh3", "adaptive_heun")
TOLS = (1e-1, 1e-2, 1e-3)
KINDS = ("mlp", "conv")
TIMES = (0.0, 0.5, 1.0)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def measure(dtype: torch.dtype) -> dict[str, float | bool]:
    worst = {"grid_dt": 0.0, "outputs": 0.0, "gradients": 0.0}
    same_counts = True
    t = torch.tensor(TIMES, dtype=dtype)
    for kind in KINDS:
        for method in METHODS:
            for tol in TOLS:
                log, rec, ref, out, g_ref, g_out = run_against_torchdiffeq(
                    kind, method, tol, dtype, t
                )
                ours = rec.accepted_steps()
                same_counts &= len(ours) == len(log.accepted) and rec.nfe_forward == log.nfe
                for (ta, _), (tb, _) in zip(ours, log.accepted, strict=False):
                    worst["grid_dt"] = max(worst["grid_dt"], abs(ta - tb))
                for a, b in zip(out, ref, strict=True):
                    worst["outputs"] = max(worst["outputs"], _relative(a, b))
                for a, b in zip(g_out, g_ref, strict=True):
                    worst["gradients"] = max(worst["gradients"], _relative(a, b))
    return {**worst, "same_steps_and_nfe": same_counts}


def main() -> None:
    print("| dtype | same steps and NFE | max Δt of accepted steps | outputs | gradients |")
    print("|---|---|---:|---:|---:|")
    for dtype in (torch.float64, torch.float32):
        m = measure(dtype)
        print(
            f"| {str(dtype).removeprefix('torch.')} | {'yes' if m['same_steps_and_nfe'] else 'NO'} "
            f"| {m['grid_dt']:.1e} | {m['outputs']:.1e} | {m['gradients']:.1e} |"
        )


if __name__ == "__main__":
    main()
