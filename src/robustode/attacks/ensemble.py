"""Worst case over a list of attacks, AutoAttack-style.

Each attack runs only on the points every earlier attack left robust; a
point counts as robust only if no member broke it, so the ensemble's robust
accuracy is the per-point worst case over its members and can only be at or
below each member's own.
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
)


class AttackEnsemble(Attack):
    """Run ``attacks`` in sequence on the points still robust; report each one's share."""

    def __init__(
        self, attacks: Sequence[Attack], *, name: str = "ensemble", notes: Sequence[str] = ()
    ) -> None:
        if not attacks:
            raise AttackInputError("an ensemble needs at least one attack")
        threats = {(a.threat.norm, a.threat.eps) for a in attacks}
        if len(threats) > 1:
            raise AttackInputError(
                "the attacks of an ensemble must share one threat model, got "
                + ", ".join(a.describe() for a in attacks)
            )
        super().__init__(attacks[0].threat, model_mode=attacks[0].model_mode)
        self.attacks = list(attacks)
        self.name = name
        self.notes = list(notes)

    def budget(self) -> int:
        return sum(a.budget() for a in self.attacks)

    def describe(self) -> str:
        return f"{self.name}: " + "; then ".join(a.describe() for a in self.attacks)

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        check_inputs(x, y, self.threat, model)
        y = y.long()
        x = x.detach()
        with model_mode(model, self.model_mode), torch.no_grad():
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
                broken = idx[result.success]
                x_adv[broken] = result.x_adv[result.success]
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
        return AttackResult(x_adv, ~robust, clean, queries, None, extra)

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
