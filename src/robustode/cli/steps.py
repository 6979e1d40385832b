"""``robustode steps``: SONet Table 3, the step grids along a PGD trajectory."""

from __future__ import annotations

import argparse
import sys

from .common import add_target_arguments, number_list, positive_float, target_from_args, test_images


def add(sub) -> None:

    p = sub.add_parser(
        "steps",
        help="SONet Table 3: the adaptive step grids of the ODE blocks along a PGD trajectory",
        description=(
            "Run PGD (the attack's ε, step and loss; no early stop, no best-iterate selection) "
            "on the first N test images and print, for every ODE block, the accepted time grid "
            "(step starts, then t1) on the clean batch and after each of ITERATIONS steps, with "
            "NFE, rejected steps and how far the grid moved. With --per-image every image is "
            "also evaluated alone, giving the spread of step sizes across images and "
            "perturbations. --tol reruns the study with the blocks' tolerance changed, as Table "
            "3 does. Writes steps.json and steps.png to the output folder."
        ),
    )
    add_target_arguments(p, n_default=16)
    p.add_argument(
        "--iterations",
        type=number_list(int, "positive integer"),
        default=[1, 100, 1000],
        metavar="K,K,…",
        help="PGD iterations at which to read the grids (default: 1,100,1000)",
    )
    p.add_argument(
        "--attack",
        default="pgd1000-linf",
        help="gradient-attack preset the trajectory follows (default: pgd1000-linf, SONet's "
        "ε 0.031, step 0.003, no random start); its step count is not used",
    )
    p.add_argument("--eps", type=positive_float, help="override the attack's ε")
    p.add_argument("--step-size", type=positive_float, help="override the attack's step size")
    p.add_argument(
        "--tol",
        type=number_list(float, "positive number"),
        metavar="TOL,TOL,…",
        help="rerun the study with rtol = atol = TOL on every adaptive block, once per value, "
        "e.g. 0.1,0.01,0.001 (default: the model's own tolerance)",
    )
    p.add_argument(
        "--per-image",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate every image alone for the spread across images (default: on)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.steps import (
        TrajectorySettings,
        find_ode_blocks,
        format_table,
        run_step_studies,
    )

    # a bad attack name or override: one error line before anything is loaded or announced
    TrajectorySettings.from_attack(args.attack, eps=args.eps, step_size=args.step_size)
    target = target_from_args(args)
    x, y = test_images(target, args)
    # a model without ODE blocks: one error line, nothing run; odeint calls inside a model
    # count too, found by running one image under interception
    from ..nn.solve_sites import discover_sites, intercepting

    with intercepting(target.model):
        discover_sites(target.model, x[:1])
        find_ode_blocks(target.model)
    out = args.out if args.out is not None else target.default_out_dir("steps")
    studies = run_step_studies(
        target.model,
        x,
        y,
        out,
        iterations=args.iterations,
        attack=args.attack,
        eps=args.eps,
        step_size=args.step_size,
        per_image=args.per_image,
        tols=args.tol,
        overwrite=args.overwrite,
        meta=target.report_meta(),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(studies))
    seconds = sum(s.seconds for s in studies)
    print(f"\nwrote {out}/steps.json, steps.md and steps.png ({seconds:.1f} s)")
    return 0
