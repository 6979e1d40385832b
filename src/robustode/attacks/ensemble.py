"""Worst case over a list of attacks, AutoAttack-style.

Each attack runs only on the points every earlier attack left robust; a
point counts as robust only if no member broke it, so the ensemble's robust
accuracy is the per-point worst case over its members and can only be at or
below each member's own.

The verdict is AutoAttack's: one pass on the clean images, then, per member,
the pass on the image it returns (``AttackResult.final_correct``); a
member's own clean pass only decides what it attacks. On a deterministic
model that is the same as "no member broke it"; on a randomised one it is
how AutoAttack's rand version judges. The whole run is in the seeded
context of :func:`~robustode.attacks.base.seeded_model_rng`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import (
    Attack,
    AttackInputError,
    AttackResult,
    Oracle,
    check_inputs,
    checked_logits,
    model_mode,
    seeded_model_rng,
)


class AttackEnsemble(Attack):
    """Run ``attacks`` in sequence on the points still robust; report each one's share."""

    def __init__(
        self,
        attacks: Sequence[Attack],
        *,
        name: str = "ensemble",
        notes: Sequence[str] = (),
        seed: int | None = None,
    ) -> None:
        if not attacks:
            raise AttackInputError("an ensemble needs at least one attack")
        threats = {(a.threat.norm, a.threat.eps) for a in attacks}
        if len(threats) > 1:
            raise AttackInputError(
                "the attacks of an ensemble must share one threat model, got "
                + ", ".join(a.describe() for a in attacks)
            )
        super().__init__(
            attacks[0].threat,
            model_mode=attacks[0].model_mode,
            seed=attacks[0].seed if seed is None else seed,
        )
        self.attacks = list(attacks)
        self.name = name
        self.notes = list(notes)

    def budget(self) -> int:
        """Each member's budget plus its own clean and verdict passes."""
        return sum(a.budget() + 2 for a in self.attacks)

    def describe(self) -> str:
        return f"{self.name}: " + "; then ".join(a.describe() for a in self.attacks)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        check_inputs(x, y, self.threat, model)
        y = y.long()
        x = x.detach()
        with model_mode(model, self.model_mode), seeded_model_rng(self.seed, x.device):
            return self._run_members(model, x, y)

    def _run_members(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        with torch.no_grad():
            clean = checked_logits(model, x, "on the clean images").argmax(1) == y
        robust = clean.clone()
        x_adv = x.clone()
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        rows: list[dict[str, Any]] = []
        for attack in self.attacks:
            idx = torch.nonzero(robust).squeeze(1)
            started = time.perf_counter()
            broken_here = 0
            if idx.numel():
                result = attack.run(model, x[idx], y[idx])
                wrong = result.success if result.final_correct is None else ~result.final_correct
                broken = idx[wrong]
                x_adv[broken] = result.x_adv[wrong]
                robust[broken] = False
                queries[idx] += result.queries.to(queries.device)
                broken_here = int(broken.numel())
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            rows.append(
                {
                    "attack": attack.name,
                    "description": attack.describe(),
                    "attacked": int(idx.numel()),
                    "broken": broken_here,
                    "robust_accuracy": robust.float().mean().item(),
                    "seconds": time.perf_counter() - started,
                }
            )
        extra = {"per_attack": rows, "notes": list(self.notes)}
        return AttackResult(x_adv, ~robust, clean, queries, None, extra, None, robust)

    def _attack(self, oracle: Oracle, x, y, generator, trace):  # pragma: no cover - run() overrides
        raise NotImplementedError


def ensemble_report(result: AttackResult, *, title: str = "ensemble") -> str:
    """A Markdown table: clean accuracy, then robust accuracy after each attack, then notes."""
    n = result.success.numel()
    lines = [
        f"{title}: {n} points, clean accuracy {100 * result.clean_accuracy:.2f} %",
        "",
        "| attack | attacked | broken | robust accuracy after (%) | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result.extra.get("per_attack", []):
        lines.append(
            f"| {row['attack']} | {row['attacked']} | {row['broken']} | "
            f"{100 * row['robust_accuracy']:.2f} | {row['seconds']:.1f} |"
        )
    lines.append("")
    lines.append(f"worst-case robust accuracy: {100 * result.robust_accuracy:.2f} %")
    lines.extend(f"note: {note}" for note in result.extra.get("notes", []))
    return "\n".join(lines)
