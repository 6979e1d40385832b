"""Measure how closely the native engine agrees with torchdiffeq 0.2.5.

The tests assert equality (forward) and bounds (gradients); this prints what
is actually reached, as Markdown tables:

1. torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9), where a float32
   error estimate is rounding noise: every method the engine knows × {MLP
   field, conv field on a tuple state} × {float32, float64} — bit-equal or
   not, NFE of each, largest relative output difference;
2. the adaptive methods at tol {1e-1, 1e-2, 1e-3}: largest differences of the
   accepted step times, outputs and input/parameter gradients.

    python -m benchmarks.ode_agreement
"""

from __future__ import annotations

import warnings

import torch
from tests.fields import run_against_torchdiffeq

from robustode.ode import METHODS

ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun")
TOLS = (1e-1, 1e-2, 1e-3)
KINDS = ("mlp", "conv")
TIMES = (0.0, 0.5, 1.0)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def default_tolerances(dtype: torch.dtype) -> list[dict]:
    """Every known method at torchdiffeq's defaults over [0, 0.3] (fixed: step 0.05)."""
    rows = []
    t = torch.tensor([0.0, 0.15, 0.3], dtype=dtype)
    for method in METHODS:
        for kind in KINDS:
            options = None if method in ADAPTIVE else {"step_size": 0.05}
            log, rec, ref, out, _, _ = run_against_torchdiffeq(
                kind, method, None, dtype, t, options=options, grads=False
            )
            rows.append(
                {
                    "method": method,
                    "field": kind,
                    "bit_equal": all(torch.equal(a, b) for a, b in zip(out, ref, strict=True)),
                    "nfe_ours": rec.nfe_forward,
                    "nfe_torchdiffeq": log.nfe,
                    "outputs": max(_relative(a, b) for a, b in zip(out, ref, strict=True)),
                }
            )
    return rows


def tolerance_sweep(dtype: torch.dtype) -> dict[str, float | bool]:
    worst = {"grid_dt": 0.0, "outputs": 0.0, "gradients": 0.0}
    same_counts = True
    t = torch.tensor(TIMES, dtype=dtype)
    for kind in KINDS:
        for method in (m for m in ADAPTIVE if m in METHODS):
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
    torch.set_num_threads(1)
    # the step log defines callback_accept_step, which fixed-grid methods warn about
    warnings.filterwarnings("ignore", "Solver .* does not support callbacks")
    print("torchdiffeq's default tolerances (rtol 1e-7, atol 1e-9):\n")
    print("| dtype | method | field | bit-equal | NFE ours | NFE torchdiffeq | outputs |")
    print("|---|---|---|---|---:|---:|---:|")
    for dtype in (torch.float32, torch.float64):
        for r in default_tolerances(dtype):
            print(
                f"| {str(dtype).removeprefix('torch.')} | {r['method']} | {r['field']} "
                f"| {'yes' if r['bit_equal'] else 'NO'} | {r['nfe_ours']} "
                f"| {r['nfe_torchdiffeq']} | {r['outputs']:.1e} |"
            )
    print("\nadaptive methods at tol 1e-1, 1e-2, 1e-3:\n")
    print("| dtype | same steps and NFE | max Δt of accepted steps | outputs | gradients |")
    print("|---|---|---:|---:|---:|")
    for dtype in (torch.float64, torch.float32):
        m = tolerance_sweep(dtype)
        print(
            f"| {str(dtype).removeprefix('torch.')} | {'yes' if m['same_steps_and_nfe'] else 'NO'} "
            f"| {m['grid_dt']:.1e} | {m['outputs']:.1e} | {m['gradients']:.1e} |"
        )


if __name__ == "__main__":
    main()
