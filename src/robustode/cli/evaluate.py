"""``robustode evaluate``: an attack suite on the first N test images."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .common import (
    add_target_arguments,
    comma_list,
    eps_grid,
    number,
    positive_int,
    target_from_args,
    test_images,
)


def add(sub) -> None:
    from ..evaluate.curves import EPS_GRID_255
    from ..evaluate.suites import SUITES

    p = sub.add_parser(
        "evaluate",
        help="run an attack suite on the first N test images; report.json/.md and plots",
        description=(
            "Attack a trained model with a suite of attacks on the first N test images "
            "(in order), print the robust accuracy per attack and the per-point worst case per "
            "threat model, and write report.json, report.md, robust_vs_steps.png, "
            "robust_vs_eps.png and per_attack.png into --out. Every (attack, batch) result is "
            "saved as it finishes: rerunning the same command continues an interrupted "
            "evaluation. Under 'torchrun --nproc_per_node=N -m robustode evaluate …' the "
            "batches are shared out over the processes."
        ),
        epilog=(
            "suites — paper: pgd20-linf, pgd1000-linf, pgd20-l2, pgd1000-l2, cw-linf, spsa "
            "(SONet); autoattack: AutoAttack standard without FAB-T; full: paper + apgd-ce, "
            "apgd-t, square, autoattack and, for ODE models, adaptive PGD. "
            "Attack specs: NAME or NAME:key=value,... (see 'robustode attacks'), e.g. "
            "--attacks 'pgd20-linf:eps=0.01,fgsm'."
        ),
    )

    add_target_arguments(p)
    p.add_argument(
        "--suite",
        choices=list(SUITES),
        help="a named suite of attacks (default: paper, unless --attacks is given)",
    )
    p.add_argument(
        "--attacks",
        type=comma_list,
        metavar="SPEC,SPEC",
        help="attack specs, comma-separated (added to --suite when both are given)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=100, help="images per batch (default: 100)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the randomised attacks (default: 0)"
    )
    p.add_argument(
        "--curves",
        action="store_true",
        help="also run the curves' extra attacks: PGD-100 L∞ for robust-vs-steps when the "
        "suite has no L∞ PGD without random start to read it from, and one PGD-20 run per ε "
        "of the robust-vs-ε grid (the runs are named before they start)",
    )
    p.add_argument(
        "--curve-steps",
        type=number(int, 0, True, "an integer ≥ 0"),
        default=None,
        metavar="K",
        help="the robust-vs-steps curve's PGD-K L∞ run (giving it asks for that curve; 0: none)",
    )
    p.add_argument(
        "--eps-grid",
        type=eps_grid,
        default=None,
        metavar="E,E",
        help="ε values in 1/255 units for the robust-vs-ε curve (giving it asks for that "
        f"curve; '' none; with --curves: {','.join(f'{e:g}' for e in EPS_GRID_255)} and "
        "0.031)",
    )
    p.add_argument(
        "--save-adversarials",
        action="store_true",
        help="keep every attack's returned images as points/ATTACK/batch-K.adv.safetensors "
        "(float32, [0, 1]; a batch computed earlier without them is recomputed)",
    )
    p.add_argument(
        "--progress-bar",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a tqdm bar (default: only on a terminal; otherwise one line per attack)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.curves import curve_options
    from ..evaluate.runner import run_evaluation
    from ..evaluate.suites import resolve_attacks
    from ..train.distributed import setup

    if args.n is not None and args.n < 1:
        raise InputError(f"--n must be ≥ 1, got {args.n}")
    suite = args.suite or (None if args.attacks else "paper")
    ctx = setup(args.device)
    out = None
    try:
        target = target_from_args(args, device=ctx.device)
        specs = resolve_attacks(suite, args.attacks, target.model)
        x, y = test_images(target, args, show=ctx.is_main)
        out = args.out or target.default_out_dir("eval")
        result = run_evaluation(
            target.model,
            x,
            y,
            specs,
            out,
            batch_size=args.batch_size,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=args.progress_bar,
            ctx=ctx,
            meta=target.report_meta(),
            **curve_options(args.curves, args.curve_steps, args.eps_grid),
            save_adversarials=args.save_adversarials,
        )
    except KeyboardInterrupt:
        if out is not None and ctx.is_main:
            print(
                f"robustode: the finished batches are kept in {out}; run the same command "
                "again to continue",
                file=sys.stderr,
            )
        raise
    finally:
        ctx.teardown()
    if ctx.is_main:
        print(result.table())
        for note in result.report["notes"]:
            print(f"note: {note}")
        print(f"\nwrote {out}/report.json, report.md and plots")
        if args.save_adversarials:
            print(f"adversarial images: {out}/points/ATTACK/batch-K.adv.safetensors (x_adv)")
    return 0
