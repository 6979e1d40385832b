"""``robustode demo``: the main job, three small models trained, attacked and audited."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_device_argument


def add(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: train, attack and audit three small models on digits (minutes)",
        description=(
            "SONet §6 end to end on the embedded digits data (no download): train a SOBlock "
            "with Euler, the same with dopri5 at tol 0.1, and a PGD-trained ResNet10; attack "
            "each with PGD-20, PGD-200, CW-L∞, SPSA and the solver-substitution attack (L∞, "
            "ε 0.1) on all 359 test digits; run the gradient-masking audit on them; print one "
            "table with each verdict (10–15 minutes on 2 CPU cores). Writes "
            "OUT/demo.md, demo.json, demo.png and each model's run folder with its eval/ "
            "report and audit/. Re-running reuses finished training and attack batches."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of training and attacks")
    add_device_argument(p)
    p.add_argument(
        "--audit-level",
        choices=("quick", "standard", "thorough"),
        default="quick",
        help="budget of the gradient-masking audit (default: quick)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="retrain and re-attack instead of reusing"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.demo import format_demo, run_demo
    from ..train.distributed import resolve_device

    device = str(resolve_device(args.device))
    result = run_demo(
        args.out,
        seed=args.seed,
        device=device,
        overwrite=args.overwrite,
        audit_level=args.audit_level,
    )
    print(format_demo(result))
    print(f"\nwrote {args.out}/demo.md, demo.json, demo.png ({result.seconds:.0f} s)")
    return 0
