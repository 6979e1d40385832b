"""``robustode audit``: the gradient-masking audit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import add_target_arguments, eps_value, positive_int, target_from_args, test_images


def add(sub) -> None:
    from ..evaluate.audit import FAIL_ON, LEVELS

    budgets = "; ".join(
        f"{name}: n {lv.n}, PGD-{lv.pgd_steps}, {lv.restarts} restarts, Square {lv.square_queries}"
        for name, lv in LEVELS.items()
    )
    p = sub.add_parser(
        "audit",
        help="check a model for gradient masking: masked / suspicious / no masking detected",
        description=(
            "Run the gradient-masking checks of Carlini et al. 2019 and Pintor et al. 2022 plus "
            "ODE-specific ones (solver substitution, finite differences, batch composition) on "
            "the first N test images, print one row per check (status, evidence, what a failure "
            "implies) and the verdict: 'masked' if a check of severity masked failed, "
            "'suspicious' if one of severity suspicious failed, else 'no masking detected'. "
            "Writes audit.json and audit.md. See docs/audit.md."
        ),
        epilog=f"levels — {budgets}",
    )
    add_target_arguments(p, n_default=None)
    for action in p._actions:
        if action.dest == "n":
            action.help = (
                "the first N test images, in order (default: by level, "
                + ", ".join(f"{name} {lv.n}" for name, lv in LEVELS.items())
                + ")"
            )
    p.add_argument(
        "--eps",
        type=eps_value,
        default=8 / 255,
        metavar="EPS",
        help="L∞ radius in pixel units, e.g. 0.031 or 8/255 (default: 8/255)",
    )
    p.add_argument(
        "--level",
        choices=list(LEVELS),
        default="standard",
        help="budgets and default N (default: standard)",
    )
    p.add_argument(
        "--surrogate",
        metavar="PATH|MODULE:FUNCTION",
        help="a model whose PGD adversarials are transferred to the audited one: a run folder "
        "or checkpoint, or your own factory (with --surrogate-weights) (default: for ODE "
        "models the model itself with a fixed-step solver, else no transfer)",
    )
    p.add_argument(
        "--surrogate-weights",
        type=Path,
        metavar="FILE",
        help="weights for a --surrogate factory (safetensors or a weights_only state dict)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per model call (default: all)",
    )
    p.add_argument(
        "--fail-on",
        choices=FAIL_ON,
        default="never",
        help="exit 1 when the verdict is at least this (masked > suspicious); default never",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.audit import LEVELS, audit, fails_on
    from ..evaluate.target import load_target

    target = target_from_args(args)
    args.n_default = LEVELS[args.level].n
    surrogate = None
    if args.surrogate_weights is not None and args.surrogate is None:
        raise InputError("--surrogate-weights load into a --surrogate MODULE:FUNCTION; add it")
    if args.surrogate is not None:
        from ..models.external import is_factory_spec

        device = next(target.model.parameters()).device
        factory = is_factory_spec(args.surrogate) and not Path(args.surrogate).exists()
        if factory:
            surrogate = load_target(
                None, model=args.surrogate, weights=args.surrogate_weights, device=device
            ).model
        else:
            if args.surrogate_weights is not None:
                raise InputError(
                    "--surrogate-weights load into a --surrogate MODULE:FUNCTION, not into a "
                    "run folder or checkpoint"
                )
            surrogate = load_target(Path(args.surrogate), device=device).model
    x, y = test_images(target, args)
    out = args.out or target.default_out_dir("audit")
    meta = target.report_meta()
    meta["surrogate"] = None if args.surrogate is None else str(args.surrogate)
    report = audit(
        target.model,
        x,
        y,
        eps=args.eps,
        level=args.level,
        surrogate=surrogate,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        out_dir=out,
        overwrite=args.overwrite,
        meta=meta,
    )
    print(report.table())
    print(f"\n{report.verdict_line()}")
    print(f"wrote {out}/audit.json and audit.md ({report.seconds:.1f} s)")
    return 1 if fails_on(report.verdict, args.fail_on) else 0
