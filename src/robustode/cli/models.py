"""``robustode models``: the model registry, or one model described."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import write_json_atomic
from .common import option


def add(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered models, or describe one built with given options",
        description=(
            "Without NAME: a table of every model (paper, parameter count at the default "
            "options, ODE blocks, perturbation points). With NAME: build it with the given "
            "KEY=VALUE options (as create_model takes them) and list its options, ODE blocks "
            "with their solvers, and perturbation points."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="a model name (see the table without NAME)")
    p.add_argument(
        "options",
        nargs="*",
        type=option,
        metavar="KEY=VALUE",
        help="model options, e.g. width=32 method=rk4 step_size=0.25",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models.summary import summarize_all, summarize_model

    if args.name is None:
        rows = summarize_all()
        print("| model | parameters | ODE blocks | perturbation points | paper |")
        print("|---|---:|---:|---:|---|")
        for r in rows:
            print(
                f"| {r.name} | {r.parameters:,} | {len(r.ode_blocks)} | "
                f"{len(r.perturbation_points)} | {r.paper} |"
            )
        result = [r.to_dict() for r in rows]
    else:
        r = summarize_model(args.name, **dict(args.options))
        print(f"{r.name}: {r.summary}\npaper: {r.paper}\nparameters: {r.parameters:,}\n")
        print("options: " + ", ".join(f"{k}={v!r}" for k, v in r.options.items()))
        if r.ode_options:
            print("ODE options (reach every ODE block): " + ", ".join(r.ode_options))
        for block in r.ode_blocks:
            print(f"ODE block {block['block']}: {block['type']}, {block['solver']}")
        print("perturbation points: " + ", ".join(r.perturbation_points))
        result = r.to_dict()
    if args.json is not None:
        write_json_atomic(result, args.json)
        print(f"\nwrote {args.json}")
    return 0
