"""The ``robustode`` command line: one module per command (``add`` builds its parser,
``run`` carries it out), the shared argument types in :mod:`.common`.

Every command prints its result as a table and writes it as JSON; bad input
gets one line naming what is wrong and what is accepted (exit code 2), never
a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import RobustodeError, command_line_spelling
from . import (
    attacks,
    audit,
    bench,
    defenses,
    demo,
    evaluate,
    models,
    reproduce,
    stability,
    steps,
    train,
)
from .common import Parser

COMMANDS = (demo, stability, models, train, attacks, defenses, evaluate, audit, steps,
            reproduce, bench)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="robustode",
        description="Adversarial robustness seen through ODEs: stable ODE blocks, exact "
        "solver semantics, attacks, defenses and gradient-masking audits.",
    )
    parser.add_argument("--version", action="version", version=f"robustode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def _bug(exc: BaseException) -> int:
    import traceback

    traceback.print_exception(exc)
    print(
        f"robustode: this is a bug in robustode ({type(exc).__name__} above), not a problem "
        "with your input; please report it with the traceback",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from ..signals import Terminated, interrupt_on_termination
    from ..train.loop import TrainingStopped

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    with command_line_spelling(), interrupt_on_termination():
        try:
            return int(args.run(args))
        except RobustodeError as exc:
            print(f"robustode: error: {exc}", file=sys.stderr)
            return 2
        except (MemoryError, torch.OutOfMemoryError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"robustode: error: out of memory ({first}); use a smaller --batch-size or "
                "fewer images",
                file=sys.stderr,
            )
            return 1
        except TrainingStopped as exc:
            print(f"robustode: {exc}", file=sys.stderr)
            return 128 + exc.signum if exc.signum else 130
        except Terminated as exc:
            print(f"robustode: stopped by {exc}", file=sys.stderr)
            return 128 + exc.signum
        except KeyboardInterrupt:
            print("robustode: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # anything else is robustode's bug: keep its traceback
            return _bug(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
