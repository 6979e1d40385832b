"""APGD-CE, APGD-DLR and APGD-T (Croce & Hein, ICML 2020, Algorithm 1), as AutoAttack runs
them, in L∞, L2 and L1.

Step-size-free PGD: the step starts at 2ε and is halved at checkpoints
w_j = p_j·N (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
0.06)) when (1) the loss rose in fewer than ρ = 0.75 of the steps since the
last checkpoint, or (2) the step was not halved at the last checkpoint and
the best loss has not improved since; on halving, the iterate restarts from
the best point found. Momentum α = 0.75 (eq. 2 of the paper).

APGD-T runs the targeted DLR loss (eq. 7) against the classes with the 2nd
… (targets + 1)-th largest clean logits, each on the points still robust.

**L1** (l1-APGD, Croce & Hein, "Mind the box", ICML 2021, §3 and Algorithm 1,
with AutoAttack's constants): the step moves only the coordinates with the
largest |gradient| — the top k of them, k a fraction of the input that
starts at 20 % and follows the sparsity of the best point found (‖δ_best‖₀
/ 1.5) — as sign(g)/‖sign(g)‖₁ scaled by a step that starts at ε; every
max(⌊0.04·N⌋, 1) iterations the step is reset to ε where the best point
became ≥ 5 % sparser (and the iterate restarts from it), else divided by
1.5, never below ε/10. No momentum. Each step is projected onto the L1 ball
*intersected with the box* (:func:`~robustode.attacks.threat.project_l1_box`).
The start is a Gaussian draw projected onto that set. ``large_eps`` runs
AutoAttack's L1 schedule: 30 % of the iterations at 3ε, 30 % at 2ε, the
rest at ε, each stage starting from the best-loss point of the one before
(a start drawn for and projected onto the 3ε set); only the ε stage's
iterates count.

``eot_iter`` > 1 averages the input gradient over that many forward passes
(Expectation over Transformation, Athalye et al. 2018) for randomised
models; the loss and the adversarial check of an iterate come from its last
pass, as AutoAttack's ``eot_iter`` does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Attack, AttackInputError, BestIterate, ModelMode, Oracle, require_counts
from .eot import eot_loss_and_grad, require_eot
from .losses import dlr, targeted_dlr
from .threat import Norm, ThreatModel

# l1-APGD's constants as AutoAttack sets them (Mind the box, §3)
L1_TOPK_START = 0.2  # fraction of the coordinates a step moves at first
L1_SPARSITY_DIVISOR = 1.5  # next k = ‖δ_best‖₀ / 1.5
L1_STEP_DIVISOR = 1.5  # step ÷ 1.5 at a checkpoint where sparsity did not drop by 5 %
L1_STEP_FLOOR = 10.0  # step ≥ ε / 10
L1_SPARSER = 0.95
# AutoAttack's L1 schedule: (ε factor, share of the iterations)
LARGE_EPS_STAGES = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step (Croce & Hein 2020, §3.2).

    p₁ = 0.22 and periods shrinking by 0.03 down to 0.06 of N, in whole
    iterations as AutoAttack counts them (floating point would put a
    checkpoint at 58 instead of 57 for N = 100).
    """
    period = max(int(0.22 * steps), 1)
    shrink, minimum = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, mark = [], period
    while mark < steps:
        marks.append(mark)
        period = max(period - shrink, minimum)
        mark += period
    return marks


def large_eps_schedule(steps: int) -> list[tuple[float, int]]:
    """AutoAttack's L1 stages: (ε factor, iterations), the last taking what is left."""
    counts = [math.ceil(share * steps) for _, share in LARGE_EPS_STAGES[:-1]]
    counts.append(steps - sum(counts))
    return [(factor, n) for (factor, _), n in zip(LARGE_EPS_STAGES, counts, strict=True) if n > 0]


