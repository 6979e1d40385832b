"""Carlini–Wagner's τ-based L∞ attack (Carlini & Wagner 2017, §V-C), clipped to ε.

This is the CW-L∞ the SONet reference evaluated with (docs/references.md): the
image is optimised in tanh space, x' = (tanh(w) + 1)/2, by Adam on

    c · max(z_y − max_{j≠y} z_j, −κ) + Σ_i relu(|x'_i − x_i| − τ),

which penalises only coordinates that move more than τ. After each of
``search_steps`` rounds, points the attack broke tighten τ to 0.9·‖δ‖∞ and
points it did not break double c. The result is clipped to the ε-ball —
as the reference did — so the threat model holds; an iterate counts as
adversarial only where it was adversarial and already inside the ball.

Reference setting: 1 search step, 100 iterations, lr 5e-3, c₀ = 1e-2, τ₀ = 1.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, ModelMode, Oracle, require_counts, require_positive
from .losses import cw_margin
from .threat import ThreatModel

# atanh(±1) is infinite; keep the tanh-space start finite
_ATANH_LIMIT = 1 - 1e-6


class CarliniWagnerLinf(Attack):
    """The τ-based CW L∞ attack of the SONet reference, clipped to ε."""

    name = "cw-linf"

    def __init__(
        self,
        eps: float = 0.031,
        *,
        steps: int = 100,
        search_steps: int = 1,
        lr: float = 5e-3,
        initial_const: float = 1e-2,
        initial_tau: float = 1.0,
        tau_factor: float = 0.9,
        const_factor: float = 2.0,
        confidence: float = 0.0,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel("linf", eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(steps=steps, search_steps=search_steps)
        require_positive(lr=lr, initial_const=initial_const, initial_tau=initial_tau)
        self.steps, self.search_steps, self.lr = steps, search_steps, lr
        self.initial_const, self.initial_tau = initial_const, initial_tau
        self.tau_factor, self.const_factor, self.confidence = tau_factor, const_factor, confidence

    def budget(self) -> int:
        return self.search_steps * self.steps

    def describe(self) -> str:
        return (
            f"cw-linf (τ-based, clipped): {self.threat.describe()}, {self.search_steps} search "
            f"step(s) × {self.steps} iterations, lr {self.lr:g}, c₀ {self.initial_const:g}"
        )

    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        n = x.shape[0]
        index = torch.arange(n, device=x.device)
        eps = self.threat.eps
        const = torch.full((n,), self.initial_const, device=x.device)
        tau = torch.full((n,), self.initial_tau, device=x.device)
        best_x = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_dist = torch.full((n,), float("inf"), device=x.device)
        loss_trace = torch.full((self.search_steps * self.steps, n), float("nan"), device=x.device)
        w_start = torch.atanh((2 * x - 1).clamp(-_ATANH_LIMIT, _ATANH_LIMIT))
        x_cur = x
        for round_ in range(self.search_steps):
            w = w_start.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([w], lr=self.lr)
            broke = torch.zeros(n, dtype=torch.bool, device=x.device)
            for k in range(self.steps):
                with torch.enable_grad():
                    x_cur = (torch.tanh(w) + 1) / 2
                    logits = oracle(x_cur, index)
                    margin = -cw_margin(logits, y)  # z_y − max other: < 0 when broken
                    distance = (x_cur - x).abs().flatten(1)
                    excess = (distance - tau[:, None]).clamp_min(0).sum(1)
                    objective = const * margin.clamp_min(-self.confidence) + excess
                    # gradient for w only: the model's parameters must not collect any
                    (w.grad,) = torch.autograd.grad(objective.sum(), w)
                optimiser.step()
                adv = logits.detach().argmax(1) != y
                dist = distance.detach().amax(1)
                loss_trace[round_ * self.steps + k] = -margin.detach().float()
                broke |= adv
                keep = adv & (dist <= eps) & (dist < best_dist)
                best_x[keep], best_dist[keep] = x_cur.detach()[keep], dist[keep]
                found |= keep
            with torch.no_grad():
                dist_now = (x_cur.detach() - x).abs().flatten(1).amax(1)
                tau = torch.where(broke, self.tau_factor * torch.minimum(tau, dist_now), tau)
                const = torch.where(broke, const, const * self.const_factor)
        # not broken inside the ball: the last iterate clipped to ε, as the reference did
        clipped = self.threat.project(x_cur.detach(), x)
        x_adv = torch.where(found.view(-1, *([1] * (x.dim() - 1))), best_x, clipped)
        return x_adv, (loss_trace if trace else None), {}
