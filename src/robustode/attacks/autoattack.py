"""AutoAttack (Croce & Hein, ICML 2020): its versions and threat models, exactly as composed.

``autoattack(version, norm, eps)`` builds the ensemble AutoAttack's
``set_version`` builds (each attack runs on the points every earlier one
left robust; the verdict is per point, worst case):

- ``standard``, L∞ and L2: APGD-CE (one run), APGD-T (9 targets), FAB-T
  (9 targets), Square (5000 queries);
- ``standard``, L1: APGD-CE (5 restarts) and APGD-T (5 targets), both on the
  3ε/2ε/ε schedule of l1-APGD; FAB-T; Square-L1;
- ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts),
  Square, APGD-T, FAB-T;
- ``rand``: APGD-CE and APGD-DLR, each with EOT over 20 passes (one run each);
- ``custom``: the listed attacks with AutoAttack's defaults (APGD and FAB
  with 5 restarts).

APGD and FAB run 100 iterations, Square starts at p_init 0.8 on AutoAttack's
schedule (no rescaling to the budget). RobustBench's radii are the
defaults: 8/255 (L∞), 0.5 (L2), 12 (L1).

``rand`` is the version for randomised models; its verdict is AutoAttack's:
one stochastic pass on the clean image, then one on each attack's returned
image (:mod:`robustode.attacks.eot`). The other versions run AutoAttack's
own randomness check on the first 250 images and add its flag to the notes
when the model's outputs vary between passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .apgd import APGDCE, APGDDLR, APGDT
from .base import Attack, AttackInputError, AttackResult
from .ensemble import AttackEnsemble
from .eot import EOT, RANDOM_CHECK_PASSES, check_randomness
from .fab import FAB, FABT
from .square import Square
from .threat import NORMS, SYMBOLS

VERSIONS = ("standard", "plus", "rand", "custom")
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}
CUSTOM_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# AutoAttack's budgets
STEPS = 100
QUERIES = 5000
EOT_ITER = 20
RESTARTS = 5  # APGD and FAB in plus and custom; APGD-CE in L1 standard
TARGETS = 9  # APGD-T and FAB-T; APGD-T has 5 in L1 standard
L1_APGDT_TARGETS = 5
SQUARE_GAIN_FLAG = 0.002  # AutoAttack's check_square_sr threshold

RAND_VERDICT = (
    "verdict on a randomised model (AutoAttack's rand version): a point is robust if one "
    "stochastic forward pass classifies its clean image correctly and, for each attack, one "
    "pass on the image that attack returns does too; inside APGD an iterate counts as "
    "adversarial when the last of its {passes} EOT passes misclassifies it"
)


class AutoAttack(AttackEnsemble):
    """An AutoAttack version: an :class:`AttackEnsemble` that also says which version ran."""

    def __init__(
        self,
        attacks: Sequence[Attack],
        *,
        version: str,
        seed: int = 0,
        notes: Sequence[str] = (),
        check_random: bool = True,
    ) -> None:
        super().__init__(attacks, name="autoattack", notes=notes, seed=seed)
        self.version = version
        self.check_random = check_random

    def budget(self) -> int:
        """The members' budgets and verdict passes, and the randomness check's passes."""
        return super().budget() + (RANDOM_CHECK_PASSES if self.check_random else 0)

    def describe(self) -> str:
        members = "; then ".join(a.describe() for a in self.attacks)
        return f"autoattack {self.version} ({self.threat.describe()}): {members}"

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        result = super().run(model, x, y, trace=trace)
        notes = list(result.extra.get("notes", []))
        if self.check_random and x.shape[0]:
            check = check_randomness(model, x, y, seed=self.seed, mode=self.model_mode)
            result.extra["randomness_check"] = check.describe()
            if check.random:
                notes.append(
                    f"AutoAttack's flag: the model seems randomised ({check.describe()}); "
                    "evaluate it with version=rand (EOT)"
                )
        # AutoAttack's check_square_sr: Square's robust accuracy (after it, cumulative) below
        # every other attack's by more than 0.2 points
        after = {r["attack"]: r["robust_accuracy"] for r in result.extra.get("per_attack", [])}
        others = [v for k, v in after.items() if k != "square"]
        if "square" in after and others and after["square"] < min(others) - SQUARE_GAIN_FLAG:
            gain = min(others) - after["square"]
            notes.append(
                f"AutoAttack's flag: Square lowered the robust accuracy by {100 * gain:.2f} "
                "points after the white-box attacks — a sign of gradient masking; try more "
                "queries, restarts or an adaptive attack"
            )
        result.extra["notes"] = notes
        result.extra["version"] = self.version
        return result


def _check_version(version: str, norm: str, attacks: str | None) -> list[str]:
    if version not in VERSIONS:
        raise AttackInputError(
            f"unknown AutoAttack version '{version}'; choose one of: {', '.join(VERSIONS)}"
        )
    if norm not in NORMS:
        raise AttackInputError(f"unknown norm '{norm}'; choose one of: {', '.join(NORMS)}")
    if version != "custom":
        if attacks is not None:
            raise AttackInputError(
                f"attacks= is for version=custom; version={version} runs AutoAttack's own list"
            )
        return []
    names = [a.strip() for a in (attacks or "").replace(",", "+").split("+") if a.strip()]
    unknown = [a for a in names if a not in CUSTOM_ATTACKS]
    if not names or unknown:
        raise AttackInputError(
            "version=custom needs attacks=NAME+NAME… from: "
            f"{', '.join(CUSTOM_ATTACKS)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return names


def autoattack(
    *,
    version: str = "standard",
    norm: str = "linf",
    eps: float | None = None,
    attacks: str | None = None,
    steps: int = STEPS,
    queries: int = QUERIES,
    eot_iter: int = EOT_ITER,
    seed: int = 0,
    batch_size: int | None = None,
) -> AutoAttack:
    """AutoAttack's ``version`` for ``norm`` at ``eps`` (RobustBench's radius by default).

    ``steps`` (APGD and FAB iterations), ``queries`` (Square) and ``eot_iter``
    (rand) change AutoAttack's budgets — for quick runs; the description and
    notes then say so. ``attacks`` (version=custom): names joined by ``+``.
    """
    names = _check_version(version, norm, attacks)
    eps = DEFAULT_EPS[norm] if eps is None else eps
    common: dict[str, Any] = {"eps": eps, "seed": seed, "batch_size": batch_size}
    l1 = norm == "l1"

    def apgd(cls: type, **options: Any) -> Attack:
        return cls(norm, steps=steps, **common, **options)

    def fab(cls: type, **options: Any) -> Attack:
        return cls(norm, steps=steps, **common, **options)

    def square() -> Attack:
        return Square(norm=norm, queries=queries, p_init=0.8, schedule="autoattack", **common)

    members: list[Attack]
    if version == "standard":
        members = [
            apgd(APGDCE, restarts=RESTARTS if l1 else 1, large_eps=l1),
            apgd(APGDT, targets=L1_APGDT_TARGETS if l1 else TARGETS, large_eps=l1),
            fab(FABT, targets=TARGETS),
            square(),
        ]
    elif version == "plus":
        members = [
            apgd(APGDCE, restarts=RESTARTS),
            apgd(APGDDLR, restarts=RESTARTS),
            fab(FAB, restarts=RESTARTS),
            square(),
            apgd(APGDT, targets=TARGETS),
            fab(FABT, targets=TARGETS),
        ]
    elif version == "rand":
        members = [
            EOT(apgd(APGDCE), iterations=eot_iter),
            EOT(apgd(APGDDLR), iterations=eot_iter),
        ]
    else:
        build = {
            "apgd-ce": lambda: apgd(APGDCE, restarts=RESTARTS),
            "apgd-dlr": lambda: apgd(APGDDLR, restarts=RESTARTS),
            "apgd-t": lambda: apgd(APGDT, targets=TARGETS),
            "fab": lambda: fab(FAB, restarts=RESTARTS),
            "fab-t": lambda: fab(FABT, targets=TARGETS),
            "square": square,
        }
        members = [build[name]() for name in dict.fromkeys(names)]
    notes = [f"AutoAttack {version} version, {SYMBOLS[norm]} ε={eps:.6g}"]
    if version == "rand":
        notes.append(RAND_VERDICT.format(passes=eot_iter))
    if version == "plus" and l1:
        notes.append("AutoAttack itself warns that its plus version is not tuned for L1")
    changed = [
        f"{label} {value} (AutoAttack: {default})"
        for label, value, default, used in (
            ("iterations", steps, STEPS, True),
            ("Square queries", queries, QUERIES, version != "rand"),
            ("EOT passes", eot_iter, EOT_ITER, version == "rand"),
        )
        if used and value != default
    ]
    if changed:
        notes.append("budget changed from AutoAttack's: " + ", ".join(changed))
    return AutoAttack(
        members, version=version, seed=seed, notes=notes, check_random=version != "rand"
    )
