"""``robustode attacks``: the attack presets, or one attack described."""

from __future__ import annotations

import argparse

from .common import option


def add(sub) -> None:
    p = sub.add_parser(
        "attacks",
        help="list the attack presets (the papers' settings), or describe one with overrides",
        description=(
            "Without NAME: a table of every attack preset with its threat model and its budget "
            "in model calls per image. With NAME: the attack built with the given KEY=VALUE "
            "overrides (e.g. eps=0.0157 steps=50) and the options it accepts. In Python: "
            "robustode.attacks.create_attack(NAME, **overrides)(model, x, y)."
        ),
    )
    p.add_argument("name", nargs="?", help="an attack preset (see the table without NAME)")
    p.add_argument(
        "options",
        nargs="*",
        type=option,
        metavar="KEY=VALUE",
        help="overrides, e.g. eps=0.0157 steps=50 seed=1",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..attacks import attack_preset, create_attack, list_attacks
    from ..attacks.presets import describe_preset

    if args.name is None:
        print("| attack | threat model | calls per image | setting |")
        print("|---|---|---:|---|")
        for name in list_attacks():
            attack = create_attack(name)
            print(
                f"| {name} | {attack.threat.describe()} | {attack.budget():,} | "
                f"{attack_preset(name).summary} |"
            )
        return 0
    print(describe_preset(args.name, **dict(args.options)))
    return 0
