"""APGD-CE and APGD-T (Croce & Hein, ICML 2020, Algorithm 1), as AutoAttack runs them.

Step-size-free PGD: the step starts at 2ε and is halved at checkpoints
w_j = p_j·N (p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
0.06)) when (1) the loss rose in fewer than ρ = 0.75 of the steps since the
last checkpoint, or (2) the step was not halved at the last checkpoint and
the best loss has not improved since; on halving, the iterate restarts from
the best point found. Momentum α = 0.75 (eq. 2 of the paper).

APGD-T runs the targeted DLR loss (eq. 7) against the classes with the 2nd
… (targets + 1)-th largest clean logits, each on the points still robust.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Attack, AttackInputError, BestIterate, ModelMode, Oracle, require_counts
from .losses import dlr, targeted_dlr
from .threat import Norm, ThreatModel


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
        early_stop: bool = True,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel(norm, eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(steps=steps, restarts=restarts)
        if loss not in ("ce", "dlr"):
            raise AttackInputError(f"APGD's loss must be 'ce' or 'dlr', got '{loss}'")
        if targets is not None:
            require_counts(targets=targets)
        self.steps = steps
        self.restarts = restarts
        self.loss_name = "dlr-targeted" if targets else loss
        self.targets = targets
        self.rho = rho
        self.momentum = momentum
        self.random_start = random_start
        self.early_stop = early_stop
        self.name = "apgd-t" if targets else f"apgd-{loss}"
        self.min_classes = 4 if targets else (3 if loss == "dlr" else 2)
        self._marks = checkpoints(steps)

    def budget(self) -> int:
        runs = self.restarts * (self.targets or 1)
        return runs * (self.steps + 1) + (1 if self.targets else 0)

    def describe(self) -> str:
        extra = f", {self.targets} target classes" if self.targets else ""
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
        for target in target_classes:
            for _ in range(self.restarts):
                active = torch.nonzero(~state.adv).squeeze(1) if self.early_stop else all_points
                if active.numel() == 0:
                    break
                t = None if target is None else target[active]
                run_trace = self._single_run(oracle, x, y, active, t, generator, state)
                if trace:
                    full = torch.full((self.steps + 1, n), float("nan"), device=x.device)
                    full[:, active] = run_trace
                    traces.append(full)
        loss_trace = torch.cat(traces) if trace and traces else None
        return state.x, loss_trace, extra

    def _start(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """AutoAttack's start: ε·t/‖t‖ with t uniform in [−1, 1] (L∞) or Gaussian (L2).

        Unlike PGD's uniform-in-ball start, it lies on the ball's surface.
        """
        if self.threat.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
            scale = t.flatten(1).abs().amax(1)
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            scale = t.flatten(1).norm(dim=1)
        return self.threat.eps * t / scale.clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))

    def _loss(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        if target is not None:
            return targeted_dlr(logits, y, target)
        if self.loss_name == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr(logits, y)

    def _evaluate(self, oracle, x_k, index, y, target):
        x_k = x_k.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = oracle(x_k, index)
            loss = self._loss(logits, y, target)
            (grad,) = torch.autograd.grad(loss.sum(), x_k)
        return loss.detach().float(), grad.detach(), logits.detach().argmax(1) != y

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
        """One APGD run on the points ``index``; returns its (steps + 1, len(index)) loss trace.

        With ``early_stop`` a point leaves the run once an iterate breaks it:
        its best adversarial is already kept in ``state``.
        """
        threat = self.threat
        trace = torch.full((self.steps + 1, index.numel()), float("nan"), device=x_all.device)
        column = torch.arange(index.numel(), device=x_all.device)
        x, y = x_all[index], y_all[index]
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        delta0 = self._start(x, generator) if self.random_start else torch.zeros_like(x)
        x_adv = x + threat.project_delta(delta0, x)
        loss, grad, adv = self._evaluate(oracle, x_adv, index, y, target)
        trace[0, column] = loss
        state.update(index, x_adv, adv, loss)
        s = {  # per-point run state; rows follow ``index``
            "x": x,
            "y": y,
            "index": index,
            "column": column,
            "x_adv": x_adv,
            "x_prev": x_adv.clone(),
            "grad": grad,
            "eta": torch.full(shape, 2 * threat.eps, device=x.device, dtype=x.dtype),
            "x_best": x_adv.clone(),
            "grad_best": grad.clone(),
            "loss_best": loss.clone(),
            "loss_prev": loss.clone(),
            "increases": torch.zeros_like(loss),
            "loss_best_at_mark": loss.clone(),
            "halved_at_mark": torch.ones_like(adv),
        }
        if target is not None:
            s["target"] = target
        last_mark = 0
        for i in range(self.steps):
            if self.early_stop and adv.any():
                s = {k: v[~adv] for k, v in s.items()}
                if s["index"].numel() == 0:
                    break
            x, x_adv, eta = s["x"], s["x_adv"], s["eta"]
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
            state.update(s["index"], x_new, adv, loss)
            s["increases"] += (loss > s["loss_prev"]).float()
            s["loss_prev"] = loss
            improved = loss > s["loss_best"]
            s["x_best"][improved], s["grad_best"][improved] = x_new[improved], grad[improved]
            s["loss_best"] = torch.where(improved, loss, s["loss_best"])
            if i + 1 in self._marks:
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
        return trace


class APGDCE(APGD):
    """APGD on cross-entropy (AutoAttack's first attack: 100 iterations)."""

    def __init__(self, norm: Norm = "linf", eps: float = 8 / 255, **options: Any) -> None:
        options.setdefault("loss", "ce")
        super().__init__(norm, eps, **options)


class APGDT(APGD):
    """APGD-T: targeted DLR against the 9 most likely wrong classes (AutoAttack's second)."""

    def __init__(
        self, norm: Norm = "linf", eps: float = 8 / 255, *, targets: int = 9, **options: Any
    ) -> None:
        super().__init__(norm, eps, targets=targets, **options)