class APGD(Attack):
    """APGD on the CE or DLR loss (untargeted), or APGD-T with ``targets`` target classes."""

    def __init__(
        self,
        norm: Norm = "linf",
        eps: float = 8 / 255,
        *,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        targets: int | None = None,
        rho: float = 0.75,
        momentum: float = 0.75,
        random_start: bool = True,
        large_eps: bool = False,
        eot_iter: int = 1,
        early_stop: bool = True,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel(norm, eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(steps=steps, restarts=restarts)
        require_eot(eot_iter)
        if loss not in ("ce", "dlr"):
            raise AttackInputError(f"APGD's loss must be 'ce' or 'dlr', got '{loss}'")
        if targets is not None:
            require_counts(targets=targets)
        if large_eps and norm != "l1":
            raise AttackInputError(
                "large_eps is AutoAttack's schedule for the L1 threat model; "
                f"it does not apply to {norm}"
            )
        self.steps = steps
        self.restarts = restarts
        self.loss_name = "dlr-targeted" if targets else loss
        self.targets = targets
        self.rho = rho
        self.momentum = momentum
        self.random_start = random_start
        self.large_eps = bool(large_eps)
        self.eot_iter = eot_iter
        self.early_stop = early_stop
        self.name = "apgd-t" if targets else f"apgd-{loss}"
        self.min_classes = 4 if targets else (3 if loss == "dlr" else 2)
        self._stages = large_eps_schedule(steps) if self.large_eps else [(1.0, steps)]
        self._marks = [checkpoints(n) for _, n in self._stages]

    def evaluations_per_run(self) -> int:
        """Iterates one run evaluates: each stage's start and its iterations."""
        return sum(n + 1 for _, n in self._stages)

    def budget(self) -> int:
        runs = self.restarts * (self.targets or 1)
        return runs * self.evaluations_per_run() * self.eot_iter + (1 if self.targets else 0)

    def describe(self) -> str:
        extra = f", {self.targets} target classes" if self.targets else ""
        if self.large_eps:
            extra += ", ε schedule 3ε/2ε/ε"
        if self.eot_iter > 1:
            extra += f", EOT over {self.eot_iter} passes"
        return (
            f"{self.name}: {self.threat.describe()}, {self.steps} iterations, "
            f"{self.restarts} restart(s){extra}"
        )

    # ------------------------------------------------------------------ run
    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        n = x.shape[0]
        all_points = torch.arange(n, device=x.device)
        state = BestIterate(x)
        extra: dict[str, Any] = {}
        target_classes: list[torch.Tensor | None] = [None]
        if self.targets:
            with torch.no_grad():
                clean_logits = oracle(x, all_points)
            ranked = clean_logits.argsort(dim=1, descending=True)
            count = min(self.targets, clean_logits.shape[1] - 1)
            target_classes = [ranked[:, k] for k in range(1, count + 1)]
            state.update(all_points, x, clean_logits.argmax(1) != y, torch.full((n,), -math.inf))
        traces: list[torch.Tensor] = []
        rows = self.evaluations_per_run()
        for target in target_classes:
            for _ in range(self.restarts):
                active = torch.nonzero(~state.adv).squeeze(1) if self.early_stop else all_points
                if active.numel() == 0:
                    break
                t = None if target is None else target[active]
                run_trace = self._single_run(oracle, x, y, active, t, generator, state)
                if trace:
                    full = torch.full((rows, n), float("nan"), device=x.device)
                    full[:, active] = run_trace
                    traces.append(full)
        loss_trace = torch.cat(traces) if trace and traces else None
        return state.x, loss_trace, extra

    def _start(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """AutoAttack's start: ε·t/‖t‖ with t uniform in [−1, 1] (L∞) or Gaussian (L2), on the
        ball's surface; for L1 a Gaussian t projected onto the L1 ball ∩ box.

        Unlike PGD's uniform-in-ball start, the L∞/L2 start lies on the ball's surface.
        """
        if self.threat.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.threat.norm == "l1":
            return ThreatModel("l1", eps).project_delta(t, x)
        scale = (
            t.flatten(1).abs().amax(1) if self.threat.norm == "linf" else t.flatten(1).norm(dim=1)
        )
        return eps * t / scale.clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))

    def _loss(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        if target is not None:
            return targeted_dlr(logits, y, target)
        if self.loss_name == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr(logits, y)

    def _evaluate(self, oracle, x_k, index, y, target):
        logits, loss, grad = eot_loss_and_grad(
            oracle, x_k, index, lambda z: self._loss(z, y, target), self.eot_iter
        )
        return loss.float(), grad, logits.argmax(1) != y

    def _single_run(
        self,
        oracle: Oracle,
        x_all: torch.Tensor,
        y_all: torch.Tensor,
        index: torch.Tensor,
        target: torch.Tensor | None,
        generator: torch.Generator,
        state: BestIterate,
    ) -> torch.Tensor:
        """One APGD run on the points ``index``; returns its (evaluations, len(index)) trace.

        With ``early_stop`` a point leaves the run once an iterate breaks it:
        its best adversarial is already kept in ``state``. Under the L1
        ε schedule the stages before the last neither count nor stop points.
        """
        x, y = x_all[index], y_all[index]
        trace = torch.full(
            (self.evaluations_per_run(), index.numel()), float("nan"), device=x_all.device
        )
        first_eps = self.threat.eps * self._stages[0][0]
        if self.random_start:
            delta = self._start(x, first_eps, generator)
        else:
            delta = torch.zeros_like(x)
        x_start = x + delta
        row = 0
        last = len(self._stages) - 1
        for stage, ((factor, steps), marks) in enumerate(
            zip(self._stages, self._marks, strict=True)
        ):
            final = stage == last
            threat = ThreatModel(self.threat.norm, self.threat.eps * factor)
            x_start = x + threat.project_delta(x_start - x, x)
            x_start = self._stage(
                oracle, x, y, index, target, threat, steps, marks, x_start,
                state if final else None, trace[row : row + steps + 1],
                fresh=not self.large_eps,
            )  # fmt: skip
            row += steps + 1
        return trace

    def _stage(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        target: torch.Tensor | None,
        threat: ThreatModel,
        steps: int,
        marks: list[int],
        x_adv: torch.Tensor,
        state: BestIterate | None,
        trace: torch.Tensor,
        *,
        fresh: bool,
    ) -> torch.Tensor:
        """``steps`` APGD iterations from ``x_adv`` inside ``threat``; returns the best-loss
        point of every row. ``state`` (None in an L1 schedule's larger-ε stages) keeps the
        best adversarial; ``fresh``: the start was drawn for this stage (AutoAttack's
        sparsity bookkeeping differs when a stage continues from an earlier one)."""
        count = state is not None
        early_stop = self.early_stop and count
        column = torch.arange(index.numel(), device=x.device)
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        loss, grad, adv = self._evaluate(oracle, x_adv, index, y, target)
        trace[0, column] = loss
        if count:
            state.update(index, x_adv, adv, loss)
        l1 = threat.norm == "l1"
        features = x[0].numel()
        step0 = (1.0 if l1 else 2.0) * threat.eps
        s = {  # per-point run state; rows follow ``index``
            "x": x,
            "y": y,
            "index": index,
            "column": column,
            "row": torch.arange(x.shape[0], device=x.device),
            "x_adv": x_adv,
            "x_prev": x_adv.clone(),
            "grad": grad,
            "eta": torch.full(shape, step0, device=x.device, dtype=x.dtype),
            "x_best": x_adv.clone(),
            "grad_best": grad.clone(),
            "loss_best": loss.clone(),
            "loss_prev": loss.clone(),
            "increases": torch.zeros_like(loss),
            "loss_best_at_mark": loss.clone(),
            "halved_at_mark": torch.ones_like(adv),
        }
        if l1:
            nonzero = (x_adv - x).flatten(1).ne(0).sum(1).to(x.dtype)
            if fresh:
                s["topk"] = torch.full_like(loss, L1_TOPK_START, dtype=x.dtype)
                s["sparsity"] = torch.full_like(loss, features, dtype=x.dtype)
            else:
                s["topk"] = nonzero / features / L1_SPARSITY_DIVISOR
                s["sparsity"] = nonzero
            l1_period = max(int(0.04 * steps), 1)
        if target is not None:
            s["target"] = target
        x_best_all = x_adv.clone()  # every row's best-loss point, returned for the next stage
        last_mark = 0
        for i in range(steps):
            if early_stop and adv.any():
                s = {k: v[~adv] for k, v in s.items()}
                if s["index"].numel() == 0:
                    break
            x, x_adv, eta = s["x"], s["x_adv"], s["eta"]
            if l1:
                x_new = x + threat.project_delta(
                    x_adv + eta * _sparse_sign(s["grad"], s["topk"]) - x, x
                )
            else:
                z = x + threat.project_delta(x_adv + eta * threat.steepest_ascent(s["grad"]) - x, x)
                if i == 0:
                    x_new = z
                else:
                    step = self.momentum * (z - x_adv) + (1 - self.momentum) * (x_adv - s["x_prev"])
                    x_new = x + threat.project_delta(x_adv + step - x, x)
            s["x_prev"], s["x_adv"] = x_adv, x_new
            loss, grad, adv = self._evaluate(oracle, x_new, s["index"], s["y"], s.get("target"))
            s["grad"] = grad
            trace[i + 1, s["column"]] = loss
            if count:
                state.update(s["index"], x_new, adv, loss)
            s["increases"] += (loss > s["loss_prev"]).float()
            s["loss_prev"] = loss
            improved = loss > s["loss_best"]
            s["x_best"][improved], s["grad_best"][improved] = x_new[improved], grad[improved]
            s["loss_best"] = torch.where(improved, loss, s["loss_best"])
            x_best_all[s["row"][improved]] = x_new[improved]
            if l1:
                if (i + 1) % l1_period == 0:
                    self._l1_checkpoint(s, threat, features)
            elif i + 1 in marks:
                period = i + 1 - last_mark
                oscillating = s["increases"] <= self.rho * period  # AutoAttack's ≤
                stalled = ~s["halved_at_mark"] & (s["loss_best"] <= s["loss_best_at_mark"])
                halve = oscillating | stalled
                s["eta"][halve] /= 2
                s["x_adv"][halve] = s["x_best"][halve]
                s["grad"][halve] = s["grad_best"][halve]
                s["halved_at_mark"], s["loss_best_at_mark"] = halve, s["loss_best"].clone()
                s["increases"].zero_()
                last_mark = i + 1
        return x_best_all

    @staticmethod
    def _l1_checkpoint(s: dict[str, torch.Tensor], threat: ThreatModel, features: int) -> None:
        """l1-APGD's checkpoint: follow the best point's sparsity, reset or shrink the step."""
        nonzero = (s["x_best"] - s["x"]).flatten(1).ne(0).sum(1).to(s["eta"].dtype)
        sparser = nonzero / s["sparsity"].clamp_min(1) < L1_SPARSER
        s["topk"] = nonzero / features / L1_SPARSITY_DIVISOR
        eta = s["eta"].flatten()
        eta = torch.where(sparser, torch.full_like(eta, threat.eps), eta / L1_STEP_DIVISOR)
        s["eta"] = eta.clamp(threat.eps / L1_STEP_FLOOR, threat.eps).view_as(s["eta"])
        s["sparsity"] = nonzero
        s["x_adv"][sparser] = s["x_best"][sparser]
        s["grad"][sparser] = s["grad_best"][sparser]


def _sparse_sign(grad: torch.Tensor, topk: torch.Tensor) -> torch.Tensor:
    """sign(g) on the coordinates with the largest |g| (a ``topk`` fraction of them, ties kept),
    0 elsewhere, scaled to unit L1 norm: l1-APGD's step direction."""
    flat = grad.flatten(1).abs()
    features = flat.shape[1]
    ranked = flat.sort(1).values
    position = ((1 - topk) * features).clamp(0, features - 1).long()
    threshold = ranked.gather(1, position.view(-1, 1))
    signs = torch.where(flat >= threshold, grad.flatten(1).sign(), torch.zeros_like(flat))
    return (signs / (signs.abs().sum(1, keepdim=True) + 1e-10)).view_as(grad)


class APGDCE(APGD):
    """APGD on cross-entropy (AutoAttack's first attack: 100 iterations)."""

    def __init__(self, norm: Norm = "linf", eps: float = 8 / 255, **options: Any) -> None:
        options.setdefault("loss", "ce")
        super().__init__(norm, eps, **options)


class APGDDLR(APGD):
    """APGD on the DLR loss, untargeted (AutoAttack's plus and rand versions)."""

    def __init__(self, norm: Norm = "linf", eps: float = 8 / 255, **options: Any) -> None:
        options["loss"] = "dlr"
        super().__init__(norm, eps, **options)


class APGDT(APGD):
    """APGD-T: targeted DLR against the 9 most likely wrong classes (AutoAttack's second)."""

    def __init__(
        self, norm: Norm = "linf", eps: float = 8 / 255, *, targets: int = 9, **options: Any
    ) -> None:
        super().__init__(norm, eps, targets=targets, **options)
