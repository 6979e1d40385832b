"""Adaptive attacks for ODE models: the deployed solver's outputs, a substitute's gradients.

SONet §6 found that adaptive solvers at a large tolerance (dopri5, tol 0.1)
mask gradients: the step sizes chosen for x depend on x, and differentiating
through that choice (or through one coarse, batch-shared step grid) gives an
input gradient that points nowhere useful. The attack here keeps the model's
outputs exactly as deployed — success is judged on the deployed solver — and
takes the gradient from a substitute solve of the same weights, in the manner
of BPDA (Athalye et al., 2018):

    logits = deployed(x).detach() + substitute(x) − substitute(x).detach()

so ``logits`` has the deployed values and the substitute's gradient. Any
gradient attack runs on :class:`SolverSubstitute` unchanged;
:class:`SolverSubstitution` wraps one so it is called like any other attack.

Substitutes (``SUBSTITUTES``):

- ``fixed``: rk4 (3/8 rule) on a fine fixed grid (``steps`` steps over [0, t1]);
  a block deployed with a fixed-step solver keeps it (its gradient is exact);
- ``tight``: the deployed method at a tolerance ``tighten`` times smaller;
- ``per_sample``: the deployed method with per-sample step control, so no
  image's steps depend on its batch-mates (in today's step semantics: a block
  deployed with ``step_semantics="torchdiffeq-2019"`` has no per-sample form);
- ``detached``: the deployed method with the step-size choice detached from
  the graph (torchdiffeq differentiates through the first step's choice).

Each model call costs two forward passes (deployed and substitute) while a
gradient is needed and one otherwise; ``queries`` counts calls, not passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..nn.ode_block import ODEBlock
from ..nn.solve_sites import discover_sites, intercepting, named_solve_sites
from ..ode import SolverConfig
from .base import Attack, AttackInputError, AttackResult, checked_logits, model_mode

SUBSTITUTES = ("fixed", "tight", "per_sample", "detached")


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    """Every solve site of ``model``: its ODE blocks, in module order (any ``nn.Module``,
    not only ours), then the ``odeint`` calls an active interception has seen in it
    (:mod:`robustode.nn.solve_sites`)."""
    return [site for _, site in named_solve_sites(model)]


def has_ode_blocks(model: nn.Module) -> bool:
    return bool(ode_blocks(model))


def batch_shared_step_control(model: nn.Module) -> bool:
    """Some solve site of ``model`` runs an adaptive method with one step grid for the whole
    batch (``step_control="batch"``, torchdiffeq's way): then an image's outputs depend on
    the other images of its batch. A site whose settings are unknown does not count."""
    for site in ode_blocks(model):
        solver = getattr(site, "solver", None)
        if solver is not None and solver.adaptive and solver.step_control == "batch":
            return True
    return False


def substitute_solver(
    solver: SolverConfig, kind: str = "fixed", *, steps: int = 16, tighten: float = 100.0
) -> SolverConfig:
    """The substitute of one block's deployed ``solver`` (see the module docstring).

    A fixed-step solver is its own substitute: its gradient is already the exact gradient
    of what it computes, and any other grid would differentiate a different function.
    """
    if kind not in SUBSTITUTES:
        raise AttackInputError(
            f"unknown substitute '{kind}'; choose one of: {', '.join(SUBSTITUTES)}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AttackInputError(f"steps of the fixed-grid substitute must be ≥ 1, got {steps!r}")
    if not (isinstance(tighten, int | float) and tighten > 1):
        raise AttackInputError(f"tighten must be a number > 1, got {tighten!r}")
    if not solver.adaptive:
        return solver
    if kind == "fixed":
        return solver.replace(
            method="rk4", step_size=solver.t1 / steps, step_control="batch", detach_step_size=None
        )
    if kind == "tight":
        return solver.replace(rtol=solver.rtol / tighten, atol=solver.atol / tighten)
    if kind == "per_sample":
        # per-sample control exists in today's step semantics only (not the 2019 ones)
        return solver.replace(
            step_control="per_sample", backend="native", step_semantics="torchdiffeq-0.2.5"
        )
    return solver.replace(detach_step_size=True, backend="native")  # "detached"


@contextlib.contextmanager
def solvers_replaced(blocks: list[ODEBlock], solvers: list[SolverConfig]) -> Iterator[None]:
    """Run with each block's solver swapped for the given one; the deployed ones come back."""
    deployed = [block.solver for block in blocks]
    try:
        for block, solver in zip(blocks, solvers, strict=True):
            block.solver = solver
        yield
    finally:
        for block, solver in zip(blocks, deployed, strict=True):
            block.solver = solver


class SolverSubstitute(nn.Module):
    """``model`` whose outputs come from its deployed solvers and whose input gradient comes
    from substitute solvers (BPDA-style straight-through; see the module docstring).

    The wrapped model's parameters are shared, not copied; its solvers are swapped only for
    the duration of the substitute pass and always restored.
    """

    def __init__(
        self,
        model: nn.Module,
        substitute: str = "fixed",
        *,
        steps: int = 16,
        tighten: float = 100.0,
    ) -> None:
        super().__init__()
        blocks = ode_blocks(model)
        if not blocks:
            raise AttackInputError(
                f"{type(model).__name__} has no ODE blocks; solver substitution needs a model "
                "that integrates an ODE"
            )
        self.model = model
        self.substitute = substitute
        self._blocks = blocks
        self._substitutes = [
            substitute_solver(b.solver, substitute, steps=steps, tighten=tighten) for b in blocks
        ]

    def describe(self) -> str:
        return f"{self.substitute}: " + ", ".join(s.describe() for s in self._substitutes)

    @property
    def identical(self) -> bool:
        """Every substitute is the deployed solver (fixed-step blocks): nothing to swap."""
        return all(b.solver == s for b, s in zip(self._blocks, self._substitutes, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identical or not (torch.is_grad_enabled() and x.requires_grad):
            # no gradient wanted, or the substitute would compute the deployed pass again
            return self.model(x)
        with torch.no_grad():
            deployed = self.model(x)
        with solvers_replaced(self._blocks, self._substitutes):
            surrogate = self.model(x)
        return deployed.detach() + (surrogate - surrogate.detach())


class SolverSubstitution(Attack):
    """Any attack, run with its gradients through a substitute solver (SONet §6, adaptive).

    ``SolverSubstitution(PGD("linf", 8/255, steps=20), "fixed")(model, x, y)``.
    Success is judged on the deployed model: the substitute only steers the attack.

    With ``include_deployed`` (default) the attack first runs as it is, on the deployed
    gradients, and the substitute then attacks the points still robust: the result is the
    per-point worst case of both, so the adaptive attack is never weaker than the plain
    one. That matters: a substitute differentiates a *different* function (rk4 on 16 steps
    is not dopri5 at tol 0.1), and on a model whose solver does not mask, its gradient can
    be the worse guide (measured: on a digits SOBlock with dopri5, PGD-20 through the
    fixed substitute alone left 49 % robust where plain PGD-20 left 46 %).
    ``include_deployed=False`` runs the substitute alone — what the audit compares.
    """

    def __init__(
        self,
        attack: Attack,
        substitute: str = "fixed",
        *,
        steps: int = 16,
        tighten: float = 100.0,
        include_deployed: bool = True,
    ) -> None:
        if not isinstance(attack, Attack):
            raise AttackInputError(
                f"SolverSubstitution wraps an Attack, got {type(attack).__name__}"
            )
        if substitute not in SUBSTITUTES:
            raise AttackInputError(
                f"unknown substitute '{substitute}'; choose one of: {', '.join(SUBSTITUTES)}"
            )
        super().__init__(
            attack.threat,
            seed=attack.seed,
            model_mode=attack.model_mode,
            batch_size=attack.batch_size,
        )
        self.attack = attack
        self.substitute = substitute
        self.steps = steps
        self.tighten = tighten
        self.include_deployed = bool(include_deployed)
        self.min_classes = attack.min_classes
        self.name = f"{attack.name}+{substitute}"

    def budget(self) -> int:
        return self.attack.budget() * (2 if self.include_deployed else 1)

    def describe(self) -> str:
        grid = f" ({self.steps} rk4 steps)" if self.substitute == "fixed" else ""
        first = "deployed gradients, then " if self.include_deployed else ""
        return (
            f"{self.attack.describe()}; {first}gradients via the {self.substitute} substitute{grid}"
        )

    def run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        # odeint calls inside any model (torchdiffeq's or robustode's) are solve sites too
        with intercepting(model):
            discover_sites(model, x)
            return self._run(model, x, y, trace=trace)

    def _run(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, trace: bool = False
    ) -> AttackResult:
        wrapped = SolverSubstitute(model, self.substitute, steps=self.steps, tighten=self.tighten)
        if not self.include_deployed:
            return self.attack.run(wrapped, x, y, trace=trace)
        plain = self.attack.run(model, x, y, trace=trace)
        todo = torch.nonzero(plain.robust).squeeze(1)
        if todo.numel() == 0 or wrapped.identical:  # a second pass would repeat the first
            return plain
        sub = self.attack.run(wrapped, x[todo], y[todo])
        x_adv, queries = plain.x_adv.clone(), plain.queries.clone()
        won = todo[sub.success]
        x_adv[won] = sub.x_adv[sub.success]
        queries[todo] += sub.queries.to(queries)
        # The verdict is re-taken on the merged batch as it is returned, in the attack's
        # chunks: with batch-shared step control a point's prediction depends on its
        # batch-mates, so a point broken inside the sub-batch need not stay broken here.
        chunk = self.attack.batch_size or max(len(y), 1)
        with torch.no_grad(), model_mode(model, self.model_mode):
            pred = torch.cat(
                [
                    checked_logits(model, part, "on the adversarial images").argmax(1)
                    for part in x_adv.split(chunk)
                ]
            )
        success = (pred != y) | ~plain.clean_correct
        # the merged points follow two trajectories: no single PGD-k prefix describes them
        return AttackResult(x_adv, success, plain.clean_correct, queries, plain.loss_trace)

    def options(self) -> dict[str, Any]:
        return {
            "substitute": self.substitute,
            "steps": self.steps,
            "tighten": self.tighten,
            "include_deployed": self.include_deployed,
        }
