"""Robust accuracy curves: against PGD iterations and against ε.

**Steps.** Without a random start PGD-k is a prefix of PGD-K, so one run of
the longest L∞ PGD without random start gives every PGD-k (k ≤ K): a point
is robust to PGD-k iff its first adversarial iterate is none (−1) or later
than k. The curve is read at k ∈ {1, 2, 5, …, 1000} ∩ [1, K]. When the suite
has no such run, ``pgd{K}-linf`` (SONet's step 0.003, no random start) with
K = ``curve_steps`` is added to the evaluation.

**ε.** PGD-20 L∞ without random start, step 2.5·ε/20, at each ε of the grid
(:data:`DEFAULT_EPS_GRID`: {0.5, 1, 2, 4, 8, 16, 32}/255 and 0.031), each an
ordinary attack spec whose batches are cached and resumed like the suite's; its
id reads ``pgd20-linf:eps=1/255,step_size=0.125/255`` (ε as k/255 where it is
a multiple of 1/255 or 0.5/255).

**Only on request.** Runs beyond the suite's own are added only when asked
for: ``curve_steps > 0`` (the steps curve's PGD-K when the suite has no
prefix-PGD) or a non-empty ``eps_grid``; :func:`run_evaluation` defaults to
neither (the steps curve from a suite's own prefix-PGD costs nothing and is
always drawn) and prints one line naming the extra runs before it starts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks import GradientAttack
from ..errors import InputError
from ..options import format_eps
from .suites import AttackSpec, parse_spec

STEP_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
EPS_GRID_255 = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
DEFAULT_EPS_GRID = tuple(sorted({e / 255 for e in EPS_GRID_255} | {0.031}))
EPS_CURVE_STEPS = 20


def prefix_attack_steps(spec: AttackSpec) -> int | None:
    """K if ``spec`` is an L∞ PGD (K ≥ 2) on cross-entropy without random start (one restart),
    else None:
    the attacks whose ``first_adversarial`` gives every PGD-k with k ≤ K."""
    attack = spec.create()
    if not isinstance(attack, GradientAttack):
        return None
    ok = (
        attack.threat.norm == "linf"
        and not attack.random_start
        and attack.restarts == 1
        and attack.loss_name == "ce"
        and attack.steps >= 2  # FGSM's single step is no curve
    )
    return attack.steps if ok else None


def steps_spec(steps: int) -> AttackSpec:
    """``pgd{steps}-linf``: SONet's L∞ PGD (ε 0.031, step 0.003, no random start)."""
    if steps in (20, 1000):
        return parse_spec(f"pgd{steps}-linf")
    return parse_spec(f"pgd1000-linf:steps={steps}")


def eps_spec(eps: float) -> AttackSpec:
    """PGD-20 L∞ at ``eps``, no random start, step 2.5·ε/20; the id names ε as k/255 where
    :func:`robustode.options.format_eps` does (``pgd20-linf:eps=1/255,step_size=0.125/255``)."""
    text = format_eps(eps, digits=17)
    if text.endswith("/255"):
        k = float(text[: -len("/255")])
        step = f"{2.5 * k / EPS_CURVE_STEPS:g}/255"
    else:
        text, step = repr(eps), repr(2.5 * eps / EPS_CURVE_STEPS)
    return parse_spec(f"pgd20-linf:eps={text},step_size={step}")


DEFAULT_CURVE_STEPS = 100


def curve_options(
    curves: bool = False,
    curve_steps: int | None = None,
    eps_grid: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``run_evaluation``'s ``curve_steps`` and ``eps_grid`` from a request: ``curves=True``
    asks for both curves (PGD-:data:`DEFAULT_CURVE_STEPS` when the suite has no prefix-PGD,
    :data:`DEFAULT_EPS_GRID`); a ``curve_steps`` or ``eps_grid`` given explicitly is a
    request for that curve on its own and wins over the defaults; nothing asked, no extra
    run (the steps curve from a suite's own prefix-PGD is still drawn)."""
    if curve_steps is not None and (
        isinstance(curve_steps, bool) or not isinstance(curve_steps, int) or curve_steps < 0
    ):
        raise InputError(f"curve_steps must be an integer ≥ 0, got {curve_steps!r}")
    steps = curve_steps if curve_steps is not None else (DEFAULT_CURVE_STEPS if curves else 0)
    grid = eps_grid if eps_grid is not None else (DEFAULT_EPS_GRID if curves else None)
    return {"curve_steps": steps, "eps_grid": None if grid is None else tuple(grid)}


@dataclass
class CurvePlan:
    """Which runs give the curves: ``steps`` (spec, K) and ``eps`` [(ε, spec)]."""

    steps: tuple[AttackSpec, int] | None = None
    eps: list[tuple[float, AttackSpec]] = field(default_factory=list)

    def extra_specs(self, suite: Sequence[AttackSpec]) -> list[AttackSpec]:
        """The runs the curves need beyond the suite's own."""
        have = {s.id for s in suite}
        extra: dict[str, AttackSpec] = {}
        wanted = ([self.steps[0]] if self.steps else []) + [s for _, s in self.eps]
        for spec in wanted:
            if spec.id not in have:
                extra.setdefault(spec.id, spec)
        return list(extra.values())


def plan_curves(
    specs: Sequence[AttackSpec],
    *,
    curve_steps: int = 0,
    eps_grid: Sequence[float] | None = None,
) -> CurvePlan:
    """The steps curve from the suite's longest prefix-PGD (else ``pgd{curve_steps}-linf``,
    0 skips), the ε curve over ``eps_grid`` (None or empty skips)."""
    if curve_steps < 0:
        raise InputError(f"curve_steps must be ≥ 0, got {curve_steps}")
    plan = CurvePlan()
    best: tuple[AttackSpec, int] | None = None
    for spec in specs:
        k = prefix_attack_steps(spec)
        if k is not None and (best is None or k > best[1]):
            best = (spec, k)
    if best is not None:
        plan.steps = best
    elif curve_steps > 0:
        plan.steps = (steps_spec(curve_steps), curve_steps)
    for eps in sorted(set(eps_grid or ())):
        if not eps > 0:
            raise InputError(f"every ε of the grid must be > 0, got {eps}")
        plan.eps.append((float(eps), eps_spec(float(eps))))
    return plan


def steps_curve(
    first_adversarial: torch.Tensor, steps: int, robust: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Robust accuracy of PGD-k at k ∈ STEP_GRID ∩ [1, steps] (and ``steps`` itself).

    ``robust``: the run's own verdict per point (its returned point, re-evaluated). A model
    whose output for an image depends on its batch-mates (batch-shared adaptive step
    control) can be adversarial inside the attack's shrinking batch and not in the
    evaluation batch; such a point counts as robust at every k, so the curve ends at the
    run's robust accuracy instead of below it.
    """
    first = first_adversarial.long()
    grid = sorted({k for k in STEP_GRID if k <= steps} | {steps})
    rows = []
    for k in grid:
        robust_k = (first < 0) | (first > k)
        if robust is not None:
            robust_k = robust_k | robust.to(robust_k.device)
        rows.append({"steps": k, "robust_accuracy": int(robust_k.sum()) / robust_k.numel()})
    return rows


__all__ = [
    "DEFAULT_CURVE_STEPS",
    "DEFAULT_EPS_GRID",
    "EPS_GRID_255",
    "STEP_GRID",
    "CurvePlan",
    "curve_options",
    "eps_spec",
    "plan_curves",
    "prefix_attack_steps",
    "steps_curve",
    "steps_spec",
]
