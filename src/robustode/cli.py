"""The ``robustode`` command line.

Every command prints its result as a table and writes it as JSON; bad input
gets one line naming what is wrong and what is accepted (exit code 2), never
a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .io import write_json_atomic
from .nn import ACTIVATIONS
from .ode import METHODS, SolverError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"robustode: error: {message}\n")


def _number(cast, minimum: float, inclusive: bool, what: str):
    """An argparse type: ``cast`` the text and require it finite and ≥ / > ``minimum``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        ok = (
            value is not None
            and value != float("inf")
            and (value >= minimum if inclusive else value > minimum)
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'")
        return value

    return parse


_positive_float = _number(float, 0.0, False, "a positive number")
_nonnegative_float = _number(float, 0.0, True, "a number ≥ 0")
_positive_int = _number(int, 1, True, "a positive integer")


# --------------------------------------------------------------------- stability
def _add_stability(sub) -> None:
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
        type=_positive_float,
        nargs="+",
        default=[1.0, 5.0, 20.0, 50.0],
        help="integration end times",
    )
    p.add_argument("--gamma", type=_nonnegative_float, default=0.1, help="damping γ")
    p.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default="leaky_relu",
        help="activation σ (the theorem needs σ' > 0)",
    )
    p.add_argument("--channels", type=_positive_int, default=4, help="channels of x and z")
    p.add_argument("--size", type=_positive_int, default=8, help="image height and width")
    p.add_argument("--batch", type=_positive_int, default=8, help="random images")
    p.add_argument("--delta", type=_positive_float, default=1e-3, help="input distance (L2)")
    p.add_argument("--method", choices=METHODS, default="dopri5", help="ODE solver")
    p.add_argument("--tol", type=_positive_float, default=1e-6, help="rtol = atol")
    p.add_argument("--seed", type=int, default=0, help="seed of images and kernels")
    p.add_argument(
        "--json", type=Path, default=Path("stability.json"), help="where to write the table as JSON"
    )
    p.set_defaults(run=_run_stability)


def _run_stability(args: argparse.Namespace) -> int:
    from .experiments.stability import StabilitySettings, run_stability, write_json

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
    print(
        f"integrating skew and unconstrained blocks to t0 = {list(settings.t0s)} ...",
        file=sys.stderr,
        flush=True,
    )
    result = run_stability(settings)
    print(result.to_markdown())
    write_json(result, args.json)
    print(f"\nwrote {args.json} ({result.seconds:.1f} s)")
    return 0


# --------------------------------------------------------------------- models
def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON where it parses (numbers, true, null), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed


def _add_models(sub) -> None:
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
        type=_option,
        metavar="KEY=VALUE",
        help="model options, e.g. width=32 method=rk4 step_size=0.25",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .models.summary import summarize_all, summarize_model

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


# --------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robustode",
        description="Adversarial robustness seen through ODEs: stable ODE blocks, exact "
        "solver semantics, attacks, defenses and gradient-masking audits.",
    )
    parser.add_argument("--version", action="version", version=f"robustode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_stability(sub)
    _add_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (ValueError, TypeError, SolverError, OSError) as exc:
        print(f"robustode: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as exc:  # e.g. an allocation too large for this machine
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"robustode: error: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("robustode: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
