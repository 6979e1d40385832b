"""``robustode bench``: the benchmarks/ suite of a source checkout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .common import positive_int

BENCH_SECTIONS = ("ode", "memory", "attacks", "training", "fields", "data", "gpu")
_BENCH_PEERS = {"ode": "torchdiffeq", "memory": "torchdiffeq", "attacks": "torchattacks"}


def bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``robustode bench`` (also ``python -m benchmarks.suite``)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 3 repeats: a sanity run of every section (under 3 minutes on "
        "2 cores); the figures in benchmarks/RESULTS.md come from the full run",
    )
    p.add_argument(
        "--only",
        default=",".join(BENCH_SECTIONS),
        metavar="NAMES",
        help="comma-separated sections to run, in this order (default: all: "
        f"{','.join(BENCH_SECTIONS)})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench"),
        help="folder for bench.md and bench.json, rewritten after each section "
        "(default: runs/bench)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="cifar-10-batches-py folder for the attacks section (default: "
        "$ROBUSTODE_CIFAR10_DIR, else the development machines' copy beside the checkout, "
        "which benchmarks/bench_attacks.py names)",
    )
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")


def add(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark robustode against its peers (torchdiffeq, torchattacks, DataLoader)",
        description=(
            "Run the benchmarks/ suite from a source checkout: ODE solves vs torchdiffeq, "
            "adjoint memory, attacks vs torchattacks on CIFAR-10 test images, training step "
            "per defense, the fast vector fields vs their reference implementation, the data "
            "pipeline, and (with CUDA) training throughput with bf16, "
            "channels_last and torch.compile. Every time is a ratio against the peer, "
            "measured interleaved in the same run. Prints Markdown tables and writes "
            "bench.md and bench.json. Needs the test extras (bash scripts/setup.sh test)."
        ),
    )
    bench_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib.util

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_SECTIONS]
    if unknown or not names:
        raise InputError(
            f"--only: unknown section {', '.join(map(repr, unknown)) or repr(args.only)}; "
            f"choose from {', '.join(BENCH_SECTIONS)} (comma-separated)"
        )
    missing = sorted(
        {_BENCH_PEERS[n] for n in names if n in _BENCH_PEERS}
        - {m for m in _BENCH_PEERS.values() if importlib.util.find_spec(m)}
    )
    if missing:
        raise InputError(
            f"the benchmarks compare against {', '.join(missing)}, which is not installed; "
            "install the test extras with: bash scripts/setup.sh test"
        )
    suite = _benchmark_suite(Path(__file__).resolve().parents[3])
    return suite.run_from_args(names, args, "robustode bench")


def _benchmark_suite(root: Path):
    """The checkout's ``benchmarks.suite``, imported from its files: the package is
    registered under its own name without putting the checkout on ``sys.path``."""
    import importlib
    import importlib.util

    folder = root / "benchmarks"
    if not (folder / "suite.py").is_file():
        raise InputError(
            "robustode bench runs the benchmarks/ folder of a source checkout, and this "
            f"installation has none (looked in {root}); clone the repository and install it "
            "with pip install -e ."
        )
    package = sys.modules.get("benchmarks")
    if package is None or Path(getattr(package, "__file__", "") or "").parent != folder:
        spec = importlib.util.spec_from_file_location(
            "benchmarks", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = package
        spec.loader.exec_module(package)
    return importlib.import_module("benchmarks.suite")
