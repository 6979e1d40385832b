"""``robustode stability``: SONet Theorem 3.1 measured on a skew block vs an unconstrained one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..nn import ACTIVATIONS
from ..ode import METHODS
from .common import nonnegative_float, positive_float, positive_int


def add(sub) -> None:
    p = sub.add_parser(
        "stability",
        help="measure SONet Theorem 3.1: skew vs unconstrained ODE block, output distance vs t0",
        description=(
            "Integrate two inputs DELTA apart (L2) through a skew-symmetric ODE block "
            "(dz/dt = σ(Wx − γz), dx/dt = σ(−Wᵀz − γx)) and through an unconstrained one "
            "(independent second kernel, same initial scale) up to each t0, and print the "
            "largest output distance ‖z(t0) − z'(t0)‖ over a batch of random images. "
            "The theorem says the skew block's distance stays bounded as t0 grows."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--t0",
        type=positive_float,
        nargs="+",
        default=[1.0, 5.0, 20.0, 50.0],
        help="integration end times",
    )
    p.add_argument("--gamma", type=nonnegative_float, default=0.1, help="damping γ")
    p.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default="leaky_relu",
        help="activation σ (the theorem needs σ' > 0)",
    )
    p.add_argument("--channels", type=positive_int, default=4, help="channels of x and z")
    p.add_argument("--size", type=positive_int, default=8, help="image height and width")
    p.add_argument("--batch", type=positive_int, default=8, help="random images")
    p.add_argument("--delta", type=positive_float, default=1e-3, help="input distance (L2)")
    p.add_argument("--method", choices=METHODS, default="dopri5", help="ODE solver")
    p.add_argument("--tol", type=positive_float, default=1e-6, help="rtol = atol")
    p.add_argument("--seed", type=int, default=0, help="seed of images and kernels")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/stability"),
        help="output folder: the table is written there as stability.json",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a stability.json in the output folder that came from other settings",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.stability import STABILITY_FILE, StabilitySettings, run_stability

    settings = StabilitySettings(
        t0s=tuple(sorted(set(args.t0))),
        gamma=args.gamma,
        channels=args.channels,
        size=args.size,
        batch=args.batch,
        delta=args.delta,
        activation=args.activation,
        method=args.method,
        tol=args.tol,
        seed=args.seed,
    )
    result = run_stability(
        settings,
        out_dir=args.out,
        overwrite=args.overwrite,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.to_markdown())
    print(f"\nwrote {args.out / STABILITY_FILE} ({result.seconds:.1f} s)")
    return 0
