"""The ``robustode`` command line.

Every command prints its result as a table and writes it as JSON; bad input
gets one line naming what is wrong and what is accepted (exit code 2), never
a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (ValueError, SolverError, OSError) as exc:
        print(f"robustode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustode: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
