"""``robustode defenses``: the training defenses and their options."""

from __future__ import annotations

import argparse


def add(sub) -> None:
    p = sub.add_parser(
        "defenses",
        help="list the training defenses and their options",
        description=(
            "Every training objective 'robustode train --defense NAME --defense-opt KEY=VALUE' "
            "accepts, with its options and defaults."
        ),
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..defenses import defense_entry, list_defenses
    from ..options import format_options

    for name in list_defenses():
        entry = defense_entry(name)
        options = format_options(entry.options) or "none"
        print(f"{name}: {entry.summary}\n    options: {options}")
    return 0
