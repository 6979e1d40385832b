"""SPSA (Uesato et al., ICML 2018): a gradient-free attack on the logit margin.

Each iteration estimates the gradient of the margin z_y − max_{j≠y} z_j at
the current point from ``samples`` Rademacher directions v,

    ĝ = mean_k [(m(x + δ·v_k) − m(x − δ·v_k)) / (2δ)] · v_k,

takes one Adam step (lr) that lowers the margin, and projects onto the ε-ball
and the box. Unlike the SONet reference, which attacked one image at a time,
all images of the batch and all their samples go through the model together
(``max_batch_size`` bounds one forward pass). The current point is checked
every iteration (one extra call) so the best adversarial is returned and
broken points stop being attacked.

Budget: iterations × (2·samples + 1) + 1 model calls per point.
SONet's setting (docs/references.md): ε 8/255, 20 iterations, 32 samples, δ 0.01, lr 0.01.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import (
    Attack,
    AttackInputError,
    BestIterate,
    ModelMode,
    Oracle,
    require_counts,
    require_positive,
)
from .losses import cw_margin
from .threat import ThreatModel


class SPSA(Attack):
    name = "spsa"

    def __init__(
        self,
        eps: float = 8 / 255,
        *,
        iterations: int = 20,
        samples: int = 32,
        delta: float = 0.01,
        lr: float = 0.01,
        max_batch_size: int = 4096,
        early_stop: bool = True,
        seed: int = 0,
        model_mode: ModelMode = "eval",
        batch_size: int | None = None,
    ) -> None:
        super().__init__(
            ThreatModel("linf", eps), seed=seed, model_mode=model_mode, batch_size=batch_size
        )
        require_counts(iterations=iterations, samples=samples)
        require_positive(delta=delta, lr=lr)
        if max_batch_size < 2 * samples:
            raise AttackInputError(
                f"max_batch_size ({max_batch_size}) must hold at least one image's "
                f"2·samples = {2 * samples} evaluations"
            )
        self.iterations, self.samples = iterations, samples
        self.delta, self.lr = delta, lr
        self.max_batch_size = max_batch_size
        self.early_stop = early_stop

    def budget(self) -> int:
        return self.iterations * (2 * self.samples + 1) + 1

    def describe(self) -> str:
        return (
            f"spsa: {self.threat.describe()}, {self.iterations} iterations × {self.samples} "
            f"samples, δ {self.delta:g}, lr {self.lr:g}"
        )

    @torch.no_grad()
    def _gradient_estimate(self, oracle, x, y, index, generator) -> torch.Tensor:
        """ĝ for every point of ``x`` (rows = points ``index``), chunked to ``max_batch_size``."""
        per_chunk = max(self.max_batch_size // (2 * self.samples), 1)
        grads = []
        for start in range(0, x.shape[0], per_chunk):
            xs, ys = x[start : start + per_chunk], y[start : start + per_chunk]
            m = xs.shape[0]
            signs = torch.randint(
                0, 2, (m, self.samples, *xs.shape[1:]), generator=generator, device=x.device
            )
            v = (2 * signs - 1).to(xs.dtype)
            probes = xs[:, None] + self.delta * torch.cat([v, -v], dim=1)  # (m, 2S, …)
            logits = oracle(
                probes.flatten(0, 1), index[start : start + per_chunk], 2 * self.samples
            )
            margins = -cw_margin(logits, ys.repeat_interleave(2 * self.samples))
            margins = margins.view(m, 2, self.samples)
            diff = (margins[:, 0] - margins[:, 1]) / (2 * self.delta)  # (m, S)
            shape = (m, self.samples) + (1,) * (xs.dim() - 1)
            grads.append((diff.view(shape) * v).mean(1))
        return torch.cat(grads)

    def _attack(
        self,
        oracle: Oracle,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        trace: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
        n = x.shape[0]
        delta = torch.zeros_like(x, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=self.lr)
        best = BestIterate(x)  # loss = −margin: adversarial first, then the lowest margin
        loss_trace = torch.full((self.iterations + 1, n), float("nan"), device=x.device)
        everyone = torch.arange(n, device=x.device)
        for k in range(self.iterations + 1):
            active = torch.nonzero(~best.adv).squeeze(1) if self.early_stop else everyone
            if active.numel() == 0:
                break
            with torch.no_grad():
                x_cur = x[active] + delta.detach()[active]
                margin = -cw_margin(oracle(x_cur, active), y[active])
                loss_trace[k, active] = -margin.float()
                adv = margin < 0
                best.update(active, x_cur, adv, -margin)
                if self.early_stop:
                    active, x_cur = active[~adv], x_cur[~adv]
                if active.numel() == 0 or k == self.iterations:
                    break
                grad = torch.zeros_like(x)
                grad[active] = self._gradient_estimate(oracle, x_cur, y[active], active, generator)
            delta.grad = grad
            optimiser.step()
            with torch.no_grad():
                delta.copy_(self.threat.project_delta(delta, x))
        return best.x, (loss_trace if trace else None), {}
