"""``robustode stability``: SONet Theorem 3.1 measured on a skew block vs an unconstrained one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..nn import ACTIVATIONS
from ..ode import METHODS
from .common import (
    add_target_arguments,
    nonnegative_float,
    positive_float,
    positive_int,
    target_from_args,
    test_images,
)


def add(sub) -> None:
    p = sub.add_parser(
        "stability",
        help="SONet Theorem 3.1 measured: random skew vs unconstrained blocks, or the ODE "
        "blocks of a trained model",
        description=(
            "Without a model: integrate two inputs DELTA apart (L2) through a skew-symmetric "
            "ODE block (dz/dt = σ(Wx − γz), dx/dt = σ(−Wᵀz − γx)) and through an unconstrained "
            "one (independent second kernel, same initial scale) up to each t0, and print the "
            "largest output distance ‖z(t0) − z'(t0)‖ over a batch of random images; the "
            "theorem says the skew block's distance stays bounded as t0 grows. With a run "
            "folder, checkpoint or --model: for every ODE block at the first N test images, "
            "whether the theorem's conditions hold (skew weights, γ > 0, σ' > 0, no "
            "normalisation), the largest real part of the field Jacobian's eigenvalues at t = 0 "
            "and t = t1 (from Jacobian-vector products: exact up to 4096 state dimensions, "
            "ARPACK beyond, '–' where it does not converge) and the block's amplification of a "
            "small perturbation; written as spectrum.json."
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
    add_target_arguments(p, n_default=8)
    for action in p._actions:
        if action.dest == "out":
            action.help = (
                "output folder: stability.json (random blocks) or spectrum.json (a model) "
                "(default: runs/stability, or RUN_DIR/stability)"
            )
        if action.dest == "n":
            action.help = "with a model: the first N test images, in order (default: 8)"
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.path is not None or args.model is not None:
        return _run_model(args)
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
    out = args.out if args.out is not None else Path("runs/stability")
    result = run_stability(
        settings,
        out_dir=out,
        overwrite=args.overwrite,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(result.to_markdown())
    print(f"\nwrote {out / STABILITY_FILE} ({result.seconds:.1f} s)")
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from ..evaluate.spectrum import SPECTRUM_FILE, format_spectrum, model_stability

    target = target_from_args(args)
    x, _ = test_images(target, args)
    out = args.out if args.out is not None else target.default_out_dir("stability")
    report = model_stability(
        target.model,
        x,
        out_dir=out,
        overwrite=args.overwrite,
        meta=target.report_meta(),
        delta=args.delta,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_spectrum(report))
    print(f"\nwrote {out / SPECTRUM_FILE} ({report['seconds']:.1f} s)")
    return 0
