"""``robustode reproduce``: a table of either paper, ours beside theirs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .common import add_device_argument, positive_int


def _seed_list(text: str) -> list[int]:
    """A comma list of distinct integers ≥ 0."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(
            f"expected distinct integers ≥ 0 separated by commas, e.g. 0,1,2; got '{text}'"
        )
    return values


def add(sub) -> None:
    from ..experiments.reproduce import SCALES, list_tables

    p = sub.add_parser(
        "reproduce",
        help="train and evaluate a table of either paper; print ours next to the paper's",
        description=(
            "Reproduce one table of SONet (sonet-t1 … sonet-t4) or LAD (lad-t1 … lad-t7), or "
            "LAD's Fig. 2 (lad-f2: eq. 16's ratio per epoch, tabulated and plotted). "
            "--scale full uses the papers' settings (a GPU and the full CIFAR data); "
            "--scale smoke runs the same pipeline on the digits data in minutes on a CPU "
            "(its numbers check the pipeline, not the papers); --scale cpu (sonet-t2 only) "
            "trains SOBlock at width 16 on the CIFAR-10 files of --data-dir until the test "
            "accuracy plateaus, under both step semantics, and adds AutoAttack, the "
            "solver-substitution attack and the audit's verdict (about 35 h of 2 CPU cores "
            "for 3 seeds, docs/experiments.md). Every run "
            "is a run folder under OUT/TABLE/, so an interrupted reproduce continues where "
            "it stopped; --jobs N runs N of them at a time."
        ),
    )
    p.add_argument("table", nargs="?", choices=list_tables(), metavar="TABLE", help="table name")
    p.add_argument("--list", action="store_true", help="list the tables and exit")
    p.add_argument("--scale", choices=SCALES, default="smoke", help="default: smoke")
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="output folder")
    p.add_argument(
        "--data-dir",
        help="dataset folder (CIFAR-10/100) at full scale; required at cpu scale",
    )
    add_device_argument(p)
    p.add_argument("--batch-size", type=positive_int, default=100, help="attack batch size")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=[0],
        metavar="S,S,…",
        help="training seeds of every row, e.g. 0,1,2: each seed's run is kept (ROW-seedS/) "
        "and every cell is reported as mean ± std over them, as LAD reports (default: 0)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N (row, seed) runs at a time, each in its own process with cores // N torch "
        "threads (default: 1, in this process)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="retrain and re-evaluate rows that OUT/TABLE holds from other settings",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import describe_tables, format_table, reproduce
    from ..train.distributed import resolve_device

    if args.list:
        print(describe_tables())
        return 0
    if args.table is None:
        raise InputError("name a table (robustode reproduce --list shows them)")
    result = reproduce(
        args.table,
        scale=args.scale,
        out_dir=args.out,
        data_dir=args.data_dir,
        device=str(resolve_device(args.device)),
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        seeds=args.seeds,
        jobs=args.jobs,
    )
    print(format_table(result))
    print(f"\nwrote {result.out_dir}/reproduce.md and reproduce.json ({result.seconds:.0f} s)")
    return 0
